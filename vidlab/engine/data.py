"""Training and evaluation loaders that shard by rank, resume mid-epoch, and mix datasets FiT's way.

- `GlobalBatchSampler` draws one permutation per (seed, epoch) and cuts it into *global* batches; rank r
  takes the r-th slice of each. The samples of a step are therefore the same for 1 process with batch B*W
  as for W processes with batch B each, which is what makes multi-process runs comparable to one process.
- `ResumableTrainLoader` mixes one loader per dataset in one of two ways (`data.mixing`):
  `zip` (FiT, `vidlab.data.mixing.ZipLoader`: one batch of each per step, yielded one by one so each
  batch gets its own forward/backward/step) or `schedule` (Singularity, `vidlab.data.mixing.MetaLoader`:
  each step one batch of one dataset, in a seeded shuffle where each dataset appears once per batch it
  has). Every batch carries the name of its dataset under `TRAIN_SET_KEY`. The loader implements
  `state_dict` / `load_state_dict`, which Lightning stores in its checkpoints: the state is (epoch,
  batches done), read from the trainer's progress, and a resumed loader starts at that batch without
  reading the skipped ones.
- `eval_loader` shards an evaluation set without padding: rank r reads samples r, r+W, r+2W, ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vidlab.data.mixing import MetaLoader, ZipLoader, loader_schedule, set_epoch
from vidlab.data.quality import BAD_SAMPLES_KEY, BadSampleTracker
from vidlab.data.workers import dump_stacks, loader_kwargs
from vidlab.errors import ConfigError, VidlabError

log = logging.getLogger(__name__)

Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]
MIXINGS = ("zip", "schedule")
TRAIN_SET_KEY = "train_set"  # batch key: the name of the training set the batch comes from


class DataLoadingStalled(VidlabError):
    """No batch came from the loading workers within `data.worker_timeout`."""


class WorkerLoader(DataLoader):
    """A DataLoader whose workers start vidlab's way (`vidlab.data.workers`) and whose stall is an error:
    when no batch comes within `timeout` seconds, the workers print their stacks and the error names the
    setting, instead of a run that waits forever."""

    def __init__(self, dataset: Dataset, *, num_workers: int = 0, timeout: float = 0, **kwargs: Any):
        super().__init__(dataset, num_workers=num_workers, timeout=timeout if num_workers else 0,
                         **loader_kwargs(num_workers), **kwargs)

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as e:
                if not self.timeout or "timed out" not in str(e):
                    raise
                dump_stacks([w.pid for w in getattr(iterator, "_workers", [])])
                raise DataLoadingStalled(
                    f"no batch came from the {self.num_workers} data loading workers in {self.timeout:g} s "
                    "(data.worker_timeout; 0 waits forever); their stacks are printed above"
                ) from None
            yield batch


@dataclass
class TrainSet:
    """A training dataset, its global batch size (summed over ranks) and its collate function."""

    name: str
    dataset: Dataset
    batch_size: int
    collate: Collate

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"training set {self.name!r}: batch_size must be >= 1, got {self.batch_size}")


class GlobalBatchSampler:
    """Per-rank index lists of global batches: `len` batches per epoch, the last partial one dropped."""

    def __init__(self, num_samples: int, global_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if global_batch_size % world_size:
            raise ConfigError(f"batch size {global_batch_size} is not divisible by the {world_size} processes")
        if num_samples < global_batch_size:
            raise ConfigError(f"{num_samples} samples cannot fill one batch of {global_batch_size}")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.global_batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        for batch in range(self.start_batch, len(self)):
            first = batch * self.global_batch_size + self.rank * self.local_batch_size
            yield order[first : first + self.local_batch_size].tolist()


class ResumableTrainLoader:
    """One or more training sets mixed FiT's (`zip`) or Singularity's (`schedule`) way, sharded by rank,
    resumable mid-epoch.

    `progress` returns how many of this epoch's batches the training loop has finished (the trainer's
    count, not this iterator's, which runs ahead by the prefetched batches).
    """

    def __init__(
        self,
        sets: Sequence[TrainSet],
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        worker_timeout: float = 0,
        steps_per_epoch: int | None = None,
        tracker: BadSampleTracker | None = None,
        pin_memory: bool = False,
        progress: Callable[[], int] | None = None,
        mixing: str = "zip",
    ):
        if not sets:
            raise ConfigError("training needs at least one dataset")
        if mixing not in MIXINGS:
            raise ConfigError(f"data.mixing must be one of {', '.join(MIXINGS)}, got {mixing!r}")
        names = [s.name for s in sets]
        if len(set(names)) != len(names):
            raise ConfigError(f"training sets need distinct names, got {names}")
        self.sets = list(sets)
        self.mixing = mixing
        self.samplers = [GlobalBatchSampler(len(s.dataset), s.batch_size, rank, world_size, seed) for s in self.sets]
        self.seed = seed
        self.num_workers = num_workers
        self.worker_timeout = worker_timeout
        self.steps_per_epoch = steps_per_epoch
        self.tracker = tracker
        self.pin_memory = pin_memory
        self.progress = progress
        self.epoch = 0
        self._resume_at = 0
        self._loaders: dict[str, DataLoader] = {}
        if rank == 0 and steps_per_epoch is not None and steps_per_epoch > self.uncapped_steps:
            log.warning(
                "data.steps_per_epoch=%d is more than an epoch holds (%d steps): it caps an epoch, never lengthens "
                "one; train longer with trainer.max_epochs", steps_per_epoch, self.uncapped_steps,
            )

    @property
    def uncapped_steps(self) -> int:
        """Steps in one pass over the data: zip, the shortest set's batches (each step one batch of every set);
        schedule, all sets' batches (each step one batch)."""
        lengths = [len(s) for s in self.samplers]
        return min(lengths) if self.mixing == "zip" else sum(lengths)

    @property
    def steps(self) -> int:
        """Steps per epoch: `uncapped_steps`, capped by `steps_per_epoch`."""
        steps = self.uncapped_steps
        return steps if self.steps_per_epoch is None else min(steps, self.steps_per_epoch)

    def __len__(self) -> int:
        return self.steps * len(self.sets) if self.mixing == "zip" else self.steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        done = self.progress() if self.progress is not None else 0
        return {"epoch": self.epoch, "batches": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self._resume_at = int(state["epoch"]), int(state["batches"])
        if self._resume_at >= len(self):  # saved at the last batch of an epoch: the next one starts fresh
            self.epoch, self._resume_at = self.epoch + 1, 0

    def _loader(self, train_set: TrainSet, sampler: GlobalBatchSampler) -> Any:
        """The set's DataLoader, made once: its workers live through the epochs (they read the epoch from
        the dataset's shared `set_epoch` and their batches from the sampler in this process), so they keep
        their caches of video headers and frame indexes and are not started again at every epoch."""
        set_epoch(train_set.dataset, self.epoch)
        sampler.set_epoch(self.epoch)
        loader = self._loaders.get(train_set.name)
        if loader is None:
            loader = self._loaders[train_set.name] = WorkerLoader(
                train_set.dataset,
                batch_sampler=sampler,
                collate_fn=train_set.collate,
                num_workers=self.num_workers,
                timeout=self.worker_timeout,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
                # its own generator: creating worker seeds must not consume the global RNG the model uses
                generator=torch.Generator().manual_seed(self.seed),
            )
        return self.tracker.wrap(loader) if self.tracker is not None else loader

    def close(self) -> None:
        """Stop the loading workers now. Persistent workers stop when their DataLoader's iterator is collected,
        and Lightning's fetchers may keep a reference to it past `fit`: hence PyTorch's own shutdown, here."""
        for loader in self._loaders.values():
            if loader._iterator is not None:  # kept by the DataLoader only with persistent workers
                loader._iterator._shutdown_workers()
        self._loaders.clear()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start, self._resume_at = self._resume_at, 0
        batches = self._zip(start) if self.mixing == "zip" else self._schedule(start)
        for name, batch in batches:
            batch.pop(BAD_SAMPLES_KEY, None)  # counted by the tracker; not for the device
            batch[TRAIN_SET_KEY] = name
            yield batch

    def _zip(self, start: int) -> Iterator[tuple[str, dict[str, Any]]]:
        first_step, skip = divmod(start, len(self.sets))
        for sampler in self.samplers:
            sampler.start_batch = first_step
        loaders = [self._loader(s, sampler) for s, sampler in zip(self.sets, self.samplers)]
        for step, batches in enumerate(ZipLoader(loaders, max_steps=self.steps - first_step)):
            for position, batch in enumerate(batches):
                if step == 0 and position < skip:
                    continue
                yield self.sets[position].name, batch

    def _schedule(self, start: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """The epoch's schedule from step `start` on; each set's sampler skips the batches the steps
        before `start` took from it (so a resumed epoch reads exactly the batches it had left)."""
        schedule = loader_schedule([len(s) for s in self.samplers], self.seed, self.epoch)[: self.steps]
        taken = np.bincount(schedule[:start], minlength=len(self.sets))
        for sampler, done in zip(self.samplers, taken):
            sampler.start_batch = int(done)
        loaders = {s.name: self._loader(s, sampler) for s, sampler in zip(self.sets, self.samplers)}
        remaining = [self.sets[i].name for i in schedule[start:]]
        yield from MetaLoader(loaders, seed=self.seed).iterate(remaining)


class _ShardSampler:
    """Indices rank, rank + W, rank + 2W, ... in order: no padding, so no sample is seen twice."""

    def __init__(self, num_samples: int, rank: int, world_size: int):
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def eval_loader(
    dataset: Dataset, batch_size: int, collate: Collate, *, rank: int = 0, world_size: int = 1, num_workers: int = 0,
    worker_timeout: float = 0,
) -> DataLoader:
    """This rank's shard of an evaluation set, in index order."""
    return WorkerLoader(
        dataset,
        batch_size=batch_size,
        sampler=_ShardSampler(len(dataset), rank, world_size),  # type: ignore[arg-type]
        collate_fn=collate,
        num_workers=num_workers,
        timeout=worker_timeout,
        generator=torch.Generator().manual_seed(0),
    )
