"""`vidlab bench model FAMILY ...`: training-step speed and memory of one system's model, one module each."""

from vidlab.cli._group import register_group

SUBCOMMANDS: tuple[str, ...] = ("bench_model_fit", "bench_model_evl", "bench_model_singularity")


def register(subparsers) -> None:
    register_group(subparsers, "model", "training-step speed and memory of a model", SUBCOMMANDS)
