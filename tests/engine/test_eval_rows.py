"""The engine puts gathered evaluation rows in dataset order once, for every recipe (`in_dataset_order`)."""

import pytest
import torch

from vidlab.engine.recipe import in_dataset_order


def test_each_kind_of_row_is_sorted_by_its_identity_and_kept_once():
    # two processes: the second's padded shard repeats video 0 and its captions
    outputs = {
        "video_index": torch.tensor([2, 0, 1, 0]),
        "video_embeds": torch.tensor([[2.0], [0.0], [1.0], [0.0]]),
        "text_video_index": torch.tensor([2, 0, 0, 1, 0, 0]),
        "text_slot": torch.tensor([0, 1, 0, 0, 1, 0]),
        "text_embeds": torch.tensor([[20.0], [1.0], [0.0], [10.0], [1.0], [0.0]]),
    }
    ordered = in_dataset_order(outputs)
    assert ordered["video_index"].tolist() == [0, 1, 2] and ordered["video_embeds"].flatten().tolist() == [0.0, 1.0, 2.0]
    assert list(zip(ordered["text_video_index"].tolist(), ordered["text_slot"].tolist())) == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert ordered["text_embeds"].flatten().tolist() == [0.0, 1.0, 10.0, 20.0]


def test_per_sample_rows_follow_index():
    ordered = in_dataset_order({"index": torch.tensor([3, 1, 2, 1]), "scores": torch.tensor([[3.0], [1.0], [2.0], [1.0]])})
    assert ordered["index"].tolist() == [1, 2, 3] and ordered["scores"].flatten().tolist() == [1.0, 2.0, 3.0]


def test_rows_without_their_identity_are_a_recipe_error():
    with pytest.raises(KeyError, match="text_slot"):
        in_dataset_order({"text_video_index": torch.tensor([0]), "text_embeds": torch.zeros(1, 2)})
