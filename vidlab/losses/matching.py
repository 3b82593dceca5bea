"""Losses of ALBEF-style video-language pre-training (Singularity): ITC with several positives per row,
ITM with hard negatives drawn from the similarity distribution, and BERT's MLM masking.

- ITC: s_ij = mean over frames of cos(video_i frame t, text_j) / temperature; every pair from the same
  source (equal `idx`) is a positive, targets y_ij = 1[idx_i = idx_j] / #positives of row i, and
  L = (CE_soft(s, y) + CE_soft(s^T, y^T)) / 2.
- ITM: for each text one negative video, for each video one negative text, drawn with
  `torch.multinomial` from softmax(similarity + 1e-4) with every positive zeroed (or uniformly over the
  negatives when `hard=False`); the 3N pairs (positive, negative video, negative text) are classified
  match / no match with a 2-way cross-entropy.
- MLM: each token is chosen with probability 0.5 except [PAD] and [CLS] ([SEP] can be chosen, as in the
  official code); a chosen token becomes [MASK] 80% of the time, a random token 10%, stays 10%.

Negatives are local to the process by default, as in the official code; the model gathers features over
processes first when asked (`losses.gather_negatives`), which these functions see as a wider batch:
`idx_columns` / the column features then come from every process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vidlab.errors import VidlabError

SIMILARITY_OFFSET = 1e-4  # added before the softmax of the hard-negative weights (official)


class MatchingLossError(VidlabError):
    """A batch cannot form the pairs a matching loss needs (e.g. a row without any negative)."""


def positive_mask(idx_rows: Tensor | None, idx_columns: Tensor | None, num_rows: int, num_columns: int) -> Tensor:
    """(R, C) bool: True where row and column come from the same source; the diagonal without `idx`."""
    if idx_rows is None or idx_columns is None:
        if num_rows != num_columns:
            raise MatchingLossError(f"without idx the similarity must be square, got {num_rows}x{num_columns}")
        return torch.eye(num_rows, dtype=torch.bool)
    return idx_rows.view(-1, 1) == idx_columns.view(1, -1)


def multi_positive_targets(positives: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Row-normalised targets: 1 / (#positives of the row) on each positive, 0 elsewhere."""
    targets = positives.to(dtype)
    return targets / targets.sum(dim=1, keepdim=True)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """mean over rows of -sum_j targets_ij log softmax(logits)_ij."""
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


def itc_loss(
    sim_v2t: Tensor,
    sim_t2v: Tensor,
    idx_videos: Tensor | None = None,
    idx_texts: Tensor | None = None,
    idx_all_videos: Tensor | None = None,
    idx_all_texts: Tensor | None = None,
) -> Tensor:
    """Multi-positive ITC. sim_v2t (B, N') local videos x all texts, sim_t2v (N, B') local texts x all videos,
    both already divided by the temperature. Without gathering, B' = B, N' = N and sim_t2v = sim_v2t.T.

    `idx_*` identify the source of each row/column (None: pairs are positives only on the diagonal).
    """
    v2t_pos = positive_mask(idx_videos, idx_all_texts, *sim_v2t.shape).to(sim_v2t.device)
    t2v_pos = positive_mask(idx_texts, idx_all_videos, *sim_t2v.shape).to(sim_t2v.device)
    loss_v2t = soft_cross_entropy(sim_v2t, multi_positive_targets(v2t_pos, sim_v2t.dtype))
    loss_t2v = soft_cross_entropy(sim_t2v, multi_positive_targets(t2v_pos, sim_t2v.dtype))
    return (loss_v2t + loss_t2v) / 2


