import pytest
import torch

from vidlab.tasks.classification import accuracy, average_views, confusion_matrix


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
