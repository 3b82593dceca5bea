"""One training run in its own process, measured: trainable parameters, peak memory, training time, metrics.

Peak memory is only comparable between runs that do not share a process (`ru_maxrss` never goes down,
and the allocator keeps what an earlier run freed), so `measured_run` trains in a fresh process from
`vidlab.bench.common.run_isolated` (a forkserver that has imported torch, Lightning and the recipes once).

- CPU memory: the peak resident set of the largest single process of the run (`ru_maxrss` of the training
  process, or of a DataLoader worker if one grew larger), over its whole life: model building, training,
  the evaluation after it. A forked process starts at the server's import-only RSS (`start_rss_mib`), so
  `peak - start` is what the run itself added.
- GPU memory (CUDA runs): `torch.cuda.max_memory_allocated` at the end of training.
- Training time: Lightning's `on_train_start` to `on_train_end` (no model building, no evaluation).

`torch_threads` sets the run's intra-op threads. Small models gain nothing from a second thread, and on a
shared CPU they lose badly: measured on this project's 2-core machine with other jobs running, a 64-wide
EVL training step took 30x longer with 2 threads than with 1 (the threads spin-wait for each other), and
the DataLoader workers (1 thread each) need the cores anyway.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from vidlab.bench.common import current_rss_mib, run_isolated

logger = logging.getLogger(__name__)

# imported once by the forkserver, so that every run starts with them loaded
PRELOAD = ("vidlab.experiments.measure", "vidlab.engine.runner", "vidlab.recipes")


@dataclass
class RunMeasurement:
    run_dir: str
    model_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    trainable_params: int = 0  # parameters with requires_grad (what the optimizer updates)
    total_params: int = 0  # frozen ones included
    start_rss_mib: float = 0.0  # the process's resident set when the run started (imports only)
    peak_rss_mib: float = 0.0  # the largest process's high-water mark over the run
    peak_cuda_mib: float | None = None  # CUDA runs: peak allocated during training
    train_time_s: float = 0.0  # training only
    wall_time_s: float = 0.0  # the whole run: building, training, evaluation
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config it ran with


class RunMeter(pl.Callback):
    """Counts the model's parameters when training starts, times training, reads peak CUDA memory at its end."""

    def __init__(self) -> None:
        self.trainable_params = 0
        self.total_params = 0
        self.train_time_s = 0.0
        self.peak_cuda_mib: float | None = None
        self._started = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        self.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.total_params = sum(p.numel() for p in model.parameters())
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._started = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_time_s += time.perf_counter() - self._started
        if torch.cuda.is_available():
            self.peak_cuda_mib = torch.cuda.max_memory_allocated() / 2**20


def train_measured(config_file: str, overrides: Sequence[str], torch_threads: int | None = None) -> dict[str, Any]:
    """Train `config_file` with `overrides` in this process; the `RunMeasurement` fields except peak RSS."""
    from omegaconf import OmegaConf

    from vidlab.engine.config import load_train_config
    from vidlab.engine.runner import train

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    started = time.perf_counter()
    start_rss = current_rss_mib()
    cfg = load_train_config(config_file, overrides)
    meter = RunMeter()
    result = train(cfg, callbacks=[meter])
    return {
        "run_dir": str(result.run_dir),
        "model_dir": str(result.model_dir),
        "metrics": dict(result.metrics),
        "trainable_params": meter.trainable_params,
        "total_params": meter.total_params,
        "start_rss_mib": start_rss,
        "peak_cuda_mib": meter.peak_cuda_mib,
        "train_time_s": meter.train_time_s,
        "wall_time_s": time.perf_counter() - started,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def set_aside(run_dir: Path) -> Path | None:
    """Move an earlier run out of `run_dir` to a free `<name>.earlier-N` beside it, never delete it (it may hold the
    only copy of a trained model); the folder it now lives in, or None when there was none."""
    if not run_dir.exists():
        return None
    number = 1
    while (target := run_dir.with_name(f"{run_dir.name}.earlier-{number}")).exists():
        number += 1
    run_dir.rename(target)
    logger.warning("an earlier run in %s was moved to %s", run_dir, target)
    return target


@contextlib.contextmanager
def replacing(run_dir: Path) -> Iterator[None]:
    """Set an earlier run in `run_dir` aside (`set_aside`) for the new run the block trains there. If the new one
    fails before it wrote its folder (a config error, found before training writes anything), the earlier run is
    put back: a rerun then finds it where it was."""
    aside = set_aside(run_dir)
    try:
        yield
    except BaseException:
        if aside is not None and not run_dir.exists():
            aside.rename(run_dir)
            logger.warning("the new run failed before writing %s: the earlier run is back there", run_dir)
        raise


def measured_run(
    config_file: str | Path, overrides: Sequence[str], run_dir: str | Path, torch_threads: int | None = None
) -> RunMeasurement:
    """Train into `run_dir` (an earlier run there is set aside) in a fresh process with `torch_threads` intra-op
    threads (None: torch's default) and measure it."""
    run_dir = Path(run_dir)
    kwargs = {"config_file": str(config_file), "overrides": [*overrides, f"run_dir={run_dir}"], "torch_threads": torch_threads}
    with replacing(run_dir):
        fields, peak_rss = run_isolated(train_measured, kwargs, preload=PRELOAD)
    return RunMeasurement(**fields, peak_rss_mib=peak_rss)


__all__ = ["PRELOAD", "RunMeasurement", "RunMeter", "measured_run", "replacing", "set_aside", "train_measured"]
