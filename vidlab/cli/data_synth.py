"""`vidlab data synth`: generate ShapesBench, a procedural video-text corpus with temporal tasks.

Real H.264 mp4 clips with audio, still images, captions, motion/appearance/shape labels, QA and
multiple choice, in train/val/test splits (see docs/shapesbench.md). Same size and seed give the
same files; rerunning on a folder that already holds that dataset does nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidlab.cli._group import at_least


def register(subparsers) -> None:
    parser = subparsers.add_parser("synth", help="generate the ShapesBench video-text corpus", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="dataset folder (created; reused if complete)")
    parser.add_argument("--size", default="tiny",
                        help="tiny (40 clips, for tests), small (2000 clips, for the demo) or large (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    parser.add_argument("--count", type=at_least(1), help="number of clips, overriding the size's default (e.g. for large)")
    parser.add_argument("--workers", type=at_least(1), help="worker processes (default: all usable cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace a ShapesBench dataset with other parameters")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.data.shapesbench.generate import generate, read_manifest

    root = generate(args.out, args.size, args.seed, args.workers, count=args.count, overwrite=args.overwrite)
    counts = read_manifest(root)["counts"]
    videos = ", ".join(f"{n} {split}" for split, n in counts["videos"].items())
    images = sum(counts["images"].values())
    print(f"ShapesBench {args.size} (seed {args.seed}) at {root}: clips {videos}; {images} images; "
          f"{counts['questions']} questions")
    return 0
