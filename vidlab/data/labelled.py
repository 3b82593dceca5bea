"""Labelled video splits, shared by the classification recipes (EVL, GDT fine-tuning, VIMPAC fine-tuning): the
config of a split, class-name files, and the batches of training clips and of multi-view test videos."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING

from vidlab.data.datasets import collate_samples
from vidlab.data.quality import BAD_SAMPLES_KEY
from vidlab.errors import ConfigError


@dataclass
class LabelledSourceConfig:
    """A labelled split: an annotation file (or the dataset folder of `class_folders`) and its media root."""

    annotations: str = MISSING  # relative paths are relative to data.root
    format: str = "evl"  # evl (list file) | class_folders | ucf101 | hmdb51 | any labelled vidlab.data.formats reader
    media_root: str | None = None  # default: data.root
    options: dict[str, Any] = field(default_factory=dict)  # reader options, e.g. {split: train} for class_folders



def read_class_names(path: Path) -> list[str]:
    """Class names, index = label: a JSON list (EVL's k400_class_mappings.json) or one name per line."""
    if not path.is_file():
        raise ConfigError(f"data.class_names: {path} not found")
    text = path.read_text()
    if path.suffix == ".json":
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"data.class_names: {path} must hold a JSON list of class names")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]



def collate_clips(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Training batch: clips (B, T, C, H, W), labels, dataset indices (and the bad files met)."""
    batch = collate_samples(samples)
    return {key: batch[key] for key in ("video", "label", "index", BAD_SAMPLES_KEY) if key in batch}


def collate_views(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Test batch: every view of every video, (N, V, T, C, H, W), V = spatial x temporal views."""
    views = [s["video"].reshape(-1, *s["video"].shape[-4:]) for s in samples]
    return {
        "video": torch.stack(views),
        "label": torch.tensor([s["label"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
    }


__all__ = ["LabelledSourceConfig", "collate_clips", "collate_views", "read_class_names"]
