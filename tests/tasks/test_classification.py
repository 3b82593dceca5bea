import pytest
import torch

from vidlab.errors import ConfigError
from vidlab.tasks.classification import (
    accuracy,
    average_views,
    check_views,
    classification_metrics,
    confusion_matrix,
    multiview_scores,
)


def test_views_are_averaged_as_probabilities_not_logits():
    # view 0 is extremely confident in class 0, views 1 and 2 clearly prefer class 1
    logits = torch.tensor([[[10.0, 0.0], [0.0, 3.0], [0.0, 3.0]]])
    assert average_views(logits).argmax().item() == 1
    assert logits.mean(1).argmax().item() == 0


def test_accuracy_topk_and_mean_class():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 0, 1, 2])
    acc = accuracy(scores, labels, topk=(1, 2))
    assert acc["top1"] == 75.0 and acc["top2"] == 100.0
    assert acc["mean_class"] == pytest.approx((100 + 0 + 100) / 3)  # class 1 has one sample, missed


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(torch.tensor([0, 0, 2]), torch.tensor([0, 1, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]


def test_multiview_scores_classify_every_view_and_average_their_softmax():
    clips = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 1, 1, 2, 2)  # 2 videos x 3 views
    seen = []

    def classify(batch):
        seen.append(batch.shape)
        return torch.stack([batch.flatten(1).mean(1), -batch.flatten(1).mean(1)], 1)

    scores = multiview_scores(classify, clips)
    assert seen == [(6, 1, 1, 2, 2)]  # one batch of every view
    assert torch.allclose(scores, average_views(classify(clips.flatten(0, 1)).view(2, 3, 2)))
    assert classification_metrics(scores, torch.tensor([0, 0]))["top1"] == 100.0


def test_view_counts_are_checked_with_the_setting_named():
    assert check_views(3, 10) == (3, 10)
    with pytest.raises(ConfigError, match="eval.spatial_views must be 1 or 3, got 2"):
        check_views(2, 1)
    with pytest.raises(ConfigError, match="eval.temporal_views must be >= 1, got 0"):
        check_views(1, 0)
