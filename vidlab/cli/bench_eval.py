"""`vidlab bench eval`: seconds and extra memory of FiT's retrieval metrics on n x n similarity matrices,
vidlab against a transcription of the official method, side by side, with identical results checked."""

from __future__ import annotations

import argparse

from vidlab.cli._group import add_report_files, at_least, write_report_files


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="retrieval metric speed and memory, vidlab vs the official method", description=__doc__)
    parser.add_argument("--sizes", type=at_least(10), nargs="+", default=[1000, 5000, 20000], metavar="N",
                        help="matrix sizes (default: 1000 5000 20000; 20000 takes the official method ~6 GB)")
    parser.add_argument("--repeats", type=at_least(1), default=3, metavar="N", help="interleaved runs per method and size (default: 3)")
    parser.add_argument("--chunk-size", type=at_least(1), default=4096, metavar="N", help="vidlab's row chunk (default: 4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the matrices (default: 0)")
    add_report_files(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.bench.eval import render_eval_bench, run_eval_bench

    bench = run_eval_bench(list(dict.fromkeys(args.sizes)), args.repeats, args.seed, args.chunk_size)
    data = {"sizes": bench.sizes, "repeats": bench.repeats, "seed": bench.seed, "chunk_size": bench.chunk_size, "runs": bench.runs}
    write_report_files(args, render_eval_bench(bench), data)
    return 0
