"""NormSoftmaxLoss and the cosine similarity matrix on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from vidlab.errors import VidlabError
from vidlab.losses import NormSoftmaxLoss, cosine_similarity_matrix, norm_softmax_loss


def test_norm_softmax_loss_by_hand():
    similarity = torch.tensor([[0.5, 0.1], [0.2, 0.3]])
    t = 0.05
    # text->video rows: -log(e^{0.5/t} / (e^{0.5/t} + e^{0.1/t})) etc.; video->text uses the columns.
    row0 = -math.log(math.exp(10) / (math.exp(10) + math.exp(2)))
    row1 = -math.log(math.exp(6) / (math.exp(4) + math.exp(6)))
    col0 = -math.log(math.exp(10) / (math.exp(10) + math.exp(4)))
    col1 = -math.log(math.exp(6) / (math.exp(2) + math.exp(6)))
    expected = (row0 + row1) / 2 + (col0 + col1) / 2  # the two directions are summed
    assert norm_softmax_loss(similarity).item() == pytest.approx(expected, rel=1e-6)
    assert NormSoftmaxLoss(temperature=t)(similarity).item() == pytest.approx(expected, rel=1e-6)


def test_temperature_scales_the_logits():
    similarity = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = 2 * math.log(1 + math.exp(-1.0))  # temperature 1: each term is -log(e / (e + 1))
    assert norm_softmax_loss(similarity, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_non_square_similarity_is_rejected():
    with pytest.raises(VidlabError, match="square"):
        norm_softmax_loss(torch.zeros(2, 3))


def test_cosine_similarity_matrix():
    texts = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    videos = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    expected = torch.tensor([[0.6, 0.8, -0.6], [0.0, 0.0, 0.0]])  # a zero vector stays zero (norm clamped)
    torch.testing.assert_close(cosine_similarity_matrix(texts, videos), expected)
