"""Entry point of the `vidlab` command: each command group lives in its own module with a `register`.

Modules import their heavy dependencies inside the handlers, so `vidlab --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from vidlab.errors import VidlabError

# Modules under vidlab.cli that define `register(subparsers)`; each adds one top-level command.
COMMAND_MODULES = ("data", "bench", "convert", "train", "eval", "demo", "experiment", "tokenize")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidlab", description="vidlab: video and video-language representation learning")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"vidlab.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Lightning prints through its own console handler; keep its records from printing twice via the root.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).propagate = False
    try:
        return int(args.func(args) or 0)
    except VidlabError as e:
        # Expected failures (bad file, bad config, bad annotation): one clear line, no traceback.
        print(f"vidlab: error: {e}", file=sys.stderr)
        for note in getattr(e, "__notes__", ()):
            print(f"vidlab: {note}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
