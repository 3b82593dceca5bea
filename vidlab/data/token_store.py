"""VIMPAC's video-token storage: the official LMDB layout, the per-crop/flip sets, and datasets over them.

- One LMDB folder per tokenization setting, named as the official extractor names it
  (`{model_type}_{dset}_{split}_fps{F}_hflip{0|1}_{short_side}{crop}{out}`, `store_name`); the official
  scripts use `model_type=dalle`, a vidlab VQ tokenizer writes `vq`.
- Key: the video path relative to the media root minus its extension (`video_key`); value: the bytes of
  `np.savez(tokens=int16[T, h, w], label=int16)` (`encode_entry` / `decode_entry`), readable by the official
  `load_npz_from_lmdb` and the other way round.
- Fine-tuning draws each training sample's tokens from one of several stores of the same videos
  (`view_names`, as the official `get_dataset`): short side {S, S * 160 // 128} x crops {top, center, bottom} x
  flips {0, 1} (no flip: 6 stores, SSv2); evaluation reads the 3 crops at short side S, unflipped; pre-training
  reads the one centre-crop store.
- `TokenStore` writes a whole batch of entries in one LMDB transaction, so a killed writer leaves every entry
  whole or absent; `TokenClipDataset` reads clips as the official `VideoTokenDataset` samples them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vidlab.data.datasets import SharedEpoch, sample_rng
from vidlab.data.video_tokens import CROP_OFFSET_FACTORS, TokenFrameSpec
from vidlab.errors import ConfigError, VidlabError

MAP_SIZE = 1024**4  # the official map size: address space only, the file grows with its content
EVAL_CROPS = tuple(CROP_OFFSET_FACTORS)  # top, center, bottom
ERRORS_FILE = "err_filepaths.txt"  # the official list of unreadable videos, one path per line


class TokenStoreError(VidlabError):
    """A token store that is missing, unreadable or lacks an entry."""


def store_name(model_type: str, dset: str, split: str, spec: TokenFrameSpec) -> str:
    """The official folder name of a store: dalle_ucf101_train_test_fps16_hflip0_128center128."""
    return (
        f"{model_type}_{dset}_{split}_fps{spec.fps:g}_hflip{int(spec.hflip)}_"
        f"{spec.short_side}{spec.crop}{spec.output_size}"
    )


def view_specs(fps: float, frame_size: int, train_aug: bool, flip: bool = True) -> list[TokenFrameSpec]:
    """The tokenization settings a split is read through (official `get_dataset`, in its order: flips, crops,
    short sides): training augmentation 2 short sides x 3 crops x 2 flips (x 1 without `flip`), else the 3
    crops at short side `frame_size` (3 spatial test views)."""
    flips = [False, True] if (train_aug and flip) else [False]
    sizes = [frame_size, frame_size * 160 // 128] if train_aug else [frame_size]
    return [
        TokenFrameSpec(fps=fps, short_side=size, output_size=frame_size, crop=crop, hflip=hflip)
        for hflip in flips
        for crop in EVAL_CROPS
        for size in sizes
    ]


def pretrain_spec(fps: float, frame_size: int) -> TokenFrameSpec:
    """Pre-training's one store (official `only_one_aug`): centre crop at short side = frame size, no flip."""
    return TokenFrameSpec(fps=fps, short_side=frame_size, output_size=frame_size, crop="center", hflip=False)


def video_key(relpath: str) -> str:
    """The official key of a video: its path relative to the media root without the extension."""
    return os.path.splitext(relpath)[0]


def encode_entry(tokens: np.ndarray, label: int) -> bytes:
    """The official value: np.savez(tokens=int16[T, h, w], label=int16)."""
    if tokens.ndim != 3:
        raise TokenStoreError(f"tokens must be (T, h, w), got shape {tokens.shape}")
    if tokens.size and (tokens.min() < np.iinfo(np.int16).min or tokens.max() > np.iinfo(np.int16).max):
        raise TokenStoreError("token ids do not fit int16 (the official storage type)")
    buffer = io.BytesIO()
    np.savez(buffer, tokens=tokens.astype(np.int16), label=np.array(label).astype(np.int16))
    return buffer.getvalue()


