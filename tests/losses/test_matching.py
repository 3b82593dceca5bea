"""Matching losses: multi-positive ITC, hard-negative sampling that never picks a positive, ITM labels, and
MLM masking statistics (0.5, 80/10/10, never [PAD]/[CLS])."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidlab.losses.matching import (
    MatchingLossError,
    itc_loss,
    itm_loss,
    mask_tokens,
    mlm_loss,
    multi_positive_targets,
    positive_mask,
    sample_itm_negatives,
    sample_negatives,
)
from vidlab.models.singularity import frame_mean_similarity

PAD, CLS, SEP, MASK, VOCAB = 0, 101, 102, 103, 30522


def test_frame_mean_similarity_is_the_mean_of_per_frame_cosines():
    generator = torch.Generator().manual_seed(0)
    video = F.normalize(torch.randn(3, 4, 8, generator=generator), dim=-1)
    text = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    expected = torch.tensor(
        [[sum(float(video[b, t] @ text[n]) for t in range(4)) / 4 for n in range(5)] for b in range(3)]
    )
    torch.testing.assert_close(frame_mean_similarity(video, text, 0.5), expected / 0.5)


def test_multi_positive_targets_share_each_row_among_same_source_pairs():
    positives = positive_mask(torch.tensor([7, 7, 3]), torch.tensor([7, 7, 3]), 3, 3)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(multi_positive_targets(positives), expected)


def test_itc_loss_matches_the_hand_computed_soft_cross_entropy():
    sim = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, -1.0], [0.0, 0.2, 3.0]])
    idx = torch.tensor([1, 1, 2])
    log_v2t, log_t2v = sim.log_softmax(1), sim.T.log_softmax(1)
    v2t = -((log_v2t[0, 0] + log_v2t[0, 1]) / 2 + (log_v2t[1, 0] + log_v2t[1, 1]) / 2 + log_v2t[2, 2]) / 3
    t2v = -((log_t2v[0, 0] + log_t2v[0, 1]) / 2 + (log_t2v[1, 0] + log_t2v[1, 1]) / 2 + log_t2v[2, 2]) / 3
    torch.testing.assert_close(itc_loss(sim, sim.T, idx, idx, idx, idx), (v2t + t2v) / 2)
    # without idx only the diagonal is positive
    diagonal = -(sim.log_softmax(1).diagonal().mean() + sim.T.log_softmax(1).diagonal().mean()) / 2
    torch.testing.assert_close(itc_loss(sim, sim.T), diagonal)


def test_hard_negatives_are_never_positives():
    generator = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    for _ in range(100):
        sim = torch.randn(8, 8, generator=generator) * 5
        negatives = sample_itm_negatives(sim, sim.T, idx, idx, idx, idx, generator=generator)
        assert (idx[negatives.video_for_text] != idx).all()
        assert (idx[negatives.text_for_video] != idx).all()
    uniform = sample_itm_negatives(sim, sim.T, idx, idx, idx, idx, hard=False, generator=generator)
    assert (idx[uniform.video_for_text] != idx).all() and (idx[uniform.text_for_video] != idx).all()


def test_hard_negatives_follow_the_similarity_distribution():
    sim = torch.tensor([[9.0, 0.0, 1.0, 0.0]]).repeat(4000, 1)
    positives = torch.zeros(4000, 4, dtype=torch.bool)
    positives[:, 0] = True
    picks = sample_negatives(sim, positives, generator=torch.Generator().manual_seed(0))
    expected = torch.softmax(torch.tensor([0.0, 1.0, 0.0]) + 1e-4, 0)  # over the three negatives
    frequency = torch.bincount(picks, minlength=4)[1:].float() / 4000
    assert torch.bincount(picks, minlength=4)[0] == 0
    torch.testing.assert_close(frequency, expected, atol=0.03, rtol=0)


def test_a_row_without_any_negative_is_a_clear_error():
    idx = torch.tensor([5, 5])
    sim = torch.zeros(2, 2)
    with pytest.raises(MatchingLossError, match="needs a negative for every row"):
        sample_itm_negatives(sim, sim.T, idx, idx, idx, idx)


def test_itm_loss_labels_positives_then_two_negative_groups():
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.5, 0.5], [3.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    log_probs = logits.log_softmax(1)
    expected = -(log_probs[0, 1] + log_probs[1, 1] + log_probs[2:, 0].sum()) / 6
    torch.testing.assert_close(itm_loss(logits), expected)
    with pytest.raises(MatchingLossError, match="3 groups"):
        itm_loss(logits[:4])


def test_mlm_masking_statistics():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (400, 64), generator=generator)
    ids[:, 0], ids[:, 40] = CLS, SEP
    ids[:, 41:] = PAD
    masked = mask_tokens(ids, VOCAB, MASK, (PAD, CLS), mask_prob=0.5, generator=generator)
    chosen = masked.labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 41:].any()  # never [CLS] / [PAD]
    assert chosen[:, 40].any()  # [SEP] can be chosen, as in the official code
    eligible = 400 * 40
    assert abs(chosen.sum().item() / eligible - 0.5) < 0.02
    assert torch.equal(masked.labels[chosen], ids[chosen])
    assert torch.equal(masked.input_ids[~chosen], ids[~chosen])  # unchosen tokens untouched
    n = chosen.sum().item()
    to_mask = (masked.input_ids == MASK) & chosen
    kept = (masked.input_ids == ids) & chosen
    randomised = chosen & ~to_mask & ~kept
    assert abs(to_mask.sum().item() / n - 0.8) < 0.02
    assert abs(randomised.sum().item() / n - 0.1) < 0.015
    assert abs(kept.sum().item() / n - 0.1) < 0.015


def test_mlm_loss_is_the_cross_entropy_of_chosen_tokens_and_zero_without_any():
    logits = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([[-100, 4, -100], [2, -100, -100]])
    expected = -(logits[0, 1].log_softmax(0)[4] + logits[1, 0].log_softmax(0)[2]) / 2
    torch.testing.assert_close(mlm_loss(logits, labels), expected)
    none = mlm_loss(logits, torch.full((2, 3), -100))
    assert none.item() == 0.0 and not math.isnan(none.item())
    none.backward()  # still a graph: a step without masked tokens does not break training
