"""WebDataset tar shards: write any annotation's records into shards, and stream them back as clips.

A sample in a shard is `<key>.<ext>` (the media file's bytes, `ext` its suffix) plus `<key>.json` (the
record: kind, captions, label, time window, extra, original path and index). Reading splits the shard
list by rank, then by DataLoader worker, so each shard is read once per epoch across the whole job.

`vidlab.io` decodes from paths only, so each media payload is written to a temporary file for the
duration of its decode (`tmp_dir`, e.g. a RAM disk such as /dev/shm, keeps that off the disk).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

from vidlab.data.datasets import (
    AudioWindow,
    CaptionMode,
    ClipReader,
    ImageFrames,
    Sampler,
    SharedEpoch,
    Target,
    Transform,
    check_target,
    read_sample,
)
from vidlab.data.formats import MediaRecord
from vidlab.data.quality import BAD_SAMPLE_ERRORS, BAD_SAMPLES_KEY, BadSample, BadSampleError, BadSamplePolicy
from vidlab.errors import ConfigError
from vidlab.io import Reason, VideoReadError
from vidlab.io.container import check_file


def _media_ext(record: MediaRecord) -> str:
    suffix = os.path.splitext(record.path)[1].lstrip(".").lower()
    return suffix if suffix and suffix != "json" else "bin"


def write_shards(records: Iterable[MediaRecord], out_dir: str | os.PathLike, maxcount: int = 1000, prefix: str = "shard") -> list[Path]:
    """Write `records` (media bytes + JSON) into `out_dir/{prefix}-000000.tar`, ... with `maxcount` samples each.

    Returns the shard paths. A missing or empty media file is a `VideoReadError`: shards should hold
    only what can be served, so check the annotation first (`vidlab data check`).
    """
    if maxcount < 1:
        raise ConfigError(f"maxcount must be >= 1, got {maxcount}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    writer: wds.TarWriter | None = None
    try:
        for index, record in enumerate(records):
            if index % maxcount == 0:
                if writer is not None:
                    writer.close()
                paths.append(out_dir / f"{prefix}-{len(paths):06d}.tar")
                writer = wds.TarWriter(str(paths[-1]))
            ext = _media_ext(record)
            meta = {
                "kind": record.kind,
                "captions": list(record.captions),
                "label": record.label,
                "start": record.start,
                "end": record.end,
                "extra": dict(record.extra),
                "path": record.path,
                "index": index,
                "media": ext,
            }
            assert writer is not None
            writer.write({"__key__": f"{index:09d}", ext: check_file(record.path).read_bytes(), "json": json.dumps(meta).encode()})
    finally:
        if writer is not None:
            writer.close()
    return paths


def expand_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A folder (its `*.tar`), a brace pattern (`data-{000000..000009}.tar`), a glob, or a list."""
    if isinstance(shards, (list, tuple)):
        return [str(s) for s in shards]
    spec = str(shards)
    if os.path.isdir(spec):
        found = sorted(glob.glob(os.path.join(spec, "*.tar")))
    elif any(c in spec for c in "*?["):
        found = sorted(glob.glob(spec))
    else:
        found = expand_urls(spec)
    if not found:
        raise ConfigError(f"no shards found at {spec}")
    return found


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@contextlib.contextmanager
def _as_file(data: bytes, ext: str, tmp_dir: str | None) -> Iterator[str]:
    fd, path = tempfile.mkstemp(suffix=f".{ext}", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)


