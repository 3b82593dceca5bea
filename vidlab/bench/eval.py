"""`vidlab bench eval`: FiT's retrieval metrics from a given n x n similarity matrix, vidlab against a
transcription of the official method, side by side: seconds, extra memory, identical results.

The official code is not run here: `official_fit_metrics` is a labelled transcription of Frozen in Time's
`model/metric.py` (`t2v_metrics`: sort every row, find the ground truth by subtraction, first match;
`v2t_metrics`: per video, sort its column and average the tied positions of each caption, best caption;
`cols2metrics`: R@1 counts rank 0, R@k ranks below k), kept to its algorithm so that its time and memory are
the official method's. Every (size, method) run is a fresh process (`run_isolated`) that draws the seeded
matrix itself; "extra MiB" is the run's peak resident memory above what it held with the matrix drawn (the
peak count restarts there: Linux's /proc/self/clear_refs).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vidlab.bench.common import BenchError, current_rss_mib, format_ratio, markdown_table, peak_rss_mib, run_isolated
from vidlab.tasks.retrieval import CaptionIndex, fit_retrieval_metrics

VIDLAB, OFFICIAL = "vidlab", "official (transcription)"
METHODS = (VIDLAB, OFFICIAL)
TIE_DECIMALS = 3  # similarities rounded to this many decimals: ties occur, as with real low-precision scores


def official_fit_metrics(sims: np.ndarray, query_masks: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Transcription of FiT's t2v_metrics + v2t_metrics + cols2metrics: consecutive captions per video;
    `query_masks` (num_texts,) marks real captions (missing ones are no t2v query and no v2t candidate)."""
    num_texts, num_videos = sims.shape
    per_video = num_texts // num_videos

    def summary(cols: np.ndarray) -> dict[str, float]:
        metrics = {"R1": 100 * float(np.sum(cols == 0)) / len(cols)}
        metrics.update({f"R{k}": 100 * float(np.sum(cols < k)) / len(cols) for k in (5, 10, 50)})
        metrics["MedR"], metrics["MeanR"] = float(np.median(cols)) + 1, float(np.mean(cols)) + 1
        three = np.array([metrics["R1"], metrics["R5"], metrics["R10"]])
        metrics["geometric_mean_R1-R5-R10"] = 0.0 if three.min() == 0 else float(np.exp(np.log(three).mean()))
        return metrics

    dists = -sims
    sorted_dists = np.sort(dists, axis=1)
    gt_dists = dists[np.arange(num_texts), np.arange(num_texts) // per_video][:, None]
    rows, cols = np.where((sorted_dists - gt_dists) == 0)
    _, first = np.unique(rows, return_index=True)  # ties broken optimistically
    t2v = cols[first]
    del sorted_dists
    if query_masks is not None:
        t2v = t2v[query_masks.reshape(-1).astype(bool)]
    video_dists = dists.T
    missing = 1e8  # the official MISSING_VAL: a masked caption's distance
    v2t = []
    for video in range(num_videos):
        row = video_dists[video]
        if query_masks is not None:
            row = row.copy()
            row[~query_masks.reshape(-1).astype(bool)] = missing
        ordered = np.sort(row)
        best = np.inf
        for text in range(video * per_video, (video + 1) * per_video):
            if row[text] != missing:
                best = min(best, np.where((ordered - row[text]) == 0)[0].mean())  # ties averaged
        v2t.append(best)
    return {"t2v": summary(t2v.astype(np.float64)), "v2t": summary(np.array(v2t))}


def similarity_matrix(size: int, seed: int) -> np.ndarray:
    """A seeded (size, size) float32 matrix, the diagonal lifted so recalls are neither 0 nor 100, with ties."""
    rng = np.random.default_rng(seed)
    sims = rng.standard_normal((size, size), dtype=np.float32)
    sims[np.arange(size), np.arange(size)] += 2.5
    return np.round(sims, TIE_DECIMALS, out=sims)


def _reset_peak() -> bool:
    """Linux: restart the process's peak-RSS count (VmHWM) from its current RSS; False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_since_reset_mib() -> float:
    """Peak RSS since `_reset_peak` (VmHWM), or the process's whole peak where /proc cannot tell."""
    status = Path("/proc/self/status")
    if status.is_file():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        return float(fields["VmHWM"].split()[0]) / 1024
    return peak_rss_mib()


def measure(method: str, size: int, seed: int, chunk_size: int) -> dict[str, Any]:
    """One run in a fresh process: seconds, extra peak MiB above the drawn matrix, and the metrics."""
    torch.set_num_threads(1)  # the transcription is single-threaded numpy: compare like with like
    sims = similarity_matrix(size, seed)
    _reset_peak()
    before = current_rss_mib()
    start = time.perf_counter()
    if method == VIDLAB:
        metrics = fit_retrieval_metrics(torch.from_numpy(sims), CaptionIndex.consecutive(size, 1), chunk_size=chunk_size)
    elif method == OFFICIAL:
        metrics = official_fit_metrics(sims)
    else:
        raise BenchError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "extra_mib": max(0.0, _peak_since_reset_mib() - before), "metrics": metrics}


