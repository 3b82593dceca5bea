"""`vidlab bench model singularity`: the two costs the Singularity paper trades against each other.

- Training: one ITC + ITM (+ MLM) step with 1 frame vs several frames (optionally with Singularity-temporal's
  temporal embeddings and 2-layer temporal encoder): forward, hard-negative ITM, backward, AdamW step, on
  synthetic inputs of the config's shape. Data loading is `vidlab bench data`'s business.
- Testing: retrieval over N videos x N texts, contrastive (ITC) scores only vs ITC followed by the ITM
  cross-encoder re-ranking the top-k of every query in both directions (`vidlab.tasks.rerank`), the
  protocol the official numbers use. Feature extraction is timed once per row and shown apart, because
  it is the same for every k.

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
from vidlab.bench.steps import (
    autocast,
    check_device,
    cuda_peak_mib,
    reset_peak_memory,
    synchronize,
    time_training_steps,
)

TRAIN_TASKS = {"pretrain": "ITC+ITM+MLM", "retrieval": "ITC+ITM"}
ITC_ONLY = 0  # the `k` of the contrastive-only row

Result = TypeVar("Result")


@dataclass(frozen=True)
class SingularityTrainResult:
    model: str
    device: str
    precision: str
    losses: str  # ITC+ITM+MLM or ITC+ITM
    batch_size: int
    num_frames: int
    temporal: bool  # temporal embeddings + temporal encoder (Singularity-temporal)
    image_size: int
    params_m: float
    step_ms: float
    clips_per_s: float
    peak_mem_mib: float


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


# ---------------------------------------------------------------------------------------------------------
# Shared set-up


def synthetic_text(cfg: DictConfig, count: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, length) token ids starting with [CLS], no special token elsewhere, and an all-ones mask."""
    text = cfg.text
    first_plain = max(text.pad_token_id, text.cls_token_id, text.sep_token_id, text.mask_token_id) + 1
    if first_plain >= text.vocab_size:
        raise BenchError(f"text.vocab_size {text.vocab_size} leaves no ordinary token after the special ids")
    ids = torch.randint(first_plain, text.vocab_size, (count, length), generator=generator)
    ids[:, 0] = text.cls_token_id
    return ids, torch.ones_like(ids)


def _variant_overrides(task: str, num_frames: int, temporal: bool) -> dict[str, Any]:
    return {
        "task": task,
        "num_frames": num_frames,
        "add_temporal_embed": temporal,
        "temporal_vision_encoder.enable": temporal,
    }


# ---------------------------------------------------------------------------------------------------------
# Training step


def singularity_step_benchmark(
    model: str,
    *,
    batch_size: int,
    num_frames: int,
    temporal: bool = False,
    task: str = "pretrain",
    steps: int,
    warmup: int,
    device: str,
    precision: str,
    text_length: int | None = None,
) -> SingularityTrainResult:
    """Mean time of `steps` training steps after `warmup` untimed ones; `text_length` defaults to the
    config's tokenizer truncation (text.max_length)."""
    from vidlab.losses.singularity import matching_losses
    from vidlab.models import create_model_with_report

    check_device(device, precision)
    if task not in TRAIN_TASKS:
        raise BenchError(f"task must be one of {', '.join(TRAIN_TASKS)}, got {task!r}")
    if temporal and num_frames < 2:
        raise BenchError("the temporal encoder attends across frames: use it with 2 or more frames")
    created = create_model_with_report(model, **_variant_overrides(task, num_frames, temporal))
    net, cfg = created.model.to(device).train(), created.config
    size = int(cfg.vision.image_size)
    gen = torch.Generator().manual_seed(0)
    ids, mask = synthetic_text(cfg, batch_size, text_length or int(cfg.text.max_length), gen)
    batch = {
        "video": torch.randn(batch_size, num_frames, 3, size, size, generator=gen).to(device),
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "idx": torch.arange(batch_size, device=device),
    }
    seconds, peak = time_training_steps(
        lambda: sum(matching_losses(net, batch).values()), net.parameters(),
        steps=steps, warmup=warmup, device=device, precision=precision,
    )
    return SingularityTrainResult(
        model, device, precision, TRAIN_TASKS[task], batch_size, num_frames, temporal, size,
        sum(p.numel() for p in net.parameters()) / 1e6, 1000 * seconds, batch_size / seconds, peak,
    )


