"""`vidlab bench data --start-methods`: what starting DataLoader workers from a fork server (vidlab's way, see
`vidlab.data.workers`) costs next to a bare fork and spawn.

Each run is a fresh process (`run_isolated`) that, like a training that evaluates first, decodes one clip in
the main process and then loads the setup's clips with workers started by one method:

- **first batch**: from creating the DataLoader to its first clip: the fork server's own start (fork server
  only), the workers' start, the dataset's pickling (fork server, spawn) and one clip;
- **epoch 1** / **epoch 2**: the whole first pass, then a second pass over the same persistent workers;
- **restart**: a second DataLoader's first clip once the first one is done (an evaluation loader made anew
  each time), the fork server already running.

Methods run interleaved, `repeats` times each; the report gives medians and ratios to `fork`. A fork run sets
its DataLoader's timeout, so a worker hung by what it inherited fails that run instead of the benchmark.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

from torch.utils.data import DataLoader

from vidlab.bench.common import BenchError, format_ratio, markdown_table, run_isolated
from vidlab.data.workers import PRELOAD as SERVER_PRELOAD
from vidlab.data.workers import START_METHODS, WorkerSetup

PHASES = ("first batch", "epoch 1", "epoch 2", "restart")
HANG_TIMEOUT_S = 120


@dataclass(frozen=True)
class StartRun:
    method: str
    seconds: dict[str, float]  # phase -> seconds


def measure_start(dataset_args: dict[str, Any], workers: int, method: str) -> dict[str, float]:
    """One run: the four phases of `PHASES` with workers started by `method` (in a fresh process)."""
    import multiprocessing

    from vidlab.bench.data import clip_dataset

    dataset = clip_dataset(**dataset_args)
    dataset[0]  # the main process decodes first
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(SERVER_PRELOAD)

    def loader(persistent: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=None, num_workers=workers, multiprocessing_context=context,
            worker_init_fn=WorkerSetup(), persistent_workers=persistent, timeout=HANG_TIMEOUT_S,
        )

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    persistent = loader(True)
    batches = iter(persistent)
    next(batches)
    seconds["first batch"] = time.perf_counter() - start
    for _ in batches:
        pass
    seconds["epoch 1"] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in persistent:
        pass
    seconds["epoch 2"] = time.perf_counter() - start
    start = time.perf_counter()
    next(iter(loader(False)))
    seconds["restart"] = time.perf_counter() - start
    return seconds


def check_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in START_METHODS]
    if unknown:
        raise BenchError(f"unknown start method(s) {', '.join(unknown)}; known: {', '.join(START_METHODS)}")


def run_start_methods(
    dataset_args: dict[str, Any], workers: int, methods: Sequence[str], repeats: int, preload: Sequence[str]
) -> list[StartRun]:
    """`repeats` rounds, each running every method once (interleaved), each run in its own process."""
    check_methods(methods)
    if workers < 1:
        raise BenchError("the start-method comparison needs at least 1 worker")
    runs = []
    for _ in range(repeats):
        for method in methods:
            kwargs = {"dataset_args": dataset_args, "workers": workers, "method": method}
            try:
                seconds, _peak = run_isolated(measure_start, kwargs, preload)
            except BenchError as e:  # e.g. fork's workers hung on what they inherited: reported, not fatal
                if "timed out" not in str(e):
                    raise
                seconds = {}
            runs.append(StartRun(method, seconds))
    return runs


def render_start_methods(runs: Sequence[StartRun], title: str, clips: int, workers: int) -> str:
    """Median seconds per (method, phase), with each method's ratio to fork."""
    methods = list(dict.fromkeys(r.method for r in runs))
    finished = {m: [r for r in runs if r.method == m and r.seconds] for m in methods}
    median = {m: {p: statistics.median(r.seconds[p] for r in done) for p in PHASES} if done else None
              for m, done in finished.items()}
    rows = []
    for m in methods:
        hung = sum(r.method == m and not r.seconds for r in runs)
        cells = []
        for p in PHASES:
            if median[m] is None:
                cells.append("hung")
                continue
            cell = f"{median[m][p]:.3f}"
            if m != "fork" and median.get("fork"):
                cell += f" ({format_ratio(median['fork'][p], median[m][p])})"
            cells.append(cell)
        rows.append((m, *cells, hung))
    repeats = sum(r.method == methods[0] for r in runs)
    return "\n".join([
        "### Worker start methods",
        "",
        f"{title}, {clips} clips, {workers} workers; median seconds of {repeats} interleaved runs per method, "
        "in brackets fork's time over the method's (below 1: slower than fork). The main process decodes a clip "
        "before the workers start.",
        "",
        markdown_table(("start method", *PHASES, "hung runs"), rows, right_align_from=1),
        "",
    ])