@dataclass
class EvalBench:
    sizes: list[int]
    repeats: int
    seed: int
    chunk_size: int
    runs: list[dict[str, Any]] = field(default_factory=list)  # size, method, seconds, extra_mib, metrics


def run_eval_bench(sizes: Sequence[int], repeats: int, seed: int = 0, chunk_size: int = 4096) -> EvalBench:
    """Per size, `repeats` rounds of both methods (interleaved), each in its own process; results must agree."""
    if any(s < 10 for s in sizes):
        raise BenchError(f"--sizes must be >= 10, got {list(sizes)}")
    bench = EvalBench(list(sizes), repeats, seed, chunk_size)
    for size in sizes:
        for _ in range(repeats):
            for method in METHODS:
                result, _ = run_isolated(measure, {"method": method, "size": size, "seed": seed, "chunk_size": chunk_size},
                                         preload=[__name__])
                bench.runs.append({"size": size, "method": method, **result})
        ours, theirs = (next(r["metrics"] for r in bench.runs if r["size"] == size and r["method"] == m) for m in METHODS)
        for direction in ("t2v", "v2t"):
            for key, value in theirs[direction].items():
                if not np.isclose(ours[direction][key], value, rtol=1e-9, atol=1e-9):
                    raise BenchError(f"{size}x{size} {direction} {key}: vidlab {ours[direction][key]} != official {value}")
    return bench


def render_eval_bench(bench: EvalBench) -> str:
    rows = []
    for size in bench.sizes:
        median = {
            m: {k: statistics.median(r[k] for r in bench.runs if r["size"] == size and r["method"] == m)
                for k in ("seconds", "extra_mib")}
            for m in METHODS
        }
        rows.append((
            f"{size} x {size}",
            f"{median[OFFICIAL]['seconds']:.3f}", f"{median[VIDLAB]['seconds']:.3f}",
            format_ratio(median[OFFICIAL]["seconds"], median[VIDLAB]["seconds"]),
            f"{median[OFFICIAL]['extra_mib']:.0f}", f"{median[VIDLAB]['extra_mib']:.0f}",
        ))
    headers = ("matrix", "official s", "vidlab s", "speed-up", "official extra MiB", "vidlab extra MiB")
    return "\n".join([
        "## vidlab bench eval",
        "",
        f"FiT t2v + v2t metrics from a given float32 similarity matrix (one caption per video, similarities "
        f"rounded to {TIE_DECIMALS} decimals so that ties occur), seed {bench.seed}; median of {bench.repeats} "
        f"interleaved runs, each in a fresh process; vidlab in row chunks of {bench.chunk_size}, torch with one "
        "thread. **official**: a transcription of FiT's metric code (not the official code itself). Both give "
        "the same metrics (checked at every size).",
        "",
        markdown_table(headers, rows, right_align_from=1),
        "",
    ])
