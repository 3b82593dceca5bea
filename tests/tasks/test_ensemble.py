"""Frame ensembles: the clip memory layout and the score combination equal hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from vidlab.errors import ConfigError
from vidlab.tasks.ensemble import aggregate_clips, clip_memories

SCORES = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, 0.5]])  # (clips, pairs)


def test_mean_max_lse_over_clips():
    torch.testing.assert_close(aggregate_clips(SCORES, "mean"), torch.tensor([2.0, -1.0, 0.5]))
    torch.testing.assert_close(aggregate_clips(SCORES, "max"), torch.tensor([3.0, 0.0, 0.5]))
    lse = [math.log(math.exp(1.0) + math.exp(3.0)), math.log(math.exp(-2.0) + 1.0), math.log(2 * math.exp(0.5))]
    torch.testing.assert_close(aggregate_clips(SCORES, "lse"), torch.tensor(lse))
    torch.testing.assert_close(aggregate_clips(SCORES.T, "max", dim=1), torch.tensor([3.0, 0.0, 0.5]))


def test_concat_is_one_clip_of_all_frames():
    torch.testing.assert_close(aggregate_clips(SCORES[:1], "concat"), SCORES[0])
    with pytest.raises(ConfigError, match="one clip per video"):
        aggregate_clips(SCORES, "concat")
    tokens = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)  # (B, T, L, D)
    concat = clip_memories(tokens, "concat")
    assert concat.shape == (2, 1, 12, 5)
    torch.testing.assert_close(concat[1, 0, 4:8], tokens[1, 1])  # frame 1's tokens follow frame 0's
    assert clip_memories(tokens, "lse") is tokens  # one clip per frame


def test_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="concat.*mean.*max.*lse"):
        aggregate_clips(SCORES, "median")
