"""`vidlab experiment ...`: the ShapesBench experiments that test each system's central claim end to end."""

from vidlab.cli._group import register_group

SUBCOMMANDS: tuple[str, ...] = ("experiment_evl", "experiment_singularity")


def register(subparsers) -> None:
    register_group(subparsers, "experiment", "run a ShapesBench experiment and write its report", SUBCOMMANDS)
