"""How vidlab starts worker processes (DataLoader workers, ShapesBench encoders): never by a bare fork.

A forked child inherits the parent's memory but only the forking thread. FFmpeg objects the parent made
(a decoder's frame threads, swscale's slice threads inside a filter graph or a frame reformatter) still
exist in the child as data; when the child frees one (Python's garbage collector may do it at any time),
FFmpeg joins threads that do not exist there, and glibc may already have handed their stacks to the
child's own threads: the join waits forever. Seen with PyAV 18.1.1 (whose swscale starts slice threads):
DataLoader workers hung at 0 % CPU after the parent had decoded a clip, and ShapesBench generation hung
the same way after encoding in the parent.

So workers start from a fork server: a clean process, started once, that imports torch, PyAV and vidlab's
data modules and never decodes; each worker is forked from it and receives its dataset by pickling, and
the parent's environment variables as they are when the loader is made (a fork server's children would
otherwise see the environment of the moment the server started). Where the platform has no fork server,
`spawn`. `VIDLAB_WORKER_START=fork|forkserver|spawn` overrides
the choice (fork is then the caller's risk). The cost, measured by `vidlab bench data`, is in
docs/benchmarks.md. As with `spawn`, a script that starts workers needs an `if __name__ == "__main__":`
guard, since each worker imports the caller's main module.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from vidlab.errors import ConfigError, VidlabError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

START_ENV = "VIDLAB_WORKER_START"
THREADS_ENV = "OMP_NUM_THREADS"
START_METHODS = ("forkserver", "spawn", "fork")
STACKS_SIGNAL = getattr(signal, "SIGUSR1", None)  # none on Windows
# Imported once by the fork server, so a worker starts without importing them again.
PRELOAD = ["torch", "numpy", "av", "vidlab.io", "vidlab.data.datasets", "vidlab.data.transforms", "vidlab.data.shards"]


def start_method() -> str:
    """The start method workers use here: `VIDLAB_WORKER_START`, else forkserver where available, else spawn."""
    available = multiprocessing.get_all_start_methods()
    chosen = os.environ.get(START_ENV, "").strip()
    if chosen:
        if chosen not in START_METHODS:
            raise ConfigError(f"{START_ENV} must be one of {', '.join(START_METHODS)}, got {chosen!r}")
        if chosen not in available:
            raise ConfigError(f"{START_ENV}={chosen}: this platform offers only {', '.join(available)}")
        return chosen
    return "forkserver" if "forkserver" in available else "spawn"


def _check_main_importable(method: str) -> None:
    """Workers started by forkserver or spawn import the caller's main script again, by its path."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if method != "fork" and main_file is not None and not os.path.isfile(main_file):
        raise ConfigError(
            f"worker processes import the main script again, and {main_file!r} is not a file (a script read from "
            "standard input?): run it from a file, or use no workers (data.num_workers=0)"
        )


def worker_context() -> BaseContext:
    """The multiprocessing context every vidlab worker pool and DataLoader with workers starts from."""
    method = start_method()
    _check_main_importable(method)
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(PRELOAD)  # takes effect when the server starts (once per process)
    return context


def exit_with_parent() -> None:
    """Ends this process once the process that started it is gone (a killed experiment or benchmark): a child would
    otherwise run on as an orphan, holding the GPU and writing into folders a rerun uses. A daemon thread checks
    every second. The multiprocessing parent is the caller even for a forkserver's child (whose OS parent, the
    server, outlives it)."""
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child: no parent to outlive
        return

    def watch() -> None:
        while parent.is_alive():
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class WorkerSetup:
    """Run first in every worker: the parent's environment variables as they were when this object was made,
    `STACKS_SIGNAL` dumping the worker's Python stacks to stderr (what a stalled loader asks for), and an exit
    when the parent dies. The last is needed because a fork server's child has the server as its OS parent:
    PyTorch's DataLoader workers watch that one, so after a `kill -9` of the training they would live on."""

    def __init__(self) -> None:
        self.environ = dict(os.environ)

    def __call__(self, *_: Any) -> None:  # a DataLoader passes the worker id, an executor nothing
        os.environ.clear()
        os.environ.update(self.environ)
        if STACKS_SIGNAL is not None:
            faulthandler.register(STACKS_SIGNAL, all_threads=True)
        exit_with_parent()


