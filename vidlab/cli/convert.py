"""`vidlab convert SRC DST`: turn a checkpoint (e.g. an official Frozen in Time `model_best.pth`) into vidlab's
format: DST/model.safetensors + DST/config.yaml, loadable with `vidlab.create_model(checkpoint=DST)`.

SRC is read without running pickled code, renamed by an explicit key map and loaded strictly into the
model; the load report (logged) lists every key that was ignored or adapted, and a failure lists every
key that did not fit. A vidlab training checkpoint (RUN/I-STAGE/checkpoints/X.ckpt) gets its model config from
its stage's config.yaml, as `vidlab eval` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidlab.cli._group import add_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint into vidlab's safetensors + YAML format",
        description=__doc__,
        usage="vidlab convert [--model NAME_OR_YAML] [--force] SRC DST [KEY=VALUE ...]",
    )
    parser.add_argument(
        "src", type=Path, help="checkpoint file (official .pth / .pth.tar), vidlab checkpoint, or a vidlab run's .ckpt"
    )
    parser.add_argument("dst", type=Path, help="output folder")
    parser.add_argument(
        "--model",
        help="architecture: a registered name (see vidlab.list_models()) or a YAML file; "
        "default: from the checkpoint (its config, else the tensor shapes)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing checkpoint in DST")
    add_overrides(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from vidlab.config import load_config
    from vidlab.engine.checkpointing import build_from_training_checkpoint, read_training_checkpoint
    from vidlab.models.checkpoint import WEIGHTS_FILE, save_vidlab_checkpoint
    from vidlab.models.errors import CheckpointError
    from vidlab.models.factory import apply_overrides, create_model_with_report

    if (args.dst / WEIGHTS_FILE).exists() and not args.force:
        raise CheckpointError(str(args.dst), f"already holds {WEIGHTS_FILE} (use --force to overwrite)")
    overrides = OmegaConf.to_container(load_config(None, args.overrides))
    tensors = read_training_checkpoint(args.src) if args.src.suffix == ".ckpt" and args.src.is_file() else None
    if tensors is not None and args.model is None:  # the model its run built, from the stage's config
        model, config = build_from_training_checkpoint(args.src, tensors)
        if overrides:
            created = create_model_with_report(config, checkpoint=tensors, **overrides)  # type: ignore[arg-type]
            model, config = created.model, created.config
    else:
        created = create_model_with_report(args.model, checkpoint=args.src if tensors is None else tensors, **overrides)  # type: ignore[arg-type]
        model, config = created.model, created.config
    if OmegaConf.select(config, "init.vit_weights") is not None:  # the weights are in the checkpoint now
        config = apply_overrides(config, {"init.vit_weights": None})
    save_vidlab_checkpoint(model, config, args.dst)
    print(f"wrote {args.dst / WEIGHTS_FILE} and its config.yaml ({config.family})")
    return 0
