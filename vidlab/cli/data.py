"""`vidlab data ...`: inspect, check and generate data."""

from vidlab.cli._group import register_group

SUBCOMMANDS: tuple[str, ...] = ()


def register(subparsers) -> None:
    register_group(subparsers, "data", "inspect, check and generate video data", SUBCOMMANDS)
