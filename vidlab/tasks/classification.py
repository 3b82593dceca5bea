"""Classification with multi-view testing (spatial crops x temporal clips): the one implementation EVL uses and
VIMPAC (3 crops x N clips) and GDT (3 crops x 10 clips) plug into. A test video arrives as (V, T, C, H, W) clips,
V = spatial x temporal views (`vidlab.data.labelled.collate_views`); each view is classified, the softmax of
each is averaged (`multiview_scores`), and top-k / mean-class accuracy are computed on the averages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Sequence

import torch

from vidlab.errors import ConfigError

SPATIAL_VIEWS = (1, 3)  # centre crop | left, centre, right crops along the long side


def check_views(spatial: int, temporal: int, where: str = "eval") -> tuple[int, int]:
    """(spatial, temporal) view counts, or a ConfigError naming the setting."""
    if spatial not in SPATIAL_VIEWS:
        raise ConfigError(f"{where}.spatial_views must be {' or '.join(map(str, SPATIAL_VIEWS))}, got {spatial}")
    if temporal < 1:
        raise ConfigError(f"{where}.temporal_views must be >= 1, got {temporal}")
    return spatial, temporal


def multiview_scores(classify: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor) -> torch.Tensor:
    """(N, V, T, C, H, W) clips -> (N, classes) scores: `classify` every view (one batch of N*V clips), softmax
    per view, mean over the V views."""
    num_videos, num_views = clips.shape[:2]
    return average_views(classify(clips.flatten(0, 1)).view(num_videos, num_views, -1))


def multiview_rows(classify: Callable[[torch.Tensor], torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A classification recipe's evaluation rows of a multi-view batch (`vidlab.data.labelled.collate_views`): the
    view-averaged `scores`, `label`, the dataset `index` and `num_views`."""
    clips = batch["video"]
    return {
        "scores": multiview_scores(classify, clips),
        "label": batch["label"],
        "index": batch["index"],
        "num_views": torch.full_like(batch["index"], clips.shape[1]),
    }


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """`top1`, `top5` (capped at the class count) and `mean_class_acc`, in percent."""
    result = accuracy(scores, labels, topk=(1, min(5, scores.shape[1])))
    return {"top1": result["top1"], "top5": result[f"top{min(5, scores.shape[1])}"], "mean_class_acc": result["mean_class"]}


def average_views(view_logits: torch.Tensor) -> torch.Tensor:
    """(N, V, C) per-view logits -> (N, C) scores: softmax per view, then the mean (EVL's protocol)."""
    return view_logits.float().softmax(-1).mean(1)


def accuracy(scores: torch.Tensor, labels: torch.Tensor, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent and mean per-class top-1 accuracy (classes absent from labels ignored)."""
    labels = labels.long()
    ranked = scores.topk(min(max(topk), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    result = {f"top{k}": 100.0 * hits[:, :k].any(1).double().mean().item() for k in topk}
    top1 = hits[:, 0].double()
    per_class = torch.zeros(scores.shape[1], dtype=torch.float64).index_add_(0, labels, top1)
    counts = torch.bincount(labels, minlength=scores.shape[1]).double()
    present = counts > 0
    result["mean_class"] = 100.0 * (per_class[present] / counts[present]).mean().item()
    return result


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = true class, columns = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
