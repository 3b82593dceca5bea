"""Helpers every `vidlab bench ...` command shares: isolated measurement processes, peak memory, tables."""

from __future__ import annotations

import multiprocessing
import resource
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from vidlab.data.workers import exit_with_parent
from vidlab.errors import VidlabError


class BenchError(VidlabError):
    """A benchmark could not run (no input, a measurement process failed or died)."""


def current_rss_mib() -> float:
    """The resident memory of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Peak resident memory of the largest single process so far: this one or any reaped descendant.

    `ru_maxrss` of RUSAGE_CHILDREN is the peak of the largest terminated, waited-for descendant
    (DataLoader workers, ffmpeg processes), so the max of the two is the biggest process of the run.
    Linux reports KiB, macOS bytes.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return max(own, children) / scale


def _isolated_entry(conn: Connection, start_method: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Body of an isolated process: run `fn`, send back ('ok', result, peak MiB) or ('error', text).

    A forkserver child inherits 'forkserver' as its default start method; `fn` gets the caller's instead,
    so e.g. DataLoader workers start as they would in the caller (with 'forkserver' each would re-import
    torch: ~10x slower loading, measured).
    """
    multiprocessing.set_start_method(start_method, force=True)
    exit_with_parent()
    try:
        result = fn(**kwargs)
    except VidlabError as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
    except BaseException:  # any failure must reach the parent as text, not as a silent exit
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("ok", result, peak_rss_mib()))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., Any], kwargs: dict[str, Any], preload: Sequence[str] = ()) -> tuple[Any, float]:
    """Run `fn(**kwargs)` in a fresh process and return (its result, that process's peak RSS in MiB).

    Why a fresh process: ru_maxrss only ever grows, so a measurement in a long-lived process would
    report the largest of all earlier ones. Processes come from a forkserver that has only imported
    `preload` (so each starts in milliseconds, not after seconds of `import torch`) and that never
    ran a measurement, so every process starts from the same import-only baseline. `fn` must be a
    module-level function; `preload` takes effect when the server first starts.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_isolated_entry, args=(sender, multiprocessing.get_start_method(), fn, kwargs))
    process.start()
    sender.close()
    try:
        reply = receiver.recv()
    except EOFError:
        process.join()
        raise BenchError(
            f"measurement process for {fn.__name__} died with exit code {process.exitcode} "
            "(killed for memory?)"
        ) from None
    finally:
        receiver.close()
    process.join()
    if reply[0] == "error":
        raise BenchError(f"{fn.__name__} failed in its measurement process: {reply[1].strip()}")
    return reply[1], reply[2]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right_align_from: int = 0) -> str:
    """A GitHub-flavoured markdown table; columns from `right_align_from` on are numeric (right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = [c.rjust(w) if i >= right_align_from else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if i >= right_align_from else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(cells[0]), "|" + "|".join(f" {r} " for r in rule) + "|"] + [line(r) for r in cells[1:]])


def format_ratio(numerator: float | None, denominator: float | None) -> str:
    """`a/b` as '2.31x', or '-' when either side is missing or zero (a cell that was not measured)."""
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"
