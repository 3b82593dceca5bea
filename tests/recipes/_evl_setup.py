"""A tiny EVL setup on ShapesBench tiny: a vidlab CLIP checkpoint as the backbone's weights (what a `clip`
training run leaves in its model folder) and a config small enough for a few CPU steps per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def make_clip_folder(out: Path) -> Path:
    """A vidlab checkpoint folder of `clip-tiny` (32 px, patch 8, 2 blocks of 128) with seeded random weights."""
    from vidlab.models import create_model, model_config, save_vidlab_checkpoint

    torch.manual_seed(0)
    model = create_model("clip-tiny")
    with torch.no_grad():  # CLIP's init leaves biases and norms at 0 / 1: make every tensor distinctive
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return save_vidlab_checkpoint(model, model_config("clip-tiny"), out)


def tiny_config(shapes_root: Path, clip_folder: Path, output_dir: Path, **sections: Any) -> dict[str, Any]:
    """2 epochs x 2 steps of 4 four-frame 32-px motion clips; 1x1 test views; `sections` replace top-level keys."""
    config: dict[str, Any] = {
        "recipe": "evl",
        "name": "evl_tiny",
        "seed": 0,
        "output_dir": str(output_dir),
        "model": {"base": "evl-tiny", "backbone": {"layers": 2, "weights": str(clip_folder)}},
        "data": {
            "root": str(shapes_root),
            "train": {"annotations": "annotations/motion_train.txt", "format": "evl"},
            "test": {"annotations": "annotations/motion_test.txt", "format": "evl"},
            "class_names": "annotations/motion_classes.json",
            "num_frames": 4,
            "sampling_rate": 3,
            "batch_size": 4,
            "num_workers": 0,
            "steps_per_epoch": 2,
        },
        "trainer": {"accelerator": "cpu", "max_epochs": 2, "log_every_n_steps": 1},
        "optim": {"lr": 1.0e-3, "weight_decay": 0.05},
        "checkpoint": {"keep": 1},
        "logging": {"tensorboard": False, "progress_bar": False},
        "eval": {"after_train": False, "batch_size": 4, "spatial_views": 1, "temporal_views": 1},
    }
    config.update(sections)
    return config


def backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's tensors, copied (a frozen backbone is left out of `model.state_dict()`)."""
    return {name: tensor.detach().clone() for name, tensor in model.backbone.state_dict().items()}
