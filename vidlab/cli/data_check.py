"""`vidlab data check ANNOTATION --format FMT --root DIR`: can every referenced file serve samples?

Reads the annotation with the same reader training uses, then checks each distinct media file: it
exists and (with --decode, the default) its first and last frames decode. Exits 1 when any file fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers) -> None:
    parser = subparsers.add_parser("check", help="check that an annotation's media files exist and decode", description=__doc__)
    parser.add_argument("annotation", type=Path, help="annotation file (or folder, for folder formats)")
    parser.add_argument("--format", "-f", required=True, dest="fmt", help="annotation format, e.g. webvid, msrvtt, singularity, evl")
    parser.add_argument("--root", type=Path, default=None, help="folder the media paths are relative to (default: the annotation's folder)")
    parser.add_argument(
        "--decode", action=argparse.BooleanOptionalAction, default=True, help="decode first/last frames (default) or only check existence"
    )
    parser.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. -o split_list=train_list.txt (repeatable)",
    )
    parser.set_defaults(func=run)


def _options(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are read as YAML scalars, so `-o kind=video -o join_captions=true` work."""
    import yaml

    from vidlab.errors import ConfigError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"reader option {item!r} is not of the form key=value")
        options[key] = yaml.safe_load(value) if value else ""
    return options


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vidlab.data.formats import read_annotations
    from vidlab.data.quality import check_media

    records = read_annotations(args.fmt, args.annotation, args.root, **_options(args.option))
    kinds = {r.path: r.kind for r in records}  # QA and caption formats name a file many times: check it once
    failures = []
    for path, kind in tqdm(kinds.items(), desc="checking", unit="file", file=sys.stderr):
        reason = check_media(path, kind, decode=args.decode)
        if reason is not None:
            failures.append((path, reason))
    what = "exist and decode" if args.decode else "exist"
    print(f"{len(records)} records, {len(kinds)} files: {len(kinds) - len(failures)} {what}, {len(failures)} failed")
    for path, reason in failures:
        print(f"  {path}: {reason}")
    return 1 if failures else 0
