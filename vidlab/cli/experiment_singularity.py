"""`vidlab experiment singularity-shapes`: Singularity's single-frame claim on ShapesBench.

Trains text-video retrieval with 1 frame, then from that model with 4 frames, with 4 frames + temporal
embeddings, and the temporal variant (4 frames, temporal embeddings and encoder); evaluates the 1-frame model with 1/4/8 test frames under each
frame ensemble; for every variant reports retrieval R@1 (ITM re-ranked and contrastive) on appearance vs
temporal captions, multiple choice (reversed-motion distractors) and QA fine-tuned from it, appearance vs
temporal. Writes OUT/report.html (tables, plot), OUT/results.json and OUT/results.png, and prints the tables.
On `small` the default plan takes over an hour on a 2-core CPU (`--threads 1`); `--plan
configs/experiments/singularity_shapes/long.yaml` (more training) is for a GPU, with `--jobs` (about 15 minutes on
one H100 with 16 cores at `--jobs 6`); `--quick` (ShapesBench tiny, a few steps per run) checks
the pipeline, not the claim. `vidlab experiment singularity-direction MODEL` trains motion readouts on a model's
frozen tokens: whether its temporal memory can carry the direction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidlab.cli._group import add_overrides, at_least
from vidlab.data.shapesbench.generate import PRESETS
from vidlab.errors import ConfigError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "singularity-shapes",
        help="Singularity on ShapesBench: 1-frame vs 4-frame vs temporal training, appearance vs temporal items",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=None, help="ShapesBench folder, generated when missing (default: data/shapes_SIZE)")
    parser.add_argument("--out", type=Path, default=Path("runs/singularity_shapes"), help="experiment folder (default: runs/singularity_shapes)")
    parser.add_argument("--size", default=None, choices=sorted(PRESETS), help="ShapesBench size (default: small; tiny with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="ShapesBench generation seed (default: 0)")
    parser.add_argument("--quick", action="store_true", help="ShapesBench tiny, a few steps per run: checks the pipeline, not the claim")
    parser.add_argument("--plan", type=Path, default=None, help="experiment plan YAML (default: configs/experiments/singularity_shapes/experiment.yaml, quick.yaml with --quick)")
    parser.add_argument(
        "--threads", type=at_least(1), default=None,
        help="torch CPU threads per process (default: torch's choice); 1 keeps a small or shared CPU from oversubscribing "
        "while data-loading workers decode",
    )
    parser.add_argument(
        "--jobs", type=at_least(1), default=1,
        help="trainings and evaluations run at once, each in its own process with its output in OUT/logs, as soon as "
        "the models they start from are trained (default: 1, in this process). The plan's models are small and data "
        "loading bounds them: on a GPU, several jobs with data.num_workers about cores / jobs or more",
    )
    add_overrides(parser)
    parser.set_defaults(func=run)

    spread = subparsers.add_parser(
        "singularity-shapes-spread",
        help="the singularity-shapes comparison table over several runs (e.g. training seeds): mean, lowest, highest",
        description="Reads OUT/results.json of each run of `vidlab experiment singularity-shapes` (one plan, e.g. run "
        "with seed=0, seed=1, ... into one --out each) and prints the comparison table with each cell's mean over the "
        "runs and, in brackets, the lowest and highest run.",
    )
    spread.add_argument("runs", type=Path, nargs="+", metavar="OUT", help="experiment folders holding results.json")
    spread.set_defaults(func=run_spread)

    direction = subparsers.add_parser(
        "singularity-direction",
        help="train motion readouts on a Singularity model's frozen tokens: does its temporal memory learn the direction?",
        description="Freezes the model's vision tower, caches its tokens for every directional ShapesBench clip and trains "
        "motion classifiers on them: 'order' (per-frame mean tokens in frame order, an MLP), 'set' (one cross-attention "
        "layer from a learned query, order-free), 'temporal_embed' (the same after temporal embeddings) and 'temporal' "
        "(after temporal embeddings and the temporal encoder: Singularity-temporal's memory), and 'template' (the same "
        "temporal parts under the template task's own ITC and ITM over the 8 template captions; 'template_choice': "
        "cross-entropy over those captions' ITM scores). Prints, per readout and "
        "step, the test clips right among all 8 motions and against their reversed motion, and the temporal "
        "embeddings' norm (vidlab/experiments/singularity_direction.py).",
    )
    direction.add_argument("model", type=Path, help="a Singularity model folder (a run's .../model) or checkpoint")
    direction.add_argument("--data", type=Path, default=Path("data/shapes_small"), help="ShapesBench folder (default: data/shapes_small)")
    direction.add_argument("--readouts", default=None,
                           help="comma-separated, of order, set, temporal_embed, temporal, template, template_choice (default: all)")
    direction.add_argument("--steps", type=at_least(1), default=3000, help="training steps of 32 clips per readout (default: 3000)")
    direction.add_argument("--eval-at", default="250,500,1000,2000", help="steps to score at besides the last (default: 250,500,1000,2000)")
    direction.add_argument("--seed", type=int, default=0, help="readout initialisation and batch order (default: 0)")
    direction.add_argument("--lr", type=float, default=None,
                           help="every readout's learning rate (default: 5e-4; the template readouts 2.5e-4, the template task's)")
    direction.add_argument("--template-memory", choices=("fresh", "trained", "trained_tuned"), default="fresh",
                           help="the template readouts' temporal embeddings and encoder: 'fresh' (zero and random, trained "
                           "with them; default), 'trained': the 'temporal' readout's, trained first on the motion classes, "
                           "then frozen (can the template path read a memory that holds the direction?), or "
                           "'trained_tuned': the same, trained on with the template path (do its losses keep the direction?)")
    direction.add_argument("--reversal-pairs", action="store_true",
                           help="the template readouts' training batches: 16 clips and their time reversals, labelled with the "
                           "opposite motion (each clip meets its reversed template in its own batch; not the official recipe)")
    direction.add_argument("--tokenizer", default=None,
                           help="the template readout's text tokenizer (default: the one the model's training run recorded)")
    direction.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    direction.set_defaults(func=run_direction)


def run(args: argparse.Namespace) -> int:
    from vidlab.experiments.singularity_shapes import format_tables, run_experiment

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    size = args.size or ("tiny" if args.quick else "small")
    data = args.data if args.data is not None else Path("data") / f"shapes_{size}"
    result = run_experiment(data, args.out, size=size, seed=args.seed, quick=args.quick, plan_file=args.plan, overrides=args.overrides,
                            jobs=args.jobs, threads=args.threads)
    print(f"\n{format_tables(result.results)}\n")
    print(f"report: {result.report}; results: {result.out_dir / 'results.json'}; plot: {result.plot}")
    print(f"experiment finished in {result.wall_time_s:.0f} s")
    return 0


def run_spread(args: argparse.Namespace) -> int:
    import json

    from vidlab.bench.common import markdown_table
    from vidlab.experiments.singularity_shapes import RESULTS_FILE, spread_rows

    runs = []
    for folder in args.runs:
        path = folder / RESULTS_FILE
        if not path.is_file():
            raise ConfigError(f"{folder}: no {RESULTS_FILE} (run `vidlab experiment singularity-shapes --out {folder}` first)")
        try:
            runs.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid json ({exc})") from None
    headers, rows = spread_rows(runs)
    print(f"{len(runs)} runs:")
    for folder, results in zip(args.runs, runs):
        print(f"  {folder}: overrides {' '.join(results.get('overrides') or []) or '(none)'}")
    frames = runs[0]["plan"]["test_frames"]
    print(f"\nTest split, {frames} test frames as one memory, % (mean over the runs, lowest-highest in brackets):\n")
    print(markdown_table(headers, rows, right_align_from=1))
    return 0


def run_direction(args: argparse.Namespace) -> int:
    import json
    import os

    from vidlab.bench.common import markdown_table
    from vidlab.experiments.singularity_direction import HEADERS, READOUTS, format_row, run_direction_probe

    try:
        eval_at = [int(step) for step in args.eval_at.split(",") if step.strip()]
    except ValueError:
        raise ConfigError(f"--eval-at takes comma-separated step numbers, got {args.eval_at!r}") from None
    readouts = list(READOUTS) if args.readouts is None else [name.strip() for name in args.readouts.split(",") if name.strip()]
    if args.out is not None:  # before the training, not after it
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(args.out.parent, os.W_OK):
            raise ConfigError(f"--out {args.out}: its folder is not writable")

    def progress(row: dict) -> None:
        print("  ".join(f"{name}: {cell}" for name, cell in zip(HEADERS, format_row(row))), flush=True)

    results = run_direction_probe(args.model, args.data, readouts, steps=args.steps, eval_at=eval_at, seed=args.seed,
                                  on_row=progress, tokenizer=args.tokenizer, lr=args.lr, template_memory=args.template_memory,
                                  reversal_pairs=args.reversal_pairs)
    print(f"\n{results['train_clips']} training / {results['test_clips']} test clips; token norm {results['token_norm']:.1f}\n")
    rows = [format_row(row) for evaluated in results["readouts"].values() for row in evaluated]
    print(markdown_table(HEADERS, rows, right_align_from=1))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results: {args.out}")
    return 0
