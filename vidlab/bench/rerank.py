"""`vidlab bench rerank`: the test-time cost Singularity's protocol pays for its numbers.

Retrieval over N videos x N texts, contrastive (ITC) scores only vs ITC followed by the ITM cross-encoder
re-ranking the top-k of every query in both directions (`vidlab.tasks.rerank`), the protocol the official numbers
use. Feature extraction is timed once per row and shown apart, because it is the same for every k. (Training-step
costs, e.g. 1 vs 4 frames, are `vidlab bench model CONFIG --compare ...`'s.)

Peak memory: the CUDA allocator's peak on a GPU; on the CPU the peak RSS of a fresh process running only
that row (`vidlab.bench.common.run_isolated`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig

from vidlab.bench.common import BenchError, format_ratio, markdown_table, run_isolated
from vidlab.bench.steps import autocast, check_device, cuda_peak_mib, reset_peak_memory, synchronize

ITC_ONLY = 0  # the `k` of the contrastive-only row

Result = TypeVar("Result")


@dataclass(frozen=True)
class SingularityRerankResult:
    model: str
    device: str
    precision: str
    num_videos: int
    num_texts: int
    num_frames: int
    k: int  # ITM re-ranked candidates per query; 0 = ITC only
    itm_pairs: int  # cross-encoder passes (both directions)
    features_s: float  # encoding every video and text (the same work for every k)
    scoring_s: float  # ITC matrix (+ re-ranking)
    total_s: float
    ms_per_query: float  # scoring time / (num_texts + num_videos) queries
    peak_mem_mib: float



def synthetic_text(cfg: DictConfig, count: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, length) token ids starting with [CLS], no special token elsewhere, and an all-ones mask."""
    text = cfg.text
    first_plain = max(text.pad_token_id, text.cls_token_id, text.sep_token_id, text.mask_token_id) + 1
    if first_plain >= text.vocab_size:
        raise BenchError(f"text.vocab_size {text.vocab_size} leaves no ordinary token after the special ids")
    ids = torch.randint(first_plain, text.vocab_size, (count, length), generator=generator)
    ids[:, 0] = text.cls_token_id
    return ids, torch.ones_like(ids)



