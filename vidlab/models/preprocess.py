"""`create_transforms`: the preprocessing that matches a model, as open_clip pairs models and transforms."""

from __future__ import annotations

from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from vidlab.data.transforms import VideoTransform, build_transform
from vidlab.models.factory import model_config

# family -> (transform preset of its official pipeline, config key of the input side)
_PREPROCESS: dict[str, tuple[str, str]] = {
    "frozen_in_time": ("fit", "video.img_size"),
    "singularity": ("singularity", "vision.image_size"),
    "evl": ("evl", "backbone.image_size"),
    "clip": ("evl", "vision.image_size"),
}


def create_transforms(
    name_or_config: str | Mapping[str, Any] | DictConfig, train: bool = False, **overrides: Any
) -> VideoTransform:
    """uint8 (T, C, H, W) -> normalized float frames at the model's input size, train or eval pipeline.

    `overrides` change fields of the transform config (e.g. `rand_augment="rand-m7-n4-mstd0.5-inc1"`).
    """
    cfg = model_config(name_or_config)
    if cfg.family not in _PREPROCESS:
        raise KeyError(f"no preprocessing registered for model family {cfg.family!r}")
    preset, size_key = _PREPROCESS[cfg.family]
    size = OmegaConf.select(cfg, size_key)
    return build_transform({"preset": preset, "size": size, **overrides}, train=train)
