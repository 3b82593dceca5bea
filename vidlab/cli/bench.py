"""`vidlab bench ...`: speed and memory measurements, printed as side-by-side tables."""

from vidlab.cli._group import register_group

SUBCOMMANDS: tuple[str, ...] = ("bench_data", "bench_eval", "bench_shapes", "bench_model", "bench_rerank")


def register(subparsers) -> None:
    register_group(subparsers, "bench", "measure speed and memory", SUBCOMMANDS)
