"""`vidlab experiment evl-shapes`: CLIP-pretrain a small ViT on ShapesBench stills, freeze it, and train EVL on
`motion` and `appearance` with and without its temporal modules, and on `motion` with the backbone fine-tuned.

Writes OUT/report.html and OUT/results.json (accuracy, trainable parameters, peak memory and training time
per run, and the CLIP backbone's zero-shot and retrieval numbers) and prints the table. On `small` the whole
experiment takes about 20 minutes on a 2-core CPU; `--quick` cuts every run to a few steps (for tests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidlab.cli._group import at_least
from vidlab.data.shapesbench.generate import PRESETS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evl-shapes",
        help="EVL on ShapesBench: frozen CLIP backbone, temporal modules on/off, vs full fine-tuning",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=None, help="ShapesBench folder, generated when missing (default: data/shapes_SIZE)")
    parser.add_argument("--out", type=Path, default=Path("runs/evl_shapes"), help="experiment folder (default: runs/evl_shapes)")
    parser.add_argument("--size", default="small", choices=sorted(PRESETS), help="ShapesBench size (default: small)")
    parser.add_argument("--seed", type=int, default=0, help="ShapesBench generation seed (default: 0)")
    parser.add_argument("--quick", action="store_true", help="a few steps per run: checks the pipeline, not the claims")
    parser.add_argument("--threads", type=at_least(1), default=1,
                        help="torch intra-op threads per run (default: 1; small models lose time to a second thread)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.experiments.evl_shapes import format_tables, run_experiment

    data = args.data if args.data is not None else Path("data") / f"shapes_{args.size}"
    result = run_experiment(data, args.out, size=args.size, quick=args.quick, seed=args.seed, torch_threads=args.threads)
    print(f"\n{format_tables(result)}\n")
    print(f"report: {args.out / 'report.html'}; results: {args.out / 'results.json'}")
    print(f"experiment finished in {result.wall_time_s:.0f} s")
    return 0
