"""Training on several datasets at once, in the two ways the official systems do it.

- `ZipLoader` (Frozen in Time): every step takes one batch from each loader; the epoch ends with the
  shortest loader (or `max_steps`). FiT then runs one forward/backward/step per batch of the tuple.
- `MetaLoader` (Singularity): every step takes one batch from ONE loader, following a shuffled schedule in
  which each loader appears `len(loader)` times; the epoch is the sum of the lengths. The schedule is drawn
  from `(seed, epoch)` alone, so every rank computes the same one without communication (Singularity
  broadcasts it from rank 0 instead); all ranks must therefore see equal loader lengths, which
  `DistributedSampler` guarantees.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np

from vidlab.errors import ConfigError, VidlabError


def set_epoch(loader: Any, epoch: int) -> None:
    """Forward the epoch to whatever in `loader` reshuffles or reseeds per epoch (sampler, dataset)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
        return
    for attr in ("sampler", "batch_sampler", "dataset"):
        part = getattr(loader, attr, None)
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def _length(loader: Any, name: str) -> int:
    if not isinstance(loader, Sized):
        raise ConfigError(f"loader {name!r} has no length; mixing needs len(loader) to plan the epoch")
    return len(loader)


def loader_schedule(lengths: Sequence[int], seed: int, epoch: int) -> np.ndarray:
    """Which loader serves each step of an epoch: loader i appears lengths[i] times, in a seeded shuffle."""
    order = np.repeat(np.arange(len(lengths)), lengths)
    np.random.default_rng([seed, epoch]).shuffle(order)
    return order


class ZipLoader:
    """FiT's mixing: yields a tuple with one batch of every loader per step."""

    def __init__(self, loaders: Sequence[Iterable], max_steps: int | None = None):
        if not loaders:
            raise ConfigError("ZipLoader needs at least one loader")
        self.loaders = list(loaders)
        self.max_steps = max_steps

    def __len__(self) -> int:
        shortest = min(_length(loader, str(i)) for i, loader in enumerate(self.loaders))
        return shortest if self.max_steps is None else min(shortest, self.max_steps)

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            set_epoch(loader, epoch)

    def __iter__(self) -> Iterator[tuple]:
        for step, batches in enumerate(zip(*self.loaders)):
            if self.max_steps is not None and step >= self.max_steps:
                return
            yield batches


class MetaLoader:
    """Singularity's mixing: yields `(name, batch)`, one loader per step, in a rank-independent random order."""

    def __init__(self, loaders: Mapping[str, Iterable], seed: int = 0):
        if not loaders:
            raise ConfigError("MetaLoader needs at least one loader")
        self.loaders = dict(loaders)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return sum(_length(loader, name) for name, loader in self.loaders.items())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for loader in self.loaders.values():
            set_epoch(loader, epoch)

    def schedule(self) -> list[str]:
        """The loader names of this epoch's steps, in order."""
        names = list(self.loaders)
        lengths = [_length(self.loaders[n], n) for n in names]
        return [names[i] for i in loader_schedule(lengths, self.seed, self.epoch)]

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self.iterate(self.schedule())

    def iterate(self, schedule: Sequence[str]) -> Iterator[tuple[str, Any]]:
        """`(name, batch)` following an explicit schedule (e.g. the rest of an epoch, when resuming);
        a loader not named in it is never started."""
        iterators: dict[str, Iterator] = {}
        for name in schedule:
            if name not in iterators:
                iterators[name] = iter(self.loaders[name])
            try:
                batch = next(iterators[name])
            except StopIteration:
                raise VidlabError(f"loader {name!r} yielded fewer batches than its len()") from None
            yield name, batch
