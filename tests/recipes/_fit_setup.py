"""A tiny Frozen in Time setup on ShapesBench tiny: a config small enough for a few CPU steps per test
(its text tower: `_text_setup.make_text_folder`), and readers of what a run leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def tiny_config(shapes_root: Path, text_folder: Path, output_dir: Path) -> dict[str, Any]:
    """3 steps per epoch of 4 two-frame 32-px clips, 2 epochs, a 1-layer 32-wide video tower."""
    return {
        "recipe": "fit",
        "name": "tiny",
        "seed": 0,
        "output_dir": str(output_dir),
        "model": {
            "base": "fit-tiny",
            "video": {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_frames": 2},
            "projection_dim": 16,
        },
        "text": {"tokenizer": str(text_folder), "weights": str(text_folder), "max_length": 16},
        "data": {
            "root": str(shapes_root),
            "train": [{"name": "videos", "annotations": "annotations/captions_train.json", "batch_size": 4}],
            "test": {"annotations": "annotations/captions_test.json"},
            "num_frames": 2,
            "transform": {"preset": "fit", "size": 32, "test_short_side": 32, "test_crop": 32, "hflip": 0.0},
            "num_workers": 0,
            "steps_per_epoch": 3,
        },
        "trainer": {"accelerator": "cpu", "max_epochs": 2, "log_every_n_steps": 1},
        "optim": {"lr": 1.0e-3, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 1},
        "checkpoint": {"every_n_steps": 2, "keep": -1},
        "logging": {"tensorboard": False, "progress_bar": False},
        "eval": {"after_train": False, "batch_size": 8},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def loss_curve(tensorboard_dir: Path) -> list[tuple[int, float]]:
    """(step, value) of every logged train/loss."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]
