"""Singularity's test-time frame ensembles, as the model lays out its cross-attention memories for them.

A video of T test frames is scored either as one clip or as T one-frame clips: `concat` (default) makes all
frames' tokens ONE memory (T*L tokens); `mean` / `max` / `lse` make each frame its own clip (L tokens), whose
scores `vidlab.tasks.ensemble.aggregate_clips` combines.
"""

from __future__ import annotations

from torch import Tensor

from vidlab.errors import ConfigError

FRAME_ENSEMBLES = ("concat", "mean", "max", "lse")


def check_ensemble(mode: str) -> str:
    """`mode` if it is a known frame ensemble, else a ConfigError naming the choices."""
    if mode not in FRAME_ENSEMBLES:
        raise ConfigError(f"frame ensemble must be one of {FRAME_ENSEMBLES}, got {mode!r}")
    return mode


def clip_memories(frame_tokens: Tensor, mode: str) -> Tensor:
    """(B, T, L, D) per-frame tokens -> (B, C, M, D) clip memories: C=1, M=T*L for `concat`; C=T, M=L else."""
    if check_ensemble(mode) == "concat":
        return frame_tokens.flatten(1, 2).unsqueeze(1)
    return frame_tokens
