"""What a run prints while it trains: progress lines where no progress bar can be seen, and none of Lightning's
known noise.

Lightning's progress bar redraws one terminal line; with stdout redirected to a file (a batch job, `vidlab demo >
log.txt`) it shows nothing for as long as a stage trains. `ProgressLines` then prints a plain line at a steady
interval and at the end of every epoch.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

# Warnings Lightning gives on every run that say nothing about the run: a deprecation inside Lightning itself
# (torch's LeafSpec, used by Lightning's own pytree code), and the frozen parts of a model (EVL's backbone,
# Singularity's frozen towers) that vidlab keeps in eval mode on purpose.
KNOWN_NOISE = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Found \d+ module\(s\) in eval mode at the start of training",
)


def filter_known_noise() -> None:
    """Ignore exactly the `KNOWN_NOISE` warnings (called where a run sets up its Trainer, not at import)."""
    for message in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _rate(steps: int, seconds: float) -> str:
    per_second = steps / seconds
    return f"{per_second:.2f} steps/s" if per_second >= 1 else f"{1 / per_second:.1f} s/step"


class ProgressLines(Callback):
    """Every `interval_s` seconds (0: never) and at the end of every epoch, one line on stdout from rank 0:
    `step 120/400 (30%) | 2.31 steps/s | ETA 2:01 | loss 1.2345`. Only when no progress bar is seen (stdout not a
    terminal, or `logging.progress_bar` off); the rate is that since the previous line, the ETA the rest at it."""

    def __init__(self, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self.enabled = False
        self.total = 0
        self._last_time = 0.0
        self._last_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar_seen = trainer.progress_bar_callback is not None and sys.stdout.isatty()
        self.enabled = trainer.is_global_zero and not bar_seen
        self.total = pl_module.total_optimizer_steps() if hasattr(pl_module, "total_optimizer_steps") else trainer.max_steps
        self._last_time, self._last_step = self.clock(), trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.enabled and self.interval_s > 0 and self.clock() - self._last_time >= self.interval_s:
            self._report(trainer, "")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""  # -1: max_steps decides
            self._report(trainer, f"epoch {trainer.current_epoch + 1}{of} done | ")

    def _report(self, trainer: pl.Trainer, prefix: str) -> None:
        now, step = self.clock(), trainer.global_step
        steps, seconds = step - self._last_step, now - self._last_time
        parts = [f"step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)"]
        if steps > 0 and seconds > 0:  # none at an epoch's end that follows a line at once
            parts += [_rate(steps, seconds), f"ETA {_duration(max(0, self.total - step) * seconds / steps)}"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        print(prefix + " | ".join(parts), flush=True)
        self._last_time, self._last_step = now, step
