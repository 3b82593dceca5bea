"""Models: plain `nn.Module`s, a registry of architectures (`list_models`, `create_model`) and checkpoint I/O."""

from vidlab.models.checkpoint import load_pickled_checkpoint, save_vidlab_checkpoint
from vidlab.models.factory import create_model, create_model_with_report, list_models, model_config
from vidlab.models.fit import FrozenInTime, fit_config_from_official
from vidlab.models.space_time import SpaceTimeTransformer

__all__ = [
    "create_model",
    "create_model_with_report",
    "list_models",
    "model_config",
    "FrozenInTime",
    "SpaceTimeTransformer",
    "fit_config_from_official",
    "load_pickled_checkpoint",
    "save_vidlab_checkpoint",
]
