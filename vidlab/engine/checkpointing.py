"""Training checkpoints that survive kill -9 and a full disk.

- `AtomicCheckpointIO` writes every checkpoint to a temporary file beside its target, fsyncs it and renames it
  over the target: a reader sees the old file or the new one, never half of one (Lightning's own writer
  assembles the file in `$TMPDIR` and, across file systems, copies it into place). A killed write leaves only
  a `.NAME.tmp-PID` file in the checkpoint folder, which the next run of the stage removes.
- `PeriodicCheckpoint` keeps the newest `checkpoint.keep` periodic checkpoints by their step, whatever a
  resumed run's restored callback state remembers, and drops `interrupted.ckpt` once a newer checkpoint exists.
- `readable_checkpoint` tells a complete checkpoint file from a truncated or empty one without unpickling it,
  so `resume=auto` can pass over what a crash left behind.
"""

from __future__ import annotations

import errno
import logging
import pickle
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig
from torch import Tensor, nn

from vidlab.engine.config import load_train_config, resolve_stages
from vidlab.engine.module import CHECKPOINT_KEY
from vidlab.engine.recipe import get_recipe
from vidlab.errors import ConfigError, VidlabError
from vidlab.files import TEMP_MARK, atomic_path
from vidlab.models.checkpoint import load_pickled_checkpoint

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"
BEST = "best"  # best-stepNNNNNNN.ckpt: the monitored best, weights only (not resumable)
PERIODIC = re.compile(r"step(\d+)\.ckpt")


class CheckpointWriteError(VidlabError):
    """A checkpoint could not be written (e.g. the disk is full); the files already there are intact."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save(obj, path)` through `vidlab.files.atomic_path`; a failed write is a one-line error (torch's zip
    writer reports a full disk as a bare RuntimeError, so the free space names the cause)."""
    try:
        with atomic_path(path) as temp, open(temp, "wb") as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or shutil.disk_usage(path.parent).free < 2**20
        reason = "No space left on device" if full else (getattr(e, "strerror", None) or str(e).splitlines()[0])
        raise CheckpointWriteError(f"checkpoint {path} not written ({reason}); the older checkpoints are intact") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic in the checkpoint's own folder (`atomic_torch_save`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, Path(path))


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed (one run writes a stage folder at a time)."""
    stale = [p for p in directory.glob(f".*.ckpt{TEMP_MARK}*") if p.is_file()] if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d unfinished checkpoint write(s) of a killed run in %s", len(stale), directory)
    return stale


def readable_checkpoint(path: Path) -> bool:
    """Whether `path` is a complete `torch.save` file: a zip archive whose every member matches its checksum."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def checkpoint_step(path: Path) -> int:
    """The optimizer step a training checkpoint was written at (read without unpickling code)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state["global_step"])


class PeriodicCheckpoint(ModelCheckpoint):
    """`stepNNNNNNN.ckpt` every `every_n_steps` (or epoch) and `last.ckpt`; keeps the newest `keep` by step.

    Lightning's top-k bookkeeping is restored from the checkpoint a run resumes, which does not know the files
    written after it: they would survive `keep` forever. Pruning by the steps in the file names does not depend on
    that state; on resume, checkpoints of steps after the resumed one (an abandoned continuation) go too.
    """

    def __init__(self, dirpath: Path, keep: int, every_n_steps: int | None):
        super().__init__(
            dirpath=dirpath,
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every_n_steps,
            every_n_epochs=None if every_n_steps else 1,
            monitor="step",
            mode="max",
            save_top_k=-1,
            save_last=True,
        )
        self.keep = keep

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.is_global_zero:
            self._prune(after_step=trainer.global_step)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            flush_loggers(trainer)  # every logged point up to this checkpoint survives a kill
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            self._prune()
            interrupted = Path(filepath).with_name(f"{INTERRUPTED}.ckpt")
            if interrupted.is_file() and interrupted.stat().st_mtime <= Path(filepath).stat().st_mtime:
                interrupted.unlink()
                log.info("removed %s: %s is newer", interrupted.name, Path(filepath).name)

    def _prune(self, after_step: int | None = None) -> None:
        directory = Path(self.dirpath or "")
        steps = sorted(
            (int(m.group(1)), p) for p in directory.glob("step*.ckpt") if (m := PERIODIC.fullmatch(p.name))
        )
        abandoned = [p for step, p in steps if after_step is not None and step > after_step]
        kept = [p for step, p in steps if p not in abandoned]
        extra = kept[: max(0, len(kept) - self.keep)] if self.keep >= 0 else []
        for path in abandoned + extra:
            path.unlink(missing_ok=True)
        if abandoned:
            log.info("removed checkpoints after the resumed step %d: %s", after_step, ", ".join(p.name for p in abandoned))


def describe_checkpoint(model: torch.nn.Module) -> str:
    """What a resumable checkpoint of `model` holds and roughly weighs: the weights a checkpoint keeps (frozen parts
    that are rebuilt from their source may be left out by the model) and AdamW's two moments per trained tensor."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = 2 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    mib = 2**20
    return (
        f"checkpoints: step*/last/interrupted hold the weights ({weights / mib:.0f} MiB), AdamW's moments "
        f"({moments / mib:.0f} MiB) and the loop, data and RNG state, all needed to resume exactly; "
        f"{BEST}-step*.ckpt holds the weights only"
    )