# ---------------------------------------------------------------------------------------------------------
# Test-time retrieval: ITC only vs ITM re-ranking of the top k


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


# ---------------------------------------------------------------------------------------------------------
# Runs and rendering


def _measured(fn: Callable[..., Result], kwargs: dict[str, Any]) -> Result:
    """`fn(**kwargs)`; on the CPU in a fresh process, its peak RSS becoming the row's peak memory."""
    if kwargs["device"].startswith("cuda"):
        return fn(**kwargs)
    result, peak_rss = run_isolated(fn, kwargs, preload=["vidlab.models"])
    return type(result)(**{**asdict(result), "peak_mem_mib": peak_rss})


def parse_train_setup(spec: str) -> tuple[int, bool]:
    """'4' -> (4 frames, plain); '4t' -> (4 frames, temporal embeddings + temporal encoder)."""
    temporal = spec.endswith("t")
    digits = spec[:-1] if temporal else spec
    if not digits.isdigit() or int(digits) < 1:
        raise BenchError(f"training setup {spec!r}: a frame count, optionally followed by 't' (e.g. 1, 4, 4t)")
    return int(digits), temporal


def run_singularity_benchmark(
    model: str,
    *,
    train_setups: Sequence[str],
    ks: Sequence[int],
    batch_size: int,
    steps: int,
    warmup: int,
    device: str,
    precision: str,
    task: str = "pretrain",
    num_videos: int,
    num_texts: int,
    num_frames_test: int,
) -> tuple[list[SingularityTrainResult], list[SingularityRerankResult]]:
    """Every training setup, then ITC only and each k (no test rows when `ks` is empty), side by side."""
    setups = [parse_train_setup(spec) for spec in train_setups]
    train = [
        _measured(
            singularity_step_benchmark,
            dict(model=model, batch_size=batch_size, num_frames=frames, temporal=temporal, task=task, steps=steps,
                 warmup=warmup, device=device, precision=precision),
        )
        for frames, temporal in setups
    ]
    rerank = [
        _measured(
            singularity_rerank_benchmark,
            dict(model=model, num_videos=num_videos, num_texts=num_texts, num_frames=num_frames_test, k=k,
                 device=device, precision=precision),
        )
        for k in ((ITC_ONLY, *(k for k in ks if k != ITC_ONLY)) if ks else ())
    ]
    return train, rerank


def render(train: Sequence[SingularityTrainResult], rerank: Sequence[SingularityRerankResult]) -> str:
    """Both tables as markdown, each with its ratio against the cheapest setting and a note saying what ran."""
    parts = []
    if train:
        baseline = next((r for r in train if r.num_frames == 1 and not r.temporal), train[0])
        headers = ("model", "device", "precision", "losses", "batch", "frames", "temporal", "px", "params M",
                   "step ms", "clips/s", "peak MiB", f"step vs {baseline.num_frames} frame")
        rows = [
            (r.model, r.device, r.precision, r.losses, r.batch_size, r.num_frames, r.temporal, r.image_size,
             f"{r.params_m:.1f}", f"{r.step_ms:.1f}", f"{r.clips_per_s:.2f}", f"{r.peak_mem_mib:.0f}",
             format_ratio(r.step_ms, baseline.step_ms))
            for r in train
        ]
        parts.append(
            markdown_table(headers, rows, right_align_from=4) + "\n\n"
            "Training: one step = forward, hard-negative ITM, backward, AdamW; synthetic inputs. "
            "temporal = temporal embeddings + 2-layer temporal encoder (Singularity-temporal)."
        )
    if rerank:
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
        parts.append(
            markdown_table(headers, rows, right_align_from=4) + "\n\n"
            "Test: features = every video (test frames concatenated as one memory) and text encoded once; "
            "scoring = the ITC matrix, plus for top-k the ITM logit of each video's k best texts and each text's "
            "k best videos; ms/query = scoring time / (videos + texts)."
        )
    note = "Peak MiB: CUDA allocator peak on a GPU, peak RSS of a fresh process per row on the CPU."
    return "\n\n".join(parts + [note]) + "\n"


__all__ = [
    "SingularityRerankResult",
    "SingularityTrainResult",
    "parse_train_setup",
    "render",
    "run_singularity_benchmark",
    "singularity_rerank_benchmark",
    "singularity_step_benchmark",
    "synthetic_text",
]