@torch.no_grad()
def singularity_rerank_benchmark(
    model: str,
    *,
    num_videos: int,
    num_texts: int,
    num_frames: int,
    k: int,
    device: str,
    precision: str,
    video_batch_size: int = 32,
    pairs_per_call: int = 1024,
    text_length: int | None = None,
) -> SingularityRerankResult:
    """One retrieval evaluation on random inputs: features, ITC matrix, and for k > 0 the ITM re-ranking of
    each video's top-k texts and each text's top-k videos (`vidlab.tasks.rerank.rerank_topk`)."""
    from vidlab.models import create_model_with_report
    from vidlab.tasks.rerank import (
        PairScorer,
        extract_features,
        model_pair_scorer,
        rerank_topk,
    )

    check_device(device, precision)
    if k < 0:
        raise BenchError(f"k must be >= 0 (0: ITC only), got {k}")
    if min(num_videos, num_texts, num_frames) < 1:
        raise BenchError("videos, texts and test frames must each be at least 1")
    created = create_model_with_report(model, **{"task": "retrieval", "eval.num_frames_test": num_frames})
    net, cfg = created.model.to(device).eval(), created.config
    size = int(cfg.vision.image_size)
    gen = torch.Generator().manual_seed(0)
    videos = torch.randn(num_videos, num_frames, 3, size, size, generator=gen)
    ids, mask = synthetic_text(cfg, num_texts, text_length or int(cfg.text.max_length), gen)
    batches = [videos[i : i + video_batch_size] for i in range(0, num_videos, video_batch_size)]
    scored_pairs: list[int] = []

    def counting(scorer: PairScorer) -> PairScorer:
        """The scorer, recording how many pairs went through the cross-encoder (the row's ITM pairs)."""

        def score(video_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
            scored_pairs.append(len(video_idx))
            return scorer(video_idx, text_idx)

        return score

    with autocast(device, precision):  # untimed warm-up, so the first row does not pay for CUDA's start
        warm = extract_features(net, batches[:1], ids[:video_batch_size], mask[:video_batch_size], "concat", device=device)
        if k > 0:
            first = torch.zeros(1, dtype=torch.long)
            model_pair_scorer(net, warm, device)(first, first)
        synchronize(device)
    reset_peak_memory(device)
    with autocast(device, precision):
        start = time.perf_counter()
        features = extract_features(net, batches, ids, mask, ensemble="concat", device=device)
        synchronize(device)
        extracted = time.perf_counter()
        itc = net.similarity(features.pooled_video, features.text_states[:, 0])
        if k > 0:
            rerank_topk(itc, counting(model_pair_scorer(net, features, device)), k, "concat", pairs_per_call)
        synchronize(device)
        scored = time.perf_counter()
    scoring = scored - extracted
    return SingularityRerankResult(
        model, device, precision, num_videos, num_texts, num_frames, k, sum(scored_pairs), extracted - start, scoring,
        scored - start, 1000 * scoring / (num_videos + num_texts), cuda_peak_mib(device),
    )


def _measured(fn: Callable[..., Result], kwargs: dict[str, Any]) -> Result:
    """`fn(**kwargs)`; on the CPU in a fresh process, its peak RSS becoming the row's peak memory."""
    if kwargs["device"].startswith("cuda"):
        return fn(**kwargs)
    result, peak_rss = run_isolated(fn, kwargs, preload=["vidlab.models"])
    return type(result)(**{**asdict(result), "peak_mem_mib": peak_rss})



def run_rerank_benchmark(
    model: str, *, ks: Sequence[int], num_videos: int, num_texts: int, num_frames: int, device: str, precision: str
) -> list[SingularityRerankResult]:
    """ITC only, then each k, side by side."""
    return [
        _measured(
            singularity_rerank_benchmark,
            dict(model=model, num_videos=num_videos, num_texts=num_texts, num_frames=num_frames, k=k,
                 device=device, precision=precision),
        )
        for k in (ITC_ONLY, *(k for k in ks if k != ITC_ONLY))
    ]


def render(rerank: Sequence[SingularityRerankResult]) -> str:
    """The rows as markdown, with their ratio against ITC only and a note saying what ran."""
    itc = next((r for r in rerank if r.k == ITC_ONLY), None)
    headers = ("model", "device", "precision", "scoring", "videos x texts", "frames", "ITM pairs",
               "features s", "scoring s", "total s", "ms/query", "peak MiB", "total vs ITC")
    rows = [
        (r.model, r.device, r.precision, "ITC only" if r.k == ITC_ONLY else f"ITC + ITM top-{r.k}",
         f"{r.num_videos} x {r.num_texts}", r.num_frames, r.itm_pairs, f"{r.features_s:.2f}",
         f"{r.scoring_s:.2f}", f"{r.total_s:.2f}", f"{r.ms_per_query:.2f}", f"{r.peak_mem_mib:.0f}",
         format_ratio(r.total_s, itc.total_s if itc else None))
        for r in rerank
    ]
    table = (
        markdown_table(headers, rows, right_align_from=4) + "\n\n"
        "Test: features = every video (test frames concatenated as one memory) and text encoded once; "
        "scoring = the ITC matrix, plus for top-k the ITM logit of each video's k best texts and each text's "
        "k best videos; ms/query = scoring time / (videos + texts)."
    )
    note = "Peak MiB: CUDA allocator peak on a GPU, peak RSS of a fresh process per row on the CPU."
    return f"{table}\n\n{note}\n"


__all__ = ["SingularityRerankResult", "render", "run_rerank_benchmark", "singularity_rerank_benchmark", "synthetic_text"]
