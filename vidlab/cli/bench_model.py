"""`vidlab bench model CONFIG [KEY=VALUE ...] [--compare "KEY=VALUE ..."]`: the training step of any recipe's
config, timed on a batch the recipe builds, one row per variant (`vidlab.bench.recipe_step`). Comparisons are
overrides, e.g. `--compare "trainer.grad_checkpointing=true"`, `--compare "data.num_frames=8 model.video.num_frames=8"`
(FiT), `--compare "model.backbone.freeze=false"` (EVL), `--compare "data.num_frames=4"` (Singularity).
"""

from __future__ import annotations

import argparse

from vidlab.cli._group import at_least


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "model", help="training-step speed and memory of a recipe's config", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="CONFIG", help="a training config YAML")
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="...", help="KEY=VALUE overrides and options")
    parser.set_defaults(func=run)


def _config_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidlab bench model CONFIG", description=__doc__)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every row")
    parser.add_argument("--compare", action="append", default=[], metavar='"KEY=VALUE ..."',
                        help="a variant row: overrides added to the config's (repeatable), e.g. 'trainer.grad_checkpointing=true'")
    parser.add_argument("--stage", type=at_least(0), default=0, help="which stage of a staged config (default: 0)")
    parser.add_argument("--steps", type=at_least(1), default=5, help="timed steps (default: 5)")
    parser.add_argument("--warmup", type=at_least(0), default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="32", choices=("32", "bf16", "fp16"))
    return parser


def run(args: argparse.Namespace) -> int:
    from vidlab.bench.recipe_step import render_recipe_steps, run_recipe_steps

    options = _config_parser().parse_args(args.rest)
    rows = run_recipe_steps(
        args.target, options.overrides, options.compare, stage=options.stage, steps=options.steps,
        warmup=options.warmup, device=options.device, precision=options.precision,
    )
    print(render_recipe_steps(args.target, rows), end="")
    return 0