@torch.no_grad()
def sample_negatives(
    similarity: Tensor,
    positives: Tensor,
    hard: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One negative column per row of `similarity` (R, C): drawn from softmax(similarity + 1e-4) with the
    positives zeroed (`hard`), or uniformly among the non-positives. Returns (R,) column indices."""
    if hard:
        weights = F.softmax(similarity.float() + SIMILARITY_OFFSET, dim=1)
    else:
        weights = torch.ones_like(similarity, dtype=torch.float32)
    weights = weights.masked_fill(positives.to(weights.device), 0.0)
    empty = (weights.sum(dim=1) <= 0).nonzero().flatten()
    if empty.numel():
        raise MatchingLossError(
            f"ITM needs a negative for every row, but rows {empty.tolist()} match every candidate "
            "(the whole batch shares one source video/image); use batches with at least two sources"
        )
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


@dataclass(frozen=True)
class HardNegatives:
    """Indices of the ITM negatives: a video for each text, a text for each video (into the column sets)."""

    video_for_text: Tensor  # (N,) into all videos
    text_for_video: Tensor  # (B,) into all texts


def sample_itm_negatives(
    sim_v2t: Tensor,
    sim_t2v: Tensor,
    idx_videos: Tensor | None = None,
    idx_texts: Tensor | None = None,
    idx_all_videos: Tensor | None = None,
    idx_all_texts: Tensor | None = None,
    hard: bool = True,
    generator: torch.Generator | None = None,
) -> HardNegatives:
    """Singularity's ITM negatives, never a positive: from sim_t2v rows for texts, sim_v2t rows for videos."""
    v2t_pos = positive_mask(idx_videos, idx_all_texts, *sim_v2t.shape)
    t2v_pos = positive_mask(idx_texts, idx_all_videos, *sim_t2v.shape)
    return HardNegatives(
        video_for_text=sample_negatives(sim_t2v, t2v_pos, hard, generator),
        text_for_video=sample_negatives(sim_v2t, v2t_pos, hard, generator),
    )


def itm_loss(itm_logits: Tensor) -> Tensor:
    """(3N, 2) logits of [positives; negative videos; negative texts] -> CE with labels 1, 0, 0."""
    if itm_logits.shape[0] % 3:
        raise MatchingLossError(f"ITM logits must stack 3 groups of N pairs, got {itm_logits.shape[0]} rows")
    num_pairs = itm_logits.shape[0] // 3
    labels = torch.zeros(itm_logits.shape[0], dtype=torch.long, device=itm_logits.device)
    labels[:num_pairs] = 1
    return F.cross_entropy(itm_logits, labels)


@dataclass(frozen=True)
class MaskedTokens:
    input_ids: Tensor  # the corrupted ids fed to the model
    labels: Tensor  # original ids at chosen positions, -100 elsewhere


@torch.no_grad()
def mask_tokens(
    input_ids: Tensor,
    vocab_size: int,
    mask_token_id: int,
    never_masked_ids: tuple[int, ...],
    mask_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> MaskedTokens:
    """BERT masking with Singularity's probability 0.5: never chooses `never_masked_ids` ([PAD], [CLS])."""
    shape, device = input_ids.shape, input_ids.device
    draw_on = generator.device if generator is not None else device  # a generator draws on its own device

    def coin(p: float) -> Tensor:
        return torch.rand(shape, generator=generator, device=draw_on).to(device) < p

    chosen = coin(mask_prob)
    for token_id in never_masked_ids:
        chosen &= input_ids != token_id
    labels = input_ids.masked_fill(~chosen, -100)
    to_mask = coin(0.8) & chosen
    to_random = coin(0.5) & chosen & ~to_mask
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=draw_on).to(device)
    corrupted = input_ids.masked_fill(to_mask, mask_token_id)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return MaskedTokens(corrupted, labels)


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the chosen positions (labels != -100); 0 (with a gradient path) when a batch
    has none, where the official mean over an empty set is NaN."""
    chosen = labels != -100
    if not bool(chosen.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[chosen], labels[chosen])


__all__ = [
    "MatchingLossError",
    "positive_mask",
    "multi_positive_targets",
    "soft_cross_entropy",
    "itc_loss",
    "sample_negatives",
    "HardNegatives",
    "sample_itm_negatives",
    "itm_loss",
    "MaskedTokens",
    "mask_tokens",
    "mlm_loss",
]
