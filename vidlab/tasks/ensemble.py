"""Test-time frame ensembles (Singularity's `eval_frame_ensemble`): the one implementation every evaluation uses.

A video of T test frames is scored either as one clip or as T one-frame clips:
- `concat` (default): all frames' tokens form ONE cross-attention memory (T*L tokens) -> one score;
- `mean` / `max` / `lse`: each frame is its own clip (L tokens) scored alone; the T clip scores are
  combined with the mean, the max or log-sum-exp over clips.

The official code repeats this choice inline in retrieval, multiple choice and QA; vidlab keeps the
combination (`aggregate_clips`) here and the memory layout (`clip_memories`) with the model
(`vidlab.models.frame_ensemble`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vidlab.errors import ConfigError
from vidlab.models.frame_ensemble import FRAME_ENSEMBLES, check_ensemble, clip_memories


def aggregate_clips(clip_scores: Tensor, mode: str, dim: int = 0) -> Tensor:
    """Combine scores along the clip axis `dim`: one clip passes through (`concat`), else mean/max/logsumexp."""
    if check_ensemble(mode) == "concat":
        if clip_scores.shape[dim] != 1:
            raise ConfigError(f"'concat' scores one clip per video, got {clip_scores.shape[dim]} clips")
        return clip_scores.squeeze(dim)
    if mode == "mean":
        return clip_scores.mean(dim)
    if mode == "max":
        return clip_scores.amax(dim)
    return torch.logsumexp(clip_scores, dim=dim)


__all__ = ["FRAME_ENSEMBLES", "check_ensemble", "clip_memories", "aggregate_clips"]
