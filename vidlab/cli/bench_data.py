"""`vidlab bench data`: clips/s and peak memory of vidlab's clip loading vs whole-video decoding and an
ffmpeg-CLI lower bound, for the FiT, EVL and GDT sampling setups, with 0 and N DataLoader workers.

Without --videos, a benchmark set (10-s 30-fps 340x256 H.264 clips, 1-s GOPs, audio) is generated once
into --workdir and reused.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vidlab.cli._group import add_report_files, at_least, write_report_files

DEFAULT_WORKDIR = Path("bench_out") / "data_videos"


def default_workers() -> list[int]:
    """0 (loading in the main process) and one worker per usable core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [0, cores]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="clips/s and peak memory of data loading, vidlab vs naive vs lower bound", description=__doc__
    )
    parser.add_argument(
        "--videos", type=Path, metavar="DIR", help="folder of videos to load (default: a generated benchmark set)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=DEFAULT_WORKDIR, metavar="DIR",
        help=f"cache folder of the generated set (default: {DEFAULT_WORKDIR})",
    )
    parser.add_argument("--num-videos", type=at_least(1), default=8, metavar="N", help="size of the generated set (default: 8)")
    parser.add_argument("--clips", type=at_least(1), default=32, metavar="N", help="clips per setup and method (default: 32)")
    parser.add_argument(
        "--workers", type=at_least(0), nargs="+", default=default_workers(), metavar="N",
        help="DataLoader worker counts (default: 0 and the core count)",
    )
    parser.add_argument("--setups", nargs="+", metavar="NAME", help="sampling setups: fit, evl, gdt (default: all)")
    parser.add_argument(
        "--backends", nargs="*", metavar="NAME",
        help="decoder backends to compare as extra decode-only rows (default: every installed one)",
    )
    parser.add_argument(
        "--start-methods", nargs="*", metavar="NAME", default=["forkserver", "fork", "spawn"],
        help="worker start methods to compare on the EVL setup at the largest worker count (default: forkserver "
        "fork spawn; none to skip)",
    )
    parser.add_argument("--start-repeats", type=at_least(1), default=3, metavar="N", help="interleaved runs per start method (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clip choice (default: 0)")
    add_report_files(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.bench import data as bench
    from vidlab.bench import worker_start
    from vidlab.io import available_backends

    worker_start.check_methods(args.start_methods)
    if args.videos is not None:
        videos, note = bench.videos_in(args.videos), f"from {args.videos}"
    else:
        videos, note = bench.benchmark_videos(args.workdir, args.num_videos), bench.bench_video_note()
    report = bench.run_benchmark(
        videos,
        setups=args.setups or list(bench.SETUPS),
        workers=list(dict.fromkeys(args.workers)),
        clips=args.clips,
        seed=args.seed,
        video_note=note,
        backends=available_backends() if args.backends is None else args.backends,
    )
    markdown = bench.render_markdown(report)
    data = bench.report_json(report)
    if args.start_methods and max(args.workers) > 0:
        setup = bench.SETUPS[bench.TARGET_SETUP]
        plan = bench.plan_clips(setup, videos, args.clips, args.seed)
        dataset_args = {"method": bench.VIDLAB, "setup": setup, "plan": plan, "seed": args.seed}
        runs = worker_start.run_start_methods(
            dataset_args, max(args.workers), args.start_methods, args.start_repeats, preload=[bench.__name__]
        )
        markdown += "\n" + worker_start.render_start_methods(runs, setup.title, args.clips, max(args.workers))
        data["start_methods"] = [{"method": r.method, "seconds": r.seconds} for r in runs]
    write_report_files(args, markdown, data)
    return 0
