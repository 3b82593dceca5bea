"""The steps of an experiment plan (trainings, evaluations) and running them, one at a time or several at once.

An experiment's models are small next to a GPU: one training keeps it a fraction busy, its data loading and
Python overhead the rest. `run_steps(..., jobs=N)` runs up to N steps at once, each in its own process (spawned:
CUDA cannot be forked), as soon as the steps it starts from have finished; a step's output goes to its own log
file, and the console shows numbered start and finish lines. With `jobs=1` (the default) every step runs in this
process, in the plan's order, printing as it goes.

If a step fails, no further step starts; steps already running finish, so that a rerun of the experiment reuses
them. If the experiment's process ends (a `timeout`, a kill), its step processes end within a second: they would
otherwise train on as orphans, holding the GPU and writing into the folders that a rerun uses.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidlab.bench.common import exit_with_parent
from vidlab.errors import VidlabError


class StepError(VidlabError):
    """A step of the plan failed; its log file says why."""


@dataclass
class Step:
    """One training or evaluation: `fn(*args)`, once the steps named in `after` have finished (it reads what they
    wrote). Function and arguments must pickle, so that the step can run in another process."""

    key: str  # unique; also the name of its log file and its entry in the timings
    what: str  # the console line
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    after: tuple[str, ...] = ()


class Progress:
    """Numbered, timed console lines ([3/17] ...) and the seconds each step took."""

    def __init__(self, total: int):
        self.total = total
        self.started = 0
        self.seconds: dict[str, float] = {}

    def start(self, what: str) -> int:
        self.started += 1
        print(f"\n[{self.started}/{self.total}] {what}", flush=True)
        return self.started

    def finish(self, number: int, key: str, seconds: float) -> None:
        self.seconds[key] = seconds
        print(f"[{number}/{self.total}] done in {seconds:.0f} s", flush=True)

    def run(self, key: str, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        number = self.start(what)
        started = time.perf_counter()
        result = fn(*args)
        self.finish(number, key, time.perf_counter() - started)
        return result


def log_file(logs: Path, key: str) -> Path:
    """Where a step run in its own process writes its output."""
    return logs / f"{key.replace('/', '.')}.log"


def run_steps(steps: Sequence[Step], progress: Progress, *, jobs: int = 1, logs: Path, threads: int | None = None) -> dict[str, Any]:
    """Run every step once the steps it is `after` have finished; {key: result}. `threads`: torch CPU threads in
    each step's process (jobs > 1)."""
    keys = [step.key for step in steps]
    if len(set(keys)) != len(keys):
        raise ValueError(f"step keys must be unique, got {keys}")
    for step in steps:
        unknown = set(step.after) - set(keys[: keys.index(step.key)])
        if unknown:
            raise ValueError(f"step {step.key!r} runs after {sorted(unknown)}, which are not earlier steps")
    if jobs < 1:
        raise ValueError(f"jobs must be 1 or more, got {jobs}")
    results: dict[str, Any] = {}
    if jobs == 1:
        for step in steps:
            results[step.key] = progress.run(step.key, step.what, step.fn, *step.args)
        return results

    logs.mkdir(parents=True, exist_ok=True)
    pending = list(steps)
    running: dict[Future, tuple[Step, int]] = {}
    failed: list[str] = []
    context = multiprocessing.get_context("spawn")
    init = (threads, multiprocessing.get_start_method())
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_step_process, initargs=init) as pool:
        while running or (pending and not failed):
            ready = [step for step in pending if all(key in results for key in step.after)] if not failed else []
            for step in ready[: jobs - len(running)]:
                pending.remove(step)
                number = progress.start(f"{step.what}  (log: {log_file(logs, step.key)})")
                running[pool.submit(_run_logged, log_file(logs, step.key), step.fn, step.args)] = (step, number)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                step, number = running.pop(future)
                try:
                    results[step.key], seconds = future.result()
                except Exception as error:  # noqa: BLE001 - reported with its log, raised below
                    failed.append(f"{step.key}: {type(error).__name__}: {error} (log: {log_file(logs, step.key)})")
                    if running:
                        print(f"[{number}/{progress.total}] failed; waiting for {len(running)} running step(s) to finish", flush=True)
                    continue
                progress.finish(number, step.key, seconds)
    if failed:
        raise StepError("failed: " + "; ".join(failed) + (f"; {len(pending)} step(s) not started" if pending else ""))
    return results


def _init_step_process(threads: int | None, start_method: str) -> None:
    """A spawned process inherits 'spawn' as its default start method; a step's DataLoader workers start as they would
    in the caller instead (spawned, each would import torch again at every epoch: 45 s per epoch on one H100 run)."""
    multiprocessing.set_start_method(start_method, force=True)
    exit_with_parent()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _run_logged(log: Path, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float]:
    """In a step's process: `fn(*args)` with everything it prints (Python, native libraries, warnings) in `log`;
    (result, seconds)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            started = time.perf_counter()
            return fn(*args), time.perf_counter() - started
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
