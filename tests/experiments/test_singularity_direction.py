"""The direction probe's parts: frame picking, the readouts' order (in)sensitivity, the choice scores."""

from __future__ import annotations

import pytest
import torch

from vidlab.errors import ConfigError
from vidlab.experiments.singularity_direction import (
    TEST_FRAMES,
    DirectionReadout,
    choice_scores,
    pick_frames,
    run_direction_probe,
)


def test_training_picks_one_frame_of_each_pair_and_testing_the_odd_ones():
    tokens = torch.arange(8.0).view(1, 8, 1, 1).expand(50, 8, 2, 3)
    picked = pick_frames(tokens, torch.Generator().manual_seed(0))[..., 0, 0]
    assert picked.shape == (50, 4)
    assert ((picked // 2) == torch.arange(4)).all()
    assert 0 < (picked % 2).float().mean() < 1
    assert pick_frames(tokens)[0, :, 0, 0].tolist() == list(TEST_FRAMES)


def test_only_the_readouts_with_time_see_the_frame_order():
    torch.manual_seed(0)
    tokens = torch.randn(3, 4, 5, 16)
    reversed_ = tokens.flip(1)
    encoder = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    for kind, sees_order in (("order", True), ("set", False), ("temporal_embed", True), ("temporal", True)):
        readout = DirectionReadout(kind, 16, 2, 8, encoder if kind == "temporal" else None).eval()
        if kind in ("temporal_embed", "temporal"):
            torch.nn.init.normal_(readout.temporal_embeddings)
        with torch.no_grad():
            same = torch.allclose(readout(tokens), readout(reversed_), atol=1e-5)
        assert same is not sees_order, kind


def test_choice_scores_count_all_classes_and_the_reversed_motion():
    opposite = torch.tensor([1, 0, 3, 2])
    logits = torch.tensor([[3.0, 2.0, 0.0, 0.0], [0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0], [5.0, 0.0, 1.0, 2.0]])
    labels = torch.tensor([0, 1, 2, 3])
    # argmax right in row 0 only; the true class beats its reversal in rows 0, 1 and 3
    assert choice_scores(logits, labels, opposite) == (25.0, 75.0)


def test_bad_readouts_and_folders_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown readouts"):
        run_direction_probe(tmp_path, tmp_path, ["order", "sequence"])
    with pytest.raises(ConfigError, match="not a ShapesBench folder|ShapesBench folder"):
        run_direction_probe(tmp_path, tmp_path, ["order"])
