"""`vidlab data ...`: inspect, check and generate data."""

from vidlab.cli._group import register_group

SUBCOMMANDS: tuple[str, ...] = ("data_probe", "data_check", "data_synth")


def register(subparsers) -> None:
    register_group(subparsers, "data", "inspect, check and generate video data", SUBCOMMANDS)