def flush_loggers(trainer: pl.Trainer) -> None:
    """Write the loggers' buffered points to disk, so that every point up to a checkpoint survives a kill."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "flush"):
            experiment.flush()


# ---------------------------------------------------------------------------------------------------------
# Reading: the model inside a training checkpoint, rebuilt the way its run built it (`vidlab eval CKPT`, `convert`)

MODULE_PREFIX = "model."  # VidlabModule holds the recipe's model as `self.model`
STAGE_CONFIG = "config.yaml"


def read_training_checkpoint(path: Path) -> dict[str, Tensor] | None:
    """The model's tensors (without `model.`) when `path` is a vidlab training checkpoint, else None (another format).

    Read as data only: `weights_only=True`, or vidlab's restricted unpickler for a checkpoint holding objects that
    `weights_only` refuses (a callback's state); neither runs pickled code."""
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError):
        obj = load_pickled_checkpoint(path)
    if not (isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping)):
        return None
    prefixed = all(str(k).startswith(MODULE_PREFIX) for k in obj["state_dict"])
    ours = CHECKPOINT_KEY in obj or ("pytorch-lightning_version" in obj and prefixed)
    if not ours:  # e.g. another Lightning project's checkpoint
        return None
    return {k.removeprefix(MODULE_PREFIX): v for k, v in obj["state_dict"].items()}


def stage_config(path: Path) -> DictConfig:
    """The config the checkpoint's stage ran with: RUN/I-STAGE/config.yaml for RUN/I-STAGE/checkpoints/X.ckpt."""
    config = path.resolve().parent.parent / STAGE_CONFIG
    if not config.is_file():
        raise ConfigError(f"{path}: a vidlab training checkpoint, but no {config} (its stage's config) to rebuild its model from")
    log.info("%s: a vidlab training checkpoint, its model as %s configures it", path, config)
    return resolve_stages(load_train_config(config))[-1].config


def build_from_training_checkpoint(path: Path, tensors: Mapping[str, Tensor]) -> tuple[nn.Module, DictConfig]:
    """(model, model config) of the checkpoint's stage, its weights loaded strictly (the load report is logged)."""
    return get_recipe(stage_config(path)).build_model(tensors)


__all__ = [
    "build_from_training_checkpoint",
    "read_training_checkpoint",
    "stage_config",
    "AtomicCheckpointIO",
    "BEST",
    "CheckpointWriteError",
    "INTERRUPTED",
    "PeriodicCheckpoint",
    "atomic_torch_save",
    "checkpoint_step",
    "describe_checkpoint",
    "flush_loggers",
    "readable_checkpoint",
    "remove_stale_temporaries",
]
