"""Shared argparse pieces: a command group (`vidlab data ...`, `vidlab bench ...`) assembled from one module per
subcommand, trailing config overrides, and counts with a lower bound."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable


def register_group(subparsers, name: str, help: str, modules: tuple[str, ...]) -> None:
    """Add `vidlab NAME SUB ...`, where each module `vidlab.cli.<m>` defines `register(subparsers)`."""
    parser = subparsers.add_parser(name, help=help, description=help)
    group = parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", required=True)
    for module in modules:
        importlib.import_module(f"vidlab.cli.{module}").register(group)


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