class ShardDataset(IterableDataset):
    """Streams samples of the same form as `VideoTextDataset`/`VideoLabelDataset` from tar shards.

    `target` picks the pairing (`caption`, `label`, or None for only `record.extra`). Shards are
    assigned as `shards[rank::world_size][worker::num_workers]` after an optional per-epoch shuffle
    that every rank draws from the same seed. Under the `skip` policy a bad sample is dropped and
    reported with the next delivered one; per-sample randomness is keyed by (seed, epoch, shard, position).
    """

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike],
        sampler: Sampler,
        transform: Transform | None = None,
        *,
        num_frames: int,
        target: Target = "caption",
        caption_mode: CaptionMode = "random",
        seed: int = 0,
        shuffle: bool = False,
        shuffle_buffer: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        image_frames: ImageFrames = "single",
        audio: AudioWindow | None = None,
        audio_transform: Transform | None = None,
        bad_samples: str | BadSamplePolicy = BadSamplePolicy.SKIP,
        tmp_dir: str | None = None,
        backend: str | None = None,
    ):
        check_target(target, caption_mode)
        self.shards = expand_shards(shards)
        self.reader = ClipReader(
            sampler,
            transform,
            num_frames=num_frames,
            image_frames=image_frames,
            audio=audio,
            audio_transform=audio_transform,
            backend=backend,
        )
        self.target = target
        self.caption_mode = caption_mode
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.policy = BadSamplePolicy.parse(bad_samples)
        self.tmp_dir = tmp_dir
        self._epoch = SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def assigned_shards(self, epoch: int, worker: int = 0, num_workers: int = 1) -> list[tuple[int, str]]:
        """(global shard number, path) of the shards this rank's `worker` reads in `epoch`."""
        order = np.arange(len(self.shards))
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(order)
        mine = order[self.rank :: self.world_size][worker::num_workers]
        return [(int(i), self.shards[i]) for i in mine]

    def _raw_samples(self, epoch: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for shard_id, shard in self.assigned_shards(epoch, worker, num_workers):
            try:
                for position, raw in enumerate(tarfile_samples([{"url": shard}])):
                    yield shard_id, position, raw
            except (tarfile.TarError, OSError, ValueError) as e:
                raise BadSampleError(f"{shard}: unreadable shard ({e})") from None

    def _shuffled(self, raws: Iterator[tuple[int, int, dict[str, Any]]], epoch: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Reservoir-style buffer shuffle of the (still encoded) samples."""
        if self.shuffle_buffer <= 1:
            yield from raws
            return
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, epoch, self.rank, info.id if info is not None else 0])
        buffer: list = []
        for raw in raws:
            buffer.append(raw)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(int(rng.integers(len(buffer))))
        rng.shuffle(buffer)
        yield from buffer

    def _where(self, shard_id: int, raw: dict[str, Any]) -> str:
        return f"{self.shards[shard_id]}:{raw.get('__key__')}"

    def _decode(self, shard_id: int, position: int, raw: dict[str, Any], epoch: int) -> dict[str, Any]:
        where = self._where(shard_id, raw)
        try:
            meta = json.loads(raw["json"])
            data = raw[meta["media"]]
            record = MediaRecord(
                path=f"{where} ({meta['path']})",
                kind=meta["kind"],
                captions=tuple(meta["captions"]),
                label=meta["label"],
                start=meta["start"],
                end=meta["end"],
                extra=meta["extra"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise VideoReadError(where, Reason.CORRUPT, f"malformed shard sample: {e!r}") from None
        with _as_file(data, meta["media"], self.tmp_dir) as path:
            sample = read_sample(self.reader, path, record, (self.seed, epoch, shard_id, position), self.target, self.caption_mode)
        return {**sample, "index": meta["index"]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self._epoch.get()
        ready: dict[str, Any] | None = None  # held back one step, so later bad samples can ride on it
        pending: list[BadSample] = []
        for shard_id, position, raw in self._shuffled(self._raw_samples(epoch), epoch):
            try:
                sample = self._decode(shard_id, position, raw, epoch)
            except BAD_SAMPLE_ERRORS as e:
                failure = BadSample.from_error(self._where(shard_id, raw), e)
                if self.policy is BadSamplePolicy.RAISE:
                    raise BadSampleError(f"{failure.path}: {failure.reason}") from e
                (ready[BAD_SAMPLES_KEY] if ready is not None else pending).append(failure)
                continue
            sample[BAD_SAMPLES_KEY], pending = pending, []
            if ready is not None:
                yield ready
            ready = sample
        if ready is not None:
            yield ready
        elif pending:
            raise BadSampleError("no sample of this worker's shards could be read: " + "; ".join(f"{b.path}: {b.reason}" for b in pending))
