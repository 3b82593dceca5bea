"""Singularity's retrieval protocol: contrastive (ITC) scores for every pair, then the ITM cross-encoder
re-scores each query's top-k candidates, in both directions.

- ITC: (V, T) mean over frames of per-frame cosine similarities (temperature 1).
- video->text: for each video the k texts with the highest ITC score get the ITM match logit (aggregated
  over clips by the frame ensemble); every other entry is -100. text->video likewise from the ITC
  transpose, with its own top-k. k defaults to 128.
- Both the re-ranked scores and the ITC scores are reported (`{split}/` and `{split}_emb/` officially),
  as `itm` and `itc`, with `itm_eval`'s recalls (`vidlab.tasks.retrieval.singularity_recalls`): overall
  (`evaluate_retrieval`), or per text subset with several ground-truth videos per text (`retrieval_recalls`,
  what vidlab's Singularity recipe reports).

The cross-encoder work is chunked: several queries' candidate pairs go through the model together, at
most `pairs_per_call` pairs at a time. Features can stay on the CPU (`offload`): each chunk moves the
memories it needs to the compute device. Paragraph retrieval (DiDeMo, ActivityNet) is the same protocol
on captions joined into one text per video (`vidlab.data.formats.join_captions`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vidlab.data.formats import MediaRecord, has_temporal_flags
from vidlab.errors import ConfigError
from vidlab.tasks.ensemble import aggregate_clips, check_ensemble
from vidlab.tasks.retrieval import CaptionIndex, invert_ground_truth, singularity_itm_eval, singularity_recalls

if TYPE_CHECKING:
    from vidlab.models.singularity import Singularity

NOT_RERANKED = -100.0  # score of the pairs outside a query's top-k (official)
RECALL_AT = (1, 5, 10)
SCORINGS = ("itm", "itc")  # re-ranked, contrastive only

PairScorer = Callable[[Tensor, Tensor], Tensor]  # (video idx (n,), text idx (n,)) -> (clips, n) ITM scores


@dataclass
class RetrievalScores:
    """Score matrices of both directions: ITM re-ranked (-100 outside the top-k) and ITC."""

    v2t_itm: Tensor  # (V, T)
    t2v_itm: Tensor  # (T, V)
    v2t_itc: Tensor  # (V, T)
    t2v_itc: Tensor  # (T, V)


def rerank_direction(
    itc: Tensor, score_pairs: PairScorer, k: int, ensemble: str, pairs_per_call: int, queries_are_videos: bool
) -> Tensor:
    """One direction of `rerank_topk`: (queries, candidates) ITC scores -> the same shape with each row's top-k
    re-scored by `score_pairs` and NOT_RERANKED elsewhere. Evaluations of a subset of the queries or
    candidates (e.g. only the temporal captions) re-rank within the subset with it."""
    if k < 1 or pairs_per_call < 1:
        raise ConfigError(f"re-ranking needs k >= 1 and pairs_per_call >= 1, got k={k}, pairs_per_call={pairs_per_call}")
    num_queries, num_candidates = itc.shape
    k = min(k, num_candidates)
    out = torch.full((num_queries, num_candidates), NOT_RERANKED, dtype=torch.float32)
    rows_per_call = max(1, pairs_per_call // k)
    for start in range(0, num_queries, rows_per_call):
        end = min(start + rows_per_call, num_queries)
        top = itc[start:end].topk(k, dim=1).indices.cpu()  # (r, k)
        queries = torch.arange(start, end).repeat_interleave(k)
        candidates = top.flatten()
        videos, texts = (queries, candidates) if queries_are_videos else (candidates, queries)
        clip_scores = score_pairs(videos, texts)
        out[start:end].scatter_(1, top, aggregate_clips(clip_scores, ensemble).float().cpu().view(end - start, k))
    return out


def rerank_topk(
    itc_v2t: Tensor,
    score_pairs: PairScorer,
    k: int = 128,
    ensemble: str = "concat",
    pairs_per_call: int = 1024,
) -> RetrievalScores:
    """Re-rank the top-k of every video (over texts) and of every text (over videos) with `score_pairs`.

    `score_pairs(video_idx, text_idx)` returns the ITM scores (clips, n) of n aligned pairs: one clip for
    `concat`, one per frame for mean/max/lse, combined by `vidlab.tasks.ensemble.aggregate_clips`.
    """
    check_ensemble(ensemble)
    itc_v2t = itc_v2t.float()
    return RetrievalScores(
        v2t_itm=rerank_direction(itc_v2t, score_pairs, k, ensemble, pairs_per_call, queries_are_videos=True),
        t2v_itm=rerank_direction(itc_v2t.T, score_pairs, k, ensemble, pairs_per_call, queries_are_videos=False),
        v2t_itc=itc_v2t.cpu(),
        t2v_itc=itc_v2t.T.cpu(),
    )


@dataclass
class RetrievalFeatures:
    """Everything the protocol needs, computed once: clip memories (V, C, M, D), per-frame pooled video
    features (V, T, D), text-layer states (N, L, D) and their mask (N, L)."""

    clip_memory: Tensor
    pooled_video: Tensor
    text_states: Tensor
    text_mask: Tensor


@torch.no_grad()
def extract_features(
    model: Singularity,
    videos: Iterable[Tensor],
    text_ids: Tensor,
    text_mask: Tensor,
    ensemble: str | None = None,
    offload: bool | None = None,
    text_batch_size: int = 256,
    device: torch.device | str | None = None,
) -> RetrievalFeatures:
    """Run a Singularity model over video batches (B, T, 3, H, W) and tokenised texts.

    `offload` (default: the model's `eval.offload`) keeps the features on the CPU; they move to `device`
    chunk by chunk during re-ranking.
    """
    ensemble = ensemble or model.cfg.eval.frame_ensemble
    offload = model.cfg.eval.offload if offload is None else offload
    device = torch.device(device) if device is not None else next(model.parameters()).device
    keep = (lambda t: t.cpu()) if offload else (lambda t: t)
    memories, pooled = [], []
    for video in videos:
        clip_memory, pooled_video = model.encode_clips(video.to(device), ensemble)
        memories.append(keep(clip_memory))
        pooled.append(keep(pooled_video))
    states = []
    for start in range(0, text_ids.shape[0], text_batch_size):
        chunk = slice(start, start + text_batch_size)
        states.append(keep(model.text_features(text_ids[chunk].to(device), text_mask[chunk].to(device)).states))
    return RetrievalFeatures(torch.cat(memories), torch.cat(pooled), torch.cat(states), keep(text_mask.to(device)))


def model_pair_scorer(model: Singularity, features: RetrievalFeatures, device: torch.device | str | None = None) -> PairScorer:
    """The ITM match logit of (video, text) pairs under every clip of the videos' memories."""
    device = torch.device(device) if device is not None else next(model.parameters()).device

    @torch.no_grad()
    def score(video_idx: Tensor, text_idx: Tensor) -> Tensor:
        video_idx, text_idx = video_idx.to(features.clip_memory.device), text_idx.to(features.text_states.device)
        states = features.text_states[text_idx].to(device)
        mask = features.text_mask[text_idx].to(device)
        clips = features.clip_memory[video_idx]  # (n, C, M, D)
        return torch.stack(
            [model.itm_logits(states, mask, clips[:, c].to(device))[:, 1] for c in range(clips.shape[1])]
        )

    return score


@torch.no_grad()
def itc_scores(model: Singularity, features: RetrievalFeatures, device: torch.device | str | None = None) -> Tensor:
    """(V, N) float32 ITC scores of every video and text of `features`, computed on `device`."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    pooled_text = model.pooled_text(features.text_states, features.text_mask)
    return model.similarity(features.pooled_video.to(device), pooled_text.to(device)).float()


def retrieval_recalls(
    itc: Tensor,
    scorer: PairScorer,
    text_videos: Tensor,
    subsets: Mapping[str, Tensor],
    k: int,
    ensemble: str,
    pairs_per_call: int,
) -> dict[str, float]:
    """Re-ranked and ITC recalls of every text subset, `{itm,itc}/{subset}/{t2v,v2t}_R{1,5,10}`, `..._Rmean` and
    `{itm,itc}/{subset}/r_mean` (the mean of the six), from (V, N) ITC scores and the ITM pair scorer.

    text_videos (N, K): each text's ground-truth videos, -1 padded (K > 1: one caption of many videos, official
    `has_multi_vision_gt`); t2v counts the best-ranked one, v2t the best-ranked text naming the video.
    subsets: name -> text positions ("all": every text); v2t of another subset ranks its texts only
    (re-ranked within them) for the videos they name. Recalls as official `itm_eval` (`singularity_recalls`): a
    ground truth outside the top-k (NOT_RERANKED) ranks behind the k re-ranked candidates.
    """
    scores = rerank_topk(itc, scorer, k, ensemble, pairs_per_call)
    num_videos = itc.shape[0]
    metrics: dict[str, float] = {}
    for subset, texts in subsets.items():
        t2v_gt = text_videos[texts]
        video_texts = invert_ground_truth(t2v_gt, num_videos)  # positions within the subset
        videos = (video_texts >= 0).any(1).nonzero().flatten()
        if subset == "all":
            v2t = {"itm": scores.v2t_itm[videos], "itc": scores.v2t_itc[videos]}
        else:  # re-rank each video's top-k among the subset's texts only

            def subset_pairs(video_rows: Tensor, text_columns: Tensor, videos: Tensor = videos, texts: Tensor = texts) -> Tensor:
                return scorer(videos[video_rows], texts[text_columns])

            itc_subset = itc[videos.to(itc.device)][:, texts.to(itc.device)]
            v2t = {
                "itm": rerank_direction(itc_subset, subset_pairs, k, ensemble, pairs_per_call, queries_are_videos=True),
                "itc": itc_subset.cpu(),
            }
        t2v = {"itm": scores.t2v_itm[texts], "itc": scores.t2v_itc[texts]}
        for scoring in SCORINGS:
            values = singularity_recalls(v2t[scoring], video_texts[videos], t2v[scoring], t2v_gt)
            metrics.update({f"{scoring}/{subset}/{name}": value for name, value in values.items()})
    return metrics


@dataclass
class RetrievalEvaluation:
    scores: RetrievalScores
    metrics: dict[str, dict[str, float]]  # {"itm": itm_eval of the re-ranked scores, "itc": of the ITC scores}
    protocol: str


def describe_protocol(num_videos: int, num_texts: int, num_frames: int, k: int, ensemble: str) -> str:
    """One paragraph saying exactly how the numbers were computed (printed before them)."""
    clips = (
        "all frames as one cross-attention memory"
        if ensemble == "concat"
        else f"each frame scored alone, {ensemble} over frames"
    )
    return (
        f"Singularity retrieval: {num_videos} videos x {num_texts} texts, {num_frames} test frames per video. "
        f"itc: mean over frames of cosine similarities (temperature 1), every pair. "
        f"itm: the top-{min(k, num_texts)} texts of each video and top-{min(k, num_videos)} videos of each text "
        f"by ITC re-scored with the ITM match logit ({clips}); the rest scored {NOT_RERANKED:g}. "
        "v2t (official txt_r@k) = video->text, t2v (img_r@k) = text->video recall in % (best-ranked ground truth), no MedR."
    )


@torch.no_grad()
def evaluate_retrieval(
    model: Singularity,
    features: RetrievalFeatures,
    captions: CaptionIndex,
    k: int | None = None,
    ensemble: str | None = None,
    pairs_per_call: int = 1024,
    device: torch.device | str | None = None,
) -> RetrievalEvaluation:
    """ITC then ITM re-ranking on extracted features; both metric sets and the protocol text."""
    k = k or model.cfg.eval.k_test
    ensemble = ensemble or model.cfg.eval.frame_ensemble
    device = torch.device(device) if device is not None else next(model.parameters()).device
    itc = itc_scores(model, features, device)
    scores = rerank_topk(itc, model_pair_scorer(model, features, device), k, ensemble, pairs_per_call)
    metrics = {
        "itm": singularity_itm_eval(scores.v2t_itm, scores.t2v_itm, captions),
        "itc": singularity_itm_eval(scores.v2t_itc, scores.t2v_itc, captions),
    }
    num_videos, num_frames = features.pooled_video.shape[:2]
    return RetrievalEvaluation(
        scores, metrics, describe_protocol(num_videos, features.text_states.shape[0], num_frames, k, ensemble)
    )



def first_of_each(keys: Sequence[str]) -> tuple[Tensor, Tensor]:
    """(N,) the number of each row's key, keys numbered in order of first appearance, and (G,) the row where
    each key first appears."""
    numbers: dict[str, int] = {}
    first: list[int] = []
    for row, key in enumerate(keys):
        if key not in numbers:
            numbers[key] = len(first)
            first.append(row)
    return torch.tensor([numbers[key] for key in keys], dtype=torch.long), torch.tensor(first, dtype=torch.long)


@dataclass
class RetrievalTables:
    """Evaluation rows in dataset order: videos by index, texts by (video, slot). With grouped captions
    (official `has_multi_vision_gt`) a text is one distinct caption, at its first row, and its ground truth is
    every video the caption belongs to."""

    memory: Tensor  # (V, C, M, D)
    pooled: Tensor  # (V, T, D)
    text_states: Tensor  # (N, L, D), trimmed to the longest caption
    text_mask: Tensor  # (N, L)
    text_videos: Tensor  # (N, K) long, -1 padded: the ground-truth videos of each text (K = 1 ungrouped)
    temporal: Tensor  # (N,) bool; a grouped caption is temporal when any of its rows is

    @property
    def text_to_video(self) -> Tensor:
        """(N,) the (first) ground-truth video of each text."""
        return self.text_videos[:, 0]

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Tensor], text_keys: Sequence[str] | None = None) -> RetrievalTables:
        """`outputs` in dataset order, each row once (`vidlab.engine.recipe.in_dataset_order`); `text_keys` (one per
        text row, e.g. its raw caption): rows with equal keys become one text."""
        row_video = torch.searchsorted(outputs["video_index"], outputs["text_video_index"])
        row_temporal = outputs["text_temporal"].bool()
        if text_keys is None:
            rows, text_videos, temporal = torch.arange(len(row_video)), row_video[:, None], row_temporal
        else:
            group, first = first_of_each(list(text_keys))
            pairs = torch.unique(torch.stack([group, row_video], 1), dim=0)  # distinct (text, video), sorted
            members = invert_ground_truth(pairs[:, 0], len(first))  # (G, K) positions in pairs
            text_videos = torch.where(members >= 0, pairs[:, 1][members.clamp(min=0)], -1)
            temporal = torch.zeros(len(first), dtype=torch.bool)
            temporal[group[row_temporal]] = True
            rows = first
        mask = outputs["text_mask"][rows]
        length = int(mask.sum(1).max())
        return cls(  # float32: features kept in half precision under mixed precision
            memory=outputs["video_memory"].float(),
            pooled=outputs["video_pooled"].float(),
            text_states=outputs["text_states"][rows][:, :length].float(),
            text_mask=mask[:, :length],
            text_videos=text_videos,
            temporal=temporal,
        )

    def subsets(self) -> dict[str, Tensor]:
        """Text positions of each subset that has texts: all, and those flagged temporal."""
        subsets = {"all": torch.arange(len(self.text_videos))}
        if self.temporal.any():
            subsets["temporal"] = self.temporal.nonzero().flatten()
        return subsets


def retrieval_metrics(
    model: Singularity,
    tables: RetrievalTables,
    k: int,
    ensemble: str,
    pairs_per_call: int,
    device: torch.device,
    offload: bool,
) -> dict[str, float]:
    """ITC and ITM re-ranked recalls of every subset (see the module docstring for the names)."""
    keep = (lambda t: t) if offload else (lambda t: t.to(device))
    features = RetrievalFeatures(keep(tables.memory), keep(tables.pooled), keep(tables.text_states), keep(tables.text_mask))
    itc = itc_scores(model, features, device)
    return retrieval_recalls(itc, model_pair_scorer(model, features, device), tables.text_videos, tables.subsets(), k, ensemble, pairs_per_call)


def item_subsets(records: Sequence[MediaRecord], index: Tensor) -> dict[str, Tensor]:
    """Masks over evaluated items (dataset `index`): all, and with `temporal` flags temporal / appearance."""
    subsets = {"all": torch.ones(len(index), dtype=torch.bool)}
    if has_temporal_flags(records):
        temporal = torch.tensor([bool(records[int(i)].extra.get("temporal")) for i in index], dtype=torch.bool)
        subsets.update(temporal=temporal, appearance=~temporal)
    return {name: mask for name, mask in subsets.items() if mask.any()}


__all__ = [
    "NOT_RERANKED",
    "PairScorer",
    "RetrievalScores",
    "rerank_direction",
    "rerank_topk",
    "RetrievalFeatures",
    "extract_features",
    "model_pair_scorer",
    "itc_scores",
    "RECALL_AT",
    "SCORINGS",
    "retrieval_recalls",
    "RetrievalEvaluation",
    "describe_protocol",
    "evaluate_retrieval",
    "RetrievalTables",
    "retrieval_metrics",
    "item_subsets",
    "first_of_each",
]
