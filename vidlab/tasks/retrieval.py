"""Text-video retrieval metrics: one rank computation, computed in row chunks, used by every recipe.

The similarity matrix is never materialized whole when embeddings are given: a 100k x 100k evaluation
needs one (chunk_size x 100k) block at a time. Tie handling follows the official protocols:

- FiT (collaborative-experts metric code): t2v breaks ties optimistically (rank = number of strictly
  better candidates); v2t averages the tied positions, then takes the best over the video's captions.
- Singularity `itm_eval`: rank = position in a descending argsort, best over ground truths. Its tie order
  is platform dependent; vidlab resolves it optimistically, which equals it whenever there is no tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

Ties = Literal["optimistic", "average"]


def ranks_from_scores(scores: torch.Tensor, gt_index: torch.Tensor, ties: Ties = "optimistic") -> torch.Tensor:
    """0-based rank of the best-ranked ground truth of each row.

    scores: (Q, C) higher is better. gt_index: (Q, K) long, candidate columns of each row's ground truths,
    padded with -1. Returns (Q,) float64; +inf for a row with no ground truth.
    """
    if gt_index.dim() == 1:
        gt_index = gt_index[:, None]
    best = torch.full((scores.shape[0],), math.inf, dtype=torch.float64, device=scores.device)
    for k in range(gt_index.shape[1]):
        col = gt_index[:, k]
        valid = col >= 0
        gt_score = scores.gather(1, col.clamp(min=0)[:, None])
        rank = (scores > gt_score).sum(1).double()
        if ties == "average":
            rank += ((scores == gt_score).sum(1).double() - 1) / 2
        best = torch.where(valid, torch.minimum(best, rank), best)
    return best


def invert_ground_truth(gt_index: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """The other direction of a ground-truth relation, for evaluating both ways from one definition.

    gt_index: (Q,) or (Q, K) long, candidate columns of each query, -1 padded. Returns (num_candidates, K')
    long, -1 padded: the queries of each candidate in ascending order (K' >= 1; all -1 for a candidate no
    query names). A caption -> video index gives the video -> captions one and vice versa.
    """
    if gt_index.dim() == 1:
        gt_index = gt_index[:, None]
    queries, slots = (gt_index >= 0).nonzero(as_tuple=True)  # row-major: queries ascending
    candidates = gt_index[queries, slots]
    order = torch.argsort(candidates, stable=True)
    queries, candidates = queries[order], candidates[order]
    counts = torch.bincount(candidates, minlength=num_candidates)
    width = max(int(counts.max()) if len(counts) else 0, 1)
    inverse = torch.full((num_candidates, width), -1, dtype=torch.long)
    first = torch.cumsum(counts, 0) - counts
    inverse[candidates, torch.arange(len(candidates)) - first[candidates]] = queries
    return inverse


def ranks_from_embeddings(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    gt_index: torch.Tensor,
    ties: Ties = "optimistic",
    chunk_size: int = 4096,
    gallery_mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Ranks of dot-product retrieval, one (chunk_size x G) similarity block at a time.

    Embeddings may live on the CPU (offloaded); each chunk moves to `device` for the matmul.
    gallery_mask (G,) bool: False removes a candidate (FiT's missing MSR-VTT captions).
    """
    device = torch.device(device) if device is not None else gallery.device
    gallery = gallery.to(device)
    penalty = None
    if gallery_mask is not None:
        penalty = torch.zeros(gallery.shape[0], device=device, dtype=gallery.dtype)
        penalty[~gallery_mask.to(device)] = -math.inf
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size].to(device) @ gallery.T
        if penalty is not None:
            block = block + penalty
        out.append(ranks_from_scores(block, gt_index[start : start + chunk_size].to(device), ties).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def recall_at(ranks: torch.Tensor | np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """R@k in percent of 0-based ranks: the share of queries whose ground truth ranks among the first k (NaN
    without queries)."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    if len(ranks) == 0:
        return {k: math.nan for k in ks}
    return {k: 100.0 * float((ranks < k).sum()) / len(ranks) for k in ks}


def summarize_ranks(ranks: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 5, 10, 50)) -> dict[str, float]:
    """R@k in percent, MedR and MeanR (1-based), and the geometric mean of R@1/5/10 (FiT's summary)."""
    ranks = np.asarray(torch.as_tensor(ranks, dtype=torch.float64))
    recalls = recall_at(ranks, sorted({*ks, 1, 5, 10}))
    metrics = {f"R{k}": recalls[k] for k in ks}
    metrics["MedR"] = float(np.median(ranks)) + 1
    metrics["MeanR"] = float(np.mean(ranks)) + 1
    r = [recalls[k] for k in (1, 5, 10)]
    metrics["geometric_mean_R1-R5-R10"] = 0.0 if min(r) == 0 else float(np.exp(np.mean(np.log(r))))
    return metrics


@dataclass(frozen=True)
class CaptionIndex:
    """Which video each caption belongs to, and the inverse (captions of each video, -1 padded)."""

    text_to_video: torch.Tensor  # (num_texts,) long
    video_to_texts: torch.Tensor  # (num_videos, max_captions) long, -1 padded

    @classmethod
    def from_text_to_video(cls, text_to_video: Sequence[int] | torch.Tensor, num_videos: int | None = None) -> CaptionIndex:
        t2v = torch.as_tensor(text_to_video, dtype=torch.long)
        num_videos = int(t2v.max()) + 1 if num_videos is None else num_videos
        return cls(t2v, invert_ground_truth(t2v, num_videos))

    @classmethod
    def consecutive(cls, num_videos: int, captions_per_video: int) -> CaptionIndex:
        """Captions of a video are consecutive rows (FiT's `queries_per_video` layout)."""
        return cls.from_text_to_video(torch.arange(num_videos).repeat_interleave(captions_per_video), num_videos)


def fit_retrieval_metrics(
    sims: torch.Tensor,
    captions: CaptionIndex,
    text_mask: torch.Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """FiT's t2v/v2t metrics on a (num_texts, num_videos) similarity matrix.

    text_mask (num_texts,) bool marks real captions; False slots are dropped as t2v queries and removed
    as v2t candidates (FiT's `query_masks`).
    """
    sims = torch.as_tensor(sims)
    t2v_gt = captions.text_to_video[:, None]
    t2v = ranks_from_scores(sims, t2v_gt, "optimistic")
    v2t_gt = captions.video_to_texts
    v2t_scores = sims.T
    if text_mask is not None:
        text_mask = torch.as_tensor(text_mask, dtype=torch.bool).reshape(-1)
        t2v = t2v[text_mask]
        v2t_scores = v2t_scores.masked_fill(~text_mask[None, :], -math.inf)
        v2t_gt = v2t_gt.masked_fill((v2t_gt >= 0) & ~text_mask[v2t_gt.clamp(min=0)], -1)
    v2t = ranks_from_scores(v2t_scores, v2t_gt, "average")
    return {"t2v": summarize_ranks(t2v), "v2t": summarize_ranks(v2t)}


def singularity_itm_eval(
    scores_v2t: torch.Tensor,
    scores_t2v: torch.Tensor,
    captions: CaptionIndex,
) -> dict[str, float]:
    """Singularity's `itm_eval` summary: txt_* = video->text, img_* = text->video, rounded to 2 decimals.

    The two score matrices are separate because re-ranking fills each direction from its own top-k pass.
    """
    v2t = ranks_from_scores(torch.as_tensor(scores_v2t), captions.video_to_texts)
    t2v = ranks_from_scores(torch.as_tensor(scores_t2v), captions.text_to_video[:, None])
    tr, ir = list(recall_at(v2t, (1, 5, 10)).values()), list(recall_at(t2v, (1, 5, 10)).values())
    result = {f"txt_r{k}": v for k, v in zip((1, 5, 10), tr)}
    result["txt_r_mean"] = sum(tr) / 3
    result.update({f"img_r{k}": v for k, v in zip((1, 5, 10), ir)})
    result["img_r_mean"] = sum(ir) / 3
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    return {k: round(v, 2) for k, v in result.items()}
