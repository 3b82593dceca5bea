"""Contrastive losses over text-video similarity matrices."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidlab.errors import VidlabError


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
