"""Videos -> token stores (VIMPAC's video2token, `vidlab tokenize`): frames cut as the official extractor cuts
them (`vidlab.data.video_tokens`), decoded in worker processes, tokenized in this one by any frame tokenizer
(`tokenize(frames in [-1, 1]) -> codes`, `vidlab.models.vq_tokenizer`), written into the official LMDB layout
(`vidlab.data.token_store`).

- Resumable: a video already in a store is skipped; entries are committed `commit_every` videos at a time in
  one LMDB transaction each, so a killed run loses at most the uncommitted ones and never leaves half an entry.
- A video that cannot be read is reported (returned, and listed in the store's `err_filepaths.txt` as the
  official extractor lists them) without stopping the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vidlab.data.token_store import ERRORS_FILE, TokenStore, pretrain_spec, store_name, video_key, view_specs
from vidlab.data.video_tokens import TokenFrameSpec, normalize_frames, token_frames
from vidlab.data.workers import map_in_workers
from vidlab.errors import ConfigError, VidlabError
from vidlab.files import write_text_atomic

ARGS_FILE = "args.json"  # the settings a store was made with (the official extractor writes its args.json)
CHUNK = 64  # decode jobs handed to the workers at a time (bounds the frames held in memory)


@dataclass(frozen=True)
class TokenizeJob:
    path: str  # the video file
    key: str  # its store key
    label: int
    spec: TokenFrameSpec
    store: int  # index into the stores
    backend: str | None = None


@dataclass
class TokenizeSummary:
    written: int = 0
    skipped: int = 0  # already in their store (a resumed run)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def decode_job(job: TokenizeJob) -> tuple[TokenizeJob, torch.Tensor | None, str]:
    """A worker's part: the job's uint8 frames, or None and why they could not be read."""
    try:
        frames = token_frames(job.path, job.spec, backend=job.backend)
    except VidlabError as e:  # VideoReadError and friends: report, go on
        return job, None, str(e)
    if len(frames) == 0:
        return job, None, "no frames at this fps"
    return job, frames, ""


def record_key(path: str, media_root: str | os.PathLike[str]) -> str:
    """The official key: the path relative to the media root, minus its extension."""
    try:
        relative = os.path.relpath(path, media_root)
    except ValueError:  # another drive
        relative = os.path.basename(path)
    return video_key(relative if not relative.startswith("..") else os.path.basename(path))


def tokenize_videos(
    videos: Sequence[tuple[str, int]],
    media_root: str | os.PathLike[str],
    stores: dict[str | os.PathLike[str], TokenFrameSpec],
    tokenize: Callable[[torch.Tensor], torch.Tensor],
    *,
    workers: int = 0,
    commit_every: int = 16,
    progress: bool = True,
    backend: str | None = None,
    settings: dict | None = None,
) -> TokenizeSummary:
    """Tokenize `videos` ((path, label) pairs) into every store of `stores` (folder -> frame settings),
    skipping entries already there. `tokenize`: (N, 3, H, W) frames in [-1, 1] -> (N, h, w) codes."""
    summary = TokenizeSummary()
    opened = [TokenStore(path, writable=True) for path in stores]
    jobs: list[TokenizeJob] = []
    for index, (store, spec) in enumerate(zip(opened, stores.values())):
        write_text_atomic(store.path / ARGS_FILE, json.dumps({**asdict(spec), **(settings or {})}, indent=2) + "\n")
        done, queued = set(store.keys()), set()
        for path, label in videos:
            key = record_key(path, media_root)
            if key in done:
                summary.skipped += 1
            elif key not in queued:  # a video listed twice is tokenized once (official load_anno)
                queued.add(key)
                jobs.append(TokenizeJob(str(path), key, int(label), spec, index, backend))
    pending: list[list[tuple[str, np.ndarray, int]]] = [[] for _ in opened]
    failed: list[list[str]] = [[] for _ in opened]

    def flush(index: int) -> None:
        summary.written += opened[index].put_many(pending[index])
        pending[index].clear()

    bar = tqdm(total=len(jobs), desc="tokenizing", unit="video", disable=not progress)
    try:
        for start in range(0, len(jobs), CHUNK):
            chunk = jobs[start : start + CHUNK]
            results = (
                map_in_workers(decode_job, chunk, workers, stall_s=600.0, what="tokenize")
                if workers > 0
                else map(decode_job, chunk)
            )
            for job, frames, reason in results:
                bar.update(1)
                if frames is None:
                    summary.failed.append((job.path, reason))
                    failed[job.store].append(job.path)
                    continue
                codes = tokenize(normalize_frames(frames))
                pending[job.store].append((job.key, codes.cpu().numpy(), job.label))
                if len(pending[job.store]) >= commit_every:
                    flush(job.store)
        for index in range(len(opened)):
            flush(index)
    finally:
        bar.close()
        for index, store in enumerate(opened):
            if failed[index]:
                errors = store.path / ERRORS_FILE
                previous = errors.read_text().splitlines() if errors.is_file() else []
                write_text_atomic(errors, "\n".join(dict.fromkeys(previous + failed[index])) + "\n")
            store.close()
    return summary


VIEWS = ("pretrain", "train", "test")


def split_stores(
    out: str | os.PathLike[str], model_type: str, dset: str, split: str, views: str, fps: float, frame_size: int, flip: bool = True
) -> dict[Path, TokenFrameSpec]:
    """The stores (folder -> frame settings) a split is tokenized into: `pretrain` the one centre crop, `train`
    the crop/flip augmentation sets (12, or 6 without `flip`), `test` the 3 spatial test crops."""
    if views not in VIEWS:
        raise ConfigError(f"views must be one of {', '.join(VIEWS)}, got {views!r}")
    specs = [pretrain_spec(fps, frame_size)] if views == "pretrain" else view_specs(fps, frame_size, views == "train", flip)
    return {Path(out) / store_name(model_type, dset, split, spec): spec for spec in specs}


__all__ = ["ARGS_FILE", "VIEWS", "split_stores", "TokenizeJob", "TokenizeSummary", "decode_job", "record_key", "tokenize_videos"]