def decode_entry(value: bytes) -> tuple[np.ndarray, int]:
    """(int16 tokens (T, h, w), label) of a stored value."""
    with np.load(io.BytesIO(value)) as npz:
        return npz["tokens"], int(npz["label"])


# LMDB allows one handle per folder and process: every TokenStore of a folder shares it (a writer's serves reads).
_ENVS: dict[tuple[int, str], tuple[Any, bool]] = {}


def _env_key(path: Path) -> tuple[int, str]:
    return os.getpid(), str(path.resolve())


def _open_env(path: Path, writable: bool) -> Any:
    import lmdb

    key = _env_key(path)
    cached = _ENVS.get(key)
    if cached is not None and (cached[1] or not writable):
        return cached[0]
    if cached is not None:  # a read-only handle, and now a writer: reopen writable
        cached[0].close()
    try:
        if writable:
            path.mkdir(parents=True, exist_ok=True)
            env = lmdb.open(str(path), map_size=MAP_SIZE)
        else:
            env = lmdb.open(str(path), readonly=True, create=False, lock=False, readahead=False)
    except lmdb.Error as e:
        raise TokenStoreError(f"{path}: cannot open the token store ({e})") from None
    _ENVS[key] = (env, writable)
    return env


class TokenStore:
    """One LMDB folder of token entries. Opened lazily in each process (LMDB handles do not survive a fork),
    read-only unless `writable`; picklable as its path."""

    def __init__(self, path: str | Path, writable: bool = False):
        self.path = Path(path)
        self.writable = writable
        self._env: Any = None
        self._pid = -1
        if not writable and not (self.path / "data.mdb").is_file():
            raise TokenStoreError(f"{self.path}: no token store here (no data.mdb; tokenize the videos first)")

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "writable": self.writable, "_env": None, "_pid": -1}

    @property
    def env(self) -> Any:
        if self._env is None or self._pid != os.getpid():
            self._env, self._pid = _open_env(self.path, self.writable), os.getpid()
        return self._env

    def close(self) -> None:
        """Close the folder's LMDB handle in this process (every TokenStore of the folder shares it)."""
        if self._env is not None and self._pid == os.getpid():
            _ENVS.pop(_env_key(self.path), None)
            self._env.close()
        self._env = None

    def keys(self) -> list[str]:
        """Every key, in LMDB (byte) order."""
        with self.env.begin() as txn:
            return [key.decode("utf-8") for key in txn.cursor().iternext(keys=True, values=False)]

    def __len__(self) -> int:
        return int(self.env.stat()["entries"])

    def __contains__(self, key: str) -> bool:
        with self.env.begin() as txn:
            return txn.get(key.encode("utf-8")) is not None

    def get(self, key: str) -> tuple[np.ndarray, int]:
        with self.env.begin() as txn:
            value = txn.get(key.encode("utf-8"))
        if value is None:
            raise TokenStoreError(f"{self.path}: no entry {key!r}")
        return decode_entry(value)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, int]]:
        """(key, tokens, label) of every entry."""
        with self.env.begin() as txn:
            for key, value in txn.cursor():
                yield (key.decode("utf-8"), *decode_entry(value))

    def put_many(self, entries: Iterable[tuple[str, np.ndarray, int]]) -> int:
        """Write entries in ONE transaction: after a crash all of them are there or none. Returns the count."""
        if not self.writable:
            raise TokenStoreError(f"{self.path}: opened read-only")
        encoded = [(key.encode("utf-8"), encode_entry(tokens, label)) for key, tokens, label in entries]
        with self.env.begin(write=True) as txn:
            for key, value in encoded:
                txn.put(key, value)
        return len(encoded)

    def sync(self) -> None:
        self.env.sync(True)


# ---------------------------------------------------------------------------------------------------------
# Clips, as the official VideoTokenDataset samples them


