"""`vidlab bench shapes-baselines`: chance, majority-class and single-frame-oracle accuracy per
ShapesBench task, proving that the temporal tasks cannot be solved from one frame.

The oracle is a linear (ridge) probe on features of each clip's middle frame. The dataset in --data
is generated first (with --size and --seed) when it is not there yet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidlab.cli._group import add_report_files, at_least, write_report_files

DEFAULT_SIZE = "small"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "shapes-baselines", help="trivial baselines per ShapesBench task (chance, majority, middle frame)",
        description=__doc__,
    )
    parser.add_argument("--data", type=Path,
                        help="ShapesBench folder (default: bench_out/shapesbench_<size>)")
    parser.add_argument("--size", default=DEFAULT_SIZE,
                        help=f"size to generate if --data is missing (default: {DEFAULT_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="seed to generate with if --data is missing (default: 0)")
    parser.add_argument("--threads", type=at_least(1), default=2, help="decoding threads (default: 2)")
    add_report_files(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.bench.shapes_baselines import (
        baselines_json,
        format_baselines,
        shapes_baselines,
    )
    from vidlab.data.shapesbench.generate import generate, read_manifest

    root = args.data or Path("bench_out") / f"shapesbench_{args.size}"
    if read_manifest(root) is None:
        generate(root, args.size, args.seed)
    rows = shapes_baselines(root, num_threads=args.threads)
    table = format_baselines(rows)
    write_report_files(args, table, baselines_json(rows))
    return 0