def start_early(num_workers: int) -> None:
    """Start the fork server now when workers will be needed: it imports torch and PyAV (~3 s) in its own process
    while the caller builds the model, instead of before the first batch."""
    if num_workers > 0 and start_method() == "forkserver":
        worker_context()
        from multiprocessing import forkserver

        forkserver.ensure_running()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a SLURM or container allotment), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def intra_op_threads(num_workers: int, configured: int | None = None) -> tuple[int, str]:
    """PyTorch intra-op threads for a process fed by `num_workers` loader workers, and where the number comes from.

    PyTorch's default, one thread per core, competes with the workers (each decodes on about one core), and threads
    that wait for a core slow every operator down: the process takes the cores the workers leave,
    max(1, cores // (1 + num_workers)). `configured` (trainer.threads) comes first, then `OMP_NUM_THREADS` (which
    torchrun sets to 1 when it starts several processes)."""
    if configured is not None:
        return configured, "trainer.threads"
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), THREADS_ENV
    cores = available_cores()
    return max(1, cores // (1 + num_workers)), f"{cores} cores, {num_workers} loader workers"


_announced_threads: tuple[int, str] | None = None


def set_intra_op_threads(num_workers: int, configured: int | None = None) -> int:
    """Give PyTorch `intra_op_threads`, and log it once (again only when the number or its reason changes)."""
    import torch

    global _announced_threads
    threads, source = intra_op_threads(num_workers, configured)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if _announced_threads != (threads, source):
        log.info("PyTorch intra-op threads: %d (%s)", threads, source)
        _announced_threads = (threads, source)
    return threads


def loader_kwargs(num_workers: int) -> dict[str, Any]:
    """DataLoader arguments that start its workers vidlab's way; none without workers (nothing starts)."""
    if num_workers <= 0:
        return {}
    return {"multiprocessing_context": worker_context(), "worker_init_fn": WorkerSetup()}


def dump_stacks(pids: list[int]) -> None:
    """Ask workers started with `WorkerSetup` to print their stacks, and give them a moment to."""
    if STACKS_SIGNAL is None:
        return
    for pid in pids:  # one at a time, so that their stacks do not interleave
        try:
            os.kill(pid, STACKS_SIGNAL)
        except ProcessLookupError:
            continue
        time.sleep(0.3)


class WorkerError(VidlabError):
    """A worker process died, or gave no result for too long (its stacks are printed first)."""


def map_in_workers(fn: Callable[[T], R], items: Sequence[T], workers: int, *, stall_s: float, what: str) -> Iterator[R]:
    """`fn` over `items` in `workers` processes started vidlab's way, results in item order. A worker that dies
    (killed, out of memory) or no result for `stall_s` seconds ends the map with a `WorkerError`, instead of a
    pool that replaces dead workers forever or waits forever on a stuck one."""
    pool = ProcessPoolExecutor(workers, mp_context=worker_context(), initializer=WorkerSetup())
    finished = False
    try:
        futures = [pool.submit(fn, item) for item in items]
        for future in futures:
            try:
                yield future.result(timeout=stall_s)
            except FutureTimeout:
                dump_stacks(list(pool._processes))  # the executor's worker pids (no public accessor)
                raise WorkerError(
                    f"{what}: no result for {stall_s:g} s from the {workers} worker processes; their stacks are printed above"
                ) from None
            except BrokenProcessPool as e:
                raise WorkerError(f"{what}: a worker process died ({e})") from None
        finished = True
    finally:
        if not finished:
            for process in list(pool._processes.values()):
                process.terminate()
        pool.shutdown(wait=finished, cancel_futures=True)

