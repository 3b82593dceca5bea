"""How vidlab starts worker processes: never by a bare fork of a parent that has decoded."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from _data_fixtures import build_media_folder
from torch.utils.data import DataLoader, Dataset

from vidlab.data import workers
from vidlab.data.workers import (
    START_ENV,
    THREADS_ENV,
    WorkerError,
    intra_op_threads,
    loader_kwargs,
    map_in_workers,
    set_intra_op_threads,
    start_method,
    worker_context,
)
from vidlab.errors import ConfigError
from vidlab.io import read_frames


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    return build_media_folder(tmp_path_factory.mktemp("workers"), num_good=1).good_paths[0]


class CollectAndDecode(Dataset):
    """Each item first runs the garbage collector (as Python may at any allocation), then decodes a frame."""

    def __init__(self, path: str, size: int = 4):
        self.path, self.size = path, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        gc.collect()
        return read_frames(self.path, [index])


def _threaded_graph_garbage() -> None:
    """An RGB-conversion graph that has run with swscale's slice threads, left as unreachable garbage (a
    filter graph's nodes point back at it, so only the collector frees it): the object whose free, in a
    forked child, joined threads that do not exist there and hung DataLoader workers with PyAV 18.1.1."""
    graph = av.filter.Graph()
    graph.threads = 0  # one per core
    source = graph.add_buffer(width=640, height=360, format="yuv420p", time_base=Fraction(1, 30))
    nodes = [source, graph.add("scale", "w=640:h=360"), graph.add("format", "pix_fmts=rgb24"), graph.add("buffersink")]
    for a, b in zip(nodes, nodes[1:]):
        a.link_to(b)
    graph.configure()
    frame = av.VideoFrame.from_ndarray(np.zeros((540, 640), np.uint8), format="yuv420p")
    frame.time_base, frame.pts = Fraction(1, 30), 0
    graph.push(frame)
    graph.pull()


def test_workers_of_a_parent_that_decoded_and_holds_ffmpeg_threads_do_not_hang(video):
    """The pattern of an evaluation before training: decode in the parent with the threaded decoder, then
    iterate a DataLoader with workers. A hang fails after the loader's timeout instead of never ending."""
    expected = [read_frames(video, [i]) for i in range(4)]  # the parent decodes, FFmpeg threads and all
    gc.disable()  # the parent must not free the garbage itself before the workers start
    try:
        _threaded_graph_garbage()
        loader = DataLoader(CollectAndDecode(video), batch_size=None, num_workers=2, timeout=60, **loader_kwargs(2))
        frames = list(loader)
    finally:
        gc.enable()
    assert all(torch.equal(a, b) for a, b in zip(frames, expected)) and len(frames) == 4


class ReadEnv(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> str:
        return os.environ.get("VIDLAB_TEST_VALUE", "unset")


def test_workers_see_the_environment_of_the_parent_when_the_loader_is_made(monkeypatch):
    worker_context()  # the fork server may already run, with the environment of that moment
    monkeypatch.setenv("VIDLAB_TEST_VALUE", "set after the server started")
    loader = DataLoader(ReadEnv(), batch_size=None, num_workers=1, **loader_kwargs(1))
    assert next(iter(loader)) == "set after the server started"


def test_start_method_defaults_to_the_fork_server_and_can_be_chosen(monkeypatch):
    monkeypatch.delenv(START_ENV, raising=False)
    assert start_method() == "forkserver"
    assert loader_kwargs(0) == {}  # no workers: nothing to start
    monkeypatch.setenv(START_ENV, "spawn")
    assert start_method() == "spawn" and loader_kwargs(2)["multiprocessing_context"].get_start_method() == "spawn"
    monkeypatch.setenv(START_ENV, "thread")
    with pytest.raises(ConfigError, match=f"{START_ENV} must be one of forkserver, spawn, fork, got 'thread'"):
        start_method()


def test_a_main_script_that_workers_cannot_import_again_is_named(monkeypatch):
    monkeypatch.delenv(START_ENV, raising=False)
    monkeypatch.setattr(sys.modules["__main__"], "__file__", "<stdin>", raising=False)
    with pytest.raises(ConfigError, match=r"'<stdin>' is not a file \(a script read from standard input\?\)"):
        loader_kwargs(2)


def _square_or_hang(x: int) -> int:
    if x == 3:
        threading.Event().wait()  # a stuck worker
    return x * x


def _square_or_die(x: int) -> int:
    if x == 3:
        os._exit(9)  # killed
    return x * x


def test_a_stuck_or_dead_pool_worker_ends_the_map_with_one_error():
    assert list(map_in_workers(_square_or_hang, [0, 1, 2], 2, stall_s=30, what="squares")) == [0, 1, 4]
    with pytest.raises(WorkerError, match=r"squares: no result for 2 s from the 2 worker processes"):
        list(map_in_workers(_square_or_hang, list(range(6)), 2, stall_s=2, what="squares"))
    with pytest.raises(WorkerError, match="squares: a worker process died"):
        list(map_in_workers(_square_or_die, list(range(6)), 2, stall_s=30, what="squares"))


KILLED_RUN = """
import os, time
from torch.utils.data import DataLoader, Dataset
from vidlab.data.workers import loader_kwargs

class Slow(Dataset):
    def __len__(self):
        return 10000
    def __getitem__(self, i):
        time.sleep(0.05)
        return i

if __name__ == "__main__":
    batches = iter(DataLoader(Slow(), batch_size=2, num_workers=2, persistent_workers=True, **loader_kwargs(2)))
    next(batches)
    print(*[w.pid for w in batches._workers], flush=True)
    time.sleep(600)
"""


def test_loader_workers_end_soon_after_a_kill_of_their_parent(tmp_path):
    """A fork server's child has the server as its OS parent, which PyTorch's workers watch: they must still end."""
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN)
    run = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in run.stdout.readline().split()]
        assert len(workers) == 2
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # a zombie has ended


def test_intra_op_threads_leave_the_loader_workers_their_cores(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setattr(workers, "available_cores", lambda: 8)
    assert [intra_op_threads(n)[0] for n in (0, 1, 2, 3, 8)] == [8, 4, 2, 2, 1]
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    assert intra_op_threads(2) == (1, "2 cores, 2 loader workers")
    monkeypatch.setenv(THREADS_ENV, "3")  # the user's (or torchrun's) choice
    assert intra_op_threads(2) == (3, THREADS_ENV)
    assert intra_op_threads(2, configured=2) == (2, "trainer.threads")


def test_set_intra_op_threads_sets_torch_and_says_so_once(monkeypatch, caplog):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    monkeypatch.setattr(workers, "_announced_threads", None)
    before = torch.get_num_threads()
    try:
        with caplog.at_level("INFO", logger="vidlab.data.workers"):
            assert set_intra_op_threads(2) == 1 and torch.get_num_threads() == 1
            set_intra_op_threads(2)
            assert set_intra_op_threads(0) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert [r.getMessage() for r in caplog.records] == [
        "PyTorch intra-op threads: 1 (2 cores, 2 loader workers)",
        "PyTorch intra-op threads: 2 (2 cores, 0 loader workers)",
    ]
