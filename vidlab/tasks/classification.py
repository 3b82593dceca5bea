"""Classification metrics with multi-view testing (spatial crops x temporal clips)."""

from __future__ import annotations

from typing import Sequence

import torch


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
