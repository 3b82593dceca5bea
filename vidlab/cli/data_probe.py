"""`vidlab data probe PATH`: the stream facts of a media file or of every file in a folder.

Prints one row per readable file and then the unreadable ones with their reasons; exits 1 when any file
is unreadable, so scripts can gate on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

COLUMNS = ("file", "codec", "size", "fps", "frames", "duration", "rotation", "audio")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "probe", help="show codec, size, fps, frames, duration, rotation, audio of media files", description=__doc__
    )
    parser.add_argument("path", type=Path, help="a media file or a folder of them")
    parser.add_argument("--recursive", "-r", action="store_true", help="include files in subfolders")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _files(path: Path, recursive: bool) -> list[Path]:
    from vidlab.errors import VidlabError

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise VidlabError(f"{path}: no such file or folder")
    candidates = path.rglob("*") if recursive else path.iterdir()
    return sorted(p for p in candidates if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))


def _row(name: str, info) -> tuple[str, ...]:
    return (
        name,
        info.codec,
        f"{info.width}x{info.height}",
        f"{info.fps:.3f}".rstrip("0").rstrip("."),
        str(info.num_frames),
        f"{info.duration:.2f}s",
        str(info.rotation),
        f"yes ({info.audio_sample_rate} Hz)" if info.has_audio else "no",
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vidlab.data.quality import BadSample
    from vidlab.errors import VidlabError
    from vidlab.io import probe

    files = _files(args.path, args.recursive)
    base = args.path if args.path.is_dir() else args.path.parent
    infos, unreadable = [], []
    for file in tqdm(files, desc="probing", unit="file", file=sys.stderr, disable=args.path.is_file()):
        name = str(file.relative_to(base))
        try:
            infos.append((name, probe(file)))
        except VidlabError as e:
            unreadable.append(BadSample.from_error(name, e))
    if args.json:
        report = {
            "files": [{**dataclasses.asdict(info), "path": name} for name, info in infos],
            "unreadable": [dataclasses.asdict(bad) for bad in unreadable],
        }
        print(json.dumps(report, indent=2))
    else:
        if infos:
            print(_table([COLUMNS] + [_row(name, info) for name, info in infos]))
        if unreadable:
            print(f"\nunreadable ({len(unreadable)} of {len(files)}):")
            for bad in unreadable:
                print(f"  {bad.path}: {bad.reason}")
        if not files:
            print(f"no files in {args.path}" + ("" if args.recursive else " (use --recursive for subfolders)"))
    return 1 if unreadable else 0
