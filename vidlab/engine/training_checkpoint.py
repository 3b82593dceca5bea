"""The model inside a vidlab training checkpoint (a `.ckpt` the engine writes into RUN/I-STAGE/checkpoints/), rebuilt
the way its run built it, for `vidlab convert`.

The checkpoint holds the weights only, under the module's `model.` prefix of its `state_dict`; the model config comes
from the stage's config.yaml beside `checkpoints/` through the stage's recipe, as `vidlab eval CKPT` does.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from vidlab.engine.config import load_train_config, resolve_stages
from vidlab.engine.module import CHECKPOINT_KEY
from vidlab.engine.recipe import get_recipe
from vidlab.errors import ConfigError
from vidlab.models.checkpoint import load_pickled_checkpoint

log = logging.getLogger(__name__)

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
    if not (isinstance(obj, Mapping) and CHECKPOINT_KEY in obj and isinstance(obj.get("state_dict"), Mapping)):
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
