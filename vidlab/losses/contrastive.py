"""Contrastive losses: over text-video similarity matrices (FiT), and SimCLR's NT-Xent between two views (VIMPAC)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidlab.errors import VidlabError

LARGE_NUM = 1e9  # subtracted from a view's similarity to itself (SimCLR)


def cosine_similarity_matrix(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """(N, D), (M, D) -> (N, M) cosine similarities; norms are clamped at `eps` (FiT's `sim_matrix`)."""
    a_unit = a / a.norm(dim=1, keepdim=True).clamp_min(eps)
    b_unit = b / b.norm(dim=1, keepdim=True).clamp_min(eps)
    return a_unit @ b_unit.T


def norm_softmax_loss(similarity: Tensor, temperature: float = 0.05) -> Tensor:
    """FiT's NormSoftmaxLoss: InfoNCE over a square (texts x videos) cosine matrix whose diagonal pairs match.

    L = -mean_i log softmax_j(S_ij / t)[i] - mean_j log softmax_i(S_ij / t)[j]: the text->video and
    video->text terms are SUMMED, not averaged, as in the official code.
    """
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise VidlabError(f"norm_softmax_loss needs a square similarity matrix, got shape {tuple(similarity.shape)}")
    logits = similarity / temperature
    text_to_video = torch.diagonal(F.log_softmax(logits, dim=1)).mean()
    video_to_text = torch.diagonal(F.log_softmax(logits, dim=0)).mean()
    return -text_to_video - video_to_text


class NormSoftmaxLoss(nn.Module):
    """`norm_softmax_loss` with a fixed temperature (0.05 in FiT)."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, similarity: Tensor) -> Tensor:
        return norm_softmax_loss(similarity, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def nt_xent_loss(
    features: Tensor,
    temperature: float = 0.2,
    normalize: bool = True,
    gather: Callable[[Tensor], Tensor] | None = None,
    rank: int = 0,
) -> Tensor:
    """SimCLR's NT-Xent as VIMPAC computes it (`DistributedNCELoss`): `features` (2N, D) are N first views then
    the N second views of the same videos. Each view's positive is its other view; its negatives are every other
    view in the (gathered) batch, 2N'-2 of them. L = t * (CE_a + CE_b): the two directions are SUMMED and the
    sum is scaled by the temperature, as in the official code.

    `gather` (B, D) -> (world * B, D) concatenates all processes' rows in rank order with gradients (the
    engine's), `rank` is this process's place among them; None: this process's batch only.
    """
    if features.dim() != 2 or features.shape[0] % 2:
        raise VidlabError(f"nt_xent_loss needs (2N, D) features (two views per video), got {tuple(features.shape)}")
    if normalize:
        features = features / features.norm(p=2, dim=-1, keepdim=True)
    first, second = features.chunk(2)
    first_all, second_all = (gather(first), gather(second)) if gather is not None else (first, second)
    targets = torch.arange(first.shape[0], device=features.device) + rank * first.shape[0]
    self_pairs = F.one_hot(targets, first_all.shape[0]).to(features.dtype) * LARGE_NUM

    def direction(query: Tensor, other: Tensor, same: Tensor) -> Tensor:
        logits = torch.cat([query @ other.T / temperature, query @ same.T / temperature - self_pairs], dim=1)
        return F.cross_entropy(logits, targets)

    return (direction(first, second_all, first_all) + direction(second, first_all, second_all)) * temperature
