import os
import re
import subprocess
import sys

import pytest
import torch
from torch.utils.data import Dataset

from vidlab.data.datasets import SharedEpoch
from vidlab.data.mixing import loader_schedule
from vidlab.engine.data import (
    TRAIN_SET_KEY,
    GlobalBatchSampler,
    ResumableTrainLoader,
    TrainSet,
    eval_loader,
)
from vidlab.errors import ConfigError


class Numbers(Dataset):
    """Sample i is {'index': i, 'name': name}; records the epochs it was set to."""

    def __init__(self, n: int, name: str):
        self.n, self.name, self.epochs = n, name, []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "name": self.name}


def collate(samples: list[dict]) -> dict:
    return {"index": torch.tensor([s["index"] for s in samples]), "name": samples[0]["name"], "bad_samples": []}


def test_ranks_split_each_global_batch_of_the_one_process_order():
    single = list(GlobalBatchSampler(20, 8, seed=3))
    ranks = [GlobalBatchSampler(20, 8, rank=r, world_size=2, seed=3) for r in range(2)]
    per_rank = [list(s) for s in ranks]
    assert len(single) == 2 == len(per_rank[0])  # the partial batch of 4 is dropped
    assert [a + b for a, b in zip(*per_rank)] == single
    shuffled = GlobalBatchSampler(20, 8, seed=3)
    shuffled.set_epoch(1)
    assert list(shuffled) != single  # a new permutation every epoch


def _batches(loader) -> list[tuple[str, list[int]]]:
    return [(b["name"], b["index"].tolist()) for b in loader]


def test_zip_mixing_alternates_sets_and_resumes_at_any_batch():
    def make(progress=None):
        sets = [TrainSet("v", Numbers(12, "v"), 4, collate), TrainSet("i", Numbers(6, "i"), 2, collate)]
        return ResumableTrainLoader(sets, seed=1, progress=progress)

    loader = make()
    loader.set_epoch(2)
    full = _batches(loader)
    assert len(loader) == 6 and [name for name, _ in full] == ["v", "i"] * 3  # 3 steps: the shortest set
    assert all(len(ix) == (4 if name == "v" else 2) for name, ix in full)
    for done in range(len(full)):  # a checkpoint taken after `done` batches of epoch 2
        saved = make(progress=lambda done=done: done)
        saved.set_epoch(2)
        resumed = make()
        resumed.load_state_dict(saved.state_dict())
        assert _batches(resumed) == full[done:]
        assert _batches(resumed) == full  # the next pass is a whole epoch again


def test_schedule_mixing_draws_one_set_per_step_and_resumes_at_any_batch():
    def make(progress=None, steps_per_epoch=None):
        sets = [TrainSet("v", Numbers(12, "v"), 4, collate), TrainSet("i", Numbers(10, "i"), 2, collate)]
        return ResumableTrainLoader(sets, seed=1, progress=progress, mixing="schedule", steps_per_epoch=steps_per_epoch)

    loader = make()
    loader.set_epoch(1)
    full = _batches(loader)
    assert len(loader) == len(full) == 3 + 5  # every batch of every set, one per step
    expected_names = ["vi"[i] for i in loader_schedule([3, 5], seed=1, epoch=1)]
    assert [name for name, _ in full] == expected_names
    for name, size in (("v", 4), ("i", 2)):  # each set's batches are its own permutation, each sample once
        seen = [i for n, ix in full if n == name for i in ix]
        assert len(seen) == len(set(seen)) and all(len(ix) == size for n, ix in full if n == name)
    for done in range(len(full)):
        saved = make(progress=lambda done=done: done)
        saved.set_epoch(1)
        resumed = make()
        resumed.load_state_dict(saved.state_dict())
        assert _batches(resumed) == full[done:]
    capped = make(steps_per_epoch=5)
    capped.set_epoch(1)
    assert len(capped) == 5 and _batches(capped) == full[:5]


def test_batches_name_their_training_set_and_bad_mixing_is_a_config_error():
    sets = [TrainSet("v", Numbers(8, "v"), 4, collate), TrainSet("i", Numbers(8, "i"), 4, collate)]
    for mixing in ("zip", "schedule"):
        assert {b[TRAIN_SET_KEY] for b in ResumableTrainLoader(sets, mixing=mixing)} == {"v", "i"}
        assert all(b[TRAIN_SET_KEY] == b["name"] for b in ResumableTrainLoader(sets, mixing=mixing))
    with pytest.raises(ConfigError, match="data.mixing"):
        ResumableTrainLoader(sets, mixing="round_robin")
    with pytest.raises(ConfigError, match="distinct names"):
        ResumableTrainLoader([sets[0], sets[0]])
    with pytest.raises(ConfigError, match="training set 'v': batch_size must be >= 1, got 0"):
        TrainSet("v", Numbers(8, "v"), 0, collate)


def test_a_checkpoint_at_the_end_of_an_epoch_resumes_with_the_next_epoch():
    sets = [TrainSet("v", Numbers(12, "v"), 4, collate)]
    loader = ResumableTrainLoader(sets, seed=1)
    loader.load_state_dict({"epoch": 0, "batches": 3})
    assert loader.epoch == 1
    expected = ResumableTrainLoader(sets, seed=1)
    expected.set_epoch(1)
    assert _batches(loader) == _batches(expected)
    assert sets[0].dataset.epochs[-1] == 1  # the dataset reseeds its samples per epoch


def test_eval_shards_cover_every_sample_once():
    dataset = Numbers(7, "t")
    seen = [i for r in range(3) for b in eval_loader(dataset, 2, collate, rank=r, world_size=3) for i in b["index"].tolist()]
    assert sorted(seen) == list(range(7))


def test_steps_per_epoch_caps_and_says_so_when_it_cannot_lengthen(caplog):
    sets = [TrainSet("v", Numbers(12, "v"), 4, collate)]
    assert ResumableTrainLoader(sets, steps_per_epoch=2).steps == 2
    assert not caplog.records
    with caplog.at_level("WARNING", logger="vidlab.engine.data"):
        loader = ResumableTrainLoader(sets, steps_per_epoch=5)
    assert loader.steps == loader.uncapped_steps == 3
    assert "never lengthens" in caplog.text and "(3 steps)" in caplog.text


class EpochNumbers(Dataset):
    """Sample i is {'index': i, 'epoch': the epoch its process sees, 'pid': that process}."""

    def __init__(self, n: int):
        self.n, self.shared_epoch = n, SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        self.shared_epoch.set(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "epoch": self.shared_epoch.get(), "pid": os.getpid()}


def epoch_collate(samples: list[dict]) -> dict:
    return {key: torch.tensor([s[key] for s in samples]) for key in ("index", "epoch", "pid")} | {"bad_samples": []}


def test_workers_live_through_the_epochs_and_give_the_in_process_batches():
    def epochs(num_workers: int) -> tuple[list[list[tuple[list[int], set[int]]]], set[int]]:
        loader = ResumableTrainLoader(
            [TrainSet("v", EpochNumbers(24), 4, epoch_collate)], seed=5, num_workers=num_workers, steps_per_epoch=4
        )
        passes, pids = [], set()
        for epoch in range(3):
            loader.set_epoch(epoch)
            batches = list(loader)  # 4 of the 6 batches: each epoch leaves the workers' iterator unfinished
            passes.append([(b["index"].tolist(), set(b["epoch"].tolist())) for b in batches])
            pids |= {pid for b in batches for pid in b["pid"].tolist()}
        loader.close()
        return passes, pids

    in_process, main_pid = epochs(0)
    with_workers, worker_pids = epochs(2)
    assert main_pid == {os.getpid()}
    assert with_workers == in_process
    assert [{e for _, seen in epoch for e in seen} for epoch in with_workers] == [{0}, {1}, {2}]
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids  # the same two workers for all three epochs
    for pid in worker_pids:  # stopped by close()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)



STALLED_RUN = """
import threading, torch
from torch.utils.data import Dataset
from vidlab.engine.data import eval_loader

class Stuck(Dataset):  # sample 1 never arrives: its worker waits forever, as a deadlocked decoder would
    def __len__(self):
        return 4
    def __getitem__(self, i):
        if i == 1:
            threading.Event().wait()
        return torch.tensor(i)

if __name__ == "__main__":
    list(eval_loader(Stuck(), 1, torch.stack, num_workers=2, worker_timeout=3))
"""


def test_a_stalled_worker_stops_loading_with_its_stack_and_the_setting_named(tmp_path):
    """In a process of its own: workers print to the stderr their fork server started with."""
    script = tmp_path / "stalled.py"
    script.write_text(STALLED_RUN)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "DataLoadingStalled: no batch came from the 2 data loading workers in 3 s (data.worker_timeout" in run.stderr
    assert re.search(f'File "{re.escape(str(script))}", line \\d+ in __getitem__', run.stderr)  # the stuck worker's stack