def clip_start(video_len: int, clip_len: int, clip_index: int, num_clips: int, rng: np.random.Generator | None) -> int:
    """Official `get_start_end_idx`: a uniform random start (`rng`), or the clip_index-th of `num_clips` evenly
    spaced starts."""
    delta = max(video_len - clip_len, 0)
    if rng is not None:
        return int(rng.integers(0, delta + 1))
    return int(delta * clip_index / max(num_clips - 1, 1))


def cut_clip(tokens: np.ndarray, start: int, num_frames: int, stride: int, pad_id: int) -> torch.Tensor:
    """Frames start, start + stride, ... (num_frames of them), padded at the end with [PAD] frames."""
    clip = torch.from_numpy(tokens[start : start + num_frames * stride : stride].astype(np.int64))
    if len(clip) < num_frames:
        pad = torch.full((num_frames - len(clip), *tokens.shape[1:]), pad_id, dtype=torch.int64)
        clip = torch.cat([clip, pad])
    return clip


@dataclass(frozen=True)
class ClipSampling:
    num_frames: int  # tokens frames per clip
    stride: int = 1  # official sampled_frame_rate: lmdb fps / frame rate
    train_clips: int = 1  # random clips per training sample (pre-training: 2, the NCE pair)
    test_clips: int = 1  # evenly spaced clips per store at evaluation

    def __post_init__(self) -> None:
        if min(self.num_frames, self.stride, self.train_clips, self.test_clips) < 1:
            raise ConfigError(f"clip sampling sizes must be >= 1, got {self}")


class TokenClipDataset(Dataset):
    """Token clips of the videos of `stores` (the same keys in each; `keys`: which, default the first store's).

    train: one store drawn per sample (the crop/flip augmentation), `train_clips` random clips of it ->
    tokens (train_clips, T, h, w) (or (T, h, w) for one clip). eval: every store x `test_clips` evenly spaced
    clips -> (stores * test_clips, T, h, w). Randomness comes from (seed, epoch, index) only.
    Items: {"tokens": int64, "label": int, "index": int}.
    """

    def __init__(
        self,
        stores: Sequence[str | Path],
        sampling: ClipSampling,
        pad_id: int,
        train: bool,
        keys: Sequence[str] | None = None,
        seed: int = 0,
    ):
        if not stores:
            raise ConfigError("a token dataset needs at least one store")
        self.stores = [TokenStore(path) for path in stores]
        self.keys = list(keys) if keys is not None else self.stores[0].keys()
        self.sampling, self.pad_id, self.train, self.seed = sampling, pad_id, train, seed
        self._epoch = SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key, s = self.keys[index], self.sampling
        span = s.num_frames * s.stride
        if self.train:
            rng, _ = sample_rng(self.seed, self._epoch.get(), index)
            tokens, label = self.stores[int(rng.integers(len(self.stores)))].get(key)
            length = len(tokens) + s.stride - 1  # the official "hack to include the last frames"
            clips = [cut_clip(tokens, clip_start(length, span, 0, 1, rng), s.num_frames, s.stride, self.pad_id) for _ in range(s.train_clips)]
            out = clips[0] if s.train_clips == 1 else torch.stack(clips)
        else:
            views = []
            for store in self.stores:
                tokens, label = store.get(key)
                length = len(tokens) + s.stride - 1
                views += [cut_clip(tokens, clip_start(length, span, i, s.test_clips, None), s.num_frames, s.stride, self.pad_id) for i in range(s.test_clips)]
            out = torch.stack(views)
        return {"tokens": out, "label": label, "index": index}


def collate_tokens(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tokens": torch.stack([s["tokens"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
    }


__all__ = [
    "ClipSampling",
    "ERRORS_FILE",
    "TokenClipDataset",
    "TokenStore",
    "TokenStoreError",
    "collate_tokens",
    "cut_clip",
    "clip_start",
    "decode_entry",
    "encode_entry",
    "pretrain_spec",
    "store_name",
    "video_key",
    "view_specs",
]
