"""Shared argparse pieces: a command group (`vidlab data ...`, `vidlab bench ...`) assembled from one module per
subcommand, trailing config overrides, and counts with a lower bound."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def register_group(subparsers, name: str, help: str, modules: tuple[str, ...]) -> None:
    """Add `vidlab NAME SUB ...`, where each module `vidlab.cli.<m>` defines `register(subparsers)`."""
    parser = subparsers.add_parser(name, help=help, description=help)
    group = parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", required=True)
    for module in modules:
        importlib.import_module(f"vidlab.cli.{module}").register(group)


def add_report_files(parser: argparse.ArgumentParser) -> None:
    """`--out FILE.md` and `--json FILE`: where a benchmark also writes its printed report and its data."""
    parser.add_argument("--out", type=Path, metavar="FILE.md", help="also write the markdown report to this file")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to this file")


def write_report_files(args: argparse.Namespace, markdown: str, data: Any) -> None:
    """Print the report, and write it and its data where `add_report_files`' options say."""
    print(markdown, end="")
    for path, text in ((args.out, markdown), (args.json, json.dumps(data, indent=2) + "\n")):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """Trailing `a.b=c` config overrides, as every config-driven command takes them."""
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.num_frames=4")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `minimum`, so a bad count is a usage error naming its option."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError reads "invalid integer >= N value: 'x'"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse
