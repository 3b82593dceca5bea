"""Dataset mixing: FiT's zip of loaders and Singularity's per-step loader schedule."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from vidlab.data.mixing import MetaLoader, ZipLoader, loader_schedule
from vidlab.errors import VidlabError


def rank_loaders(rank: int, world_size: int = 2) -> dict[str, DataLoader]:
    """What each rank of a DDP job builds: same datasets, a DistributedSampler per rank."""
    datasets = {"webvid": torch.arange(100), "cc3m": torch.arange(1000, 1040), "coco": torch.arange(2000, 2060)}
    return {
        name: DataLoader(data, batch_size=4, sampler=DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=0))
        for name, data in datasets.items()
    }


def test_schedule_is_identical_on_every_rank_without_communication():
    schedules = []
    for rank in range(2):
        meta = MetaLoader(rank_loaders(rank), seed=3)
        meta.set_epoch(1)
        schedules.append([name for name, _ in meta])
    assert schedules[0] == schedules[1]
    # the ranks still read different data
    batches = [[b for _, b in MetaLoader(rank_loaders(rank), seed=3)] for rank in range(2)]
    assert not torch.equal(batches[0][0], batches[1][0])


def test_each_loader_appears_len_times_and_epoch_is_the_sum():
    meta = MetaLoader(rank_loaders(0), seed=0)
    lengths = {name: len(loader) for name, loader in meta.loaders.items()}
    assert lengths == {"webvid": 13, "cc3m": 5, "coco": 8}
    steps = list(meta)
    assert len(meta) == len(steps) == 26
    assert Counter(name for name, _ in steps) == lengths
    # every batch of every loader is served exactly once
    served = torch.cat([b for _, b in steps])
    expected = torch.cat([torch.cat(list(loader)) for loader in meta.loaders.values()])
    assert sorted(served.tolist()) == sorted(expected.tolist())


def test_schedule_changes_with_epoch_and_seed_and_is_mixed():
    base = loader_schedule([13, 5, 8], seed=0, epoch=0).tolist()
    assert base == loader_schedule([13, 5, 8], seed=0, epoch=0).tolist()
    assert base != loader_schedule([13, 5, 8], seed=0, epoch=1).tolist()
    assert base != loader_schedule([13, 5, 8], seed=1, epoch=0).tolist()
    assert base != sorted(base)  # not one loader after the other


def test_set_epoch_reaches_the_distributed_samplers():
    meta = MetaLoader(rank_loaders(0), seed=0)
    first = [b.tolist() for name, b in meta if name == "webvid"]
    meta.set_epoch(1)
    assert all(loader.sampler.epoch == 1 for loader in meta.loaders.values())
    assert [b.tolist() for name, b in meta if name == "webvid"] != first


def test_meta_loader_reports_a_loader_shorter_than_its_len():
    class Liar:
        def __len__(self):
            return 3

        def __iter__(self):
            return iter([1])

    with pytest.raises(VidlabError, match="'liar' yielded fewer batches"):
        list(MetaLoader({"liar": Liar()}))


def test_zip_loader_takes_one_batch_of_each_and_stops_at_the_shortest():
    images = DataLoader(torch.arange(10), batch_size=2)  # 5 batches
    videos = DataLoader(torch.arange(100, 106), batch_size=2)  # 3 batches
    steps = list(ZipLoader([images, videos]))
    assert len(ZipLoader([images, videos])) == len(steps) == 3
    assert (steps[0][0].tolist(), steps[0][1].tolist()) == ([0, 1], [100, 101])
    assert len(list(ZipLoader([images, videos], max_steps=2))) == len(ZipLoader([images, videos], max_steps=2)) == 2
