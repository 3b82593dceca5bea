"""`read_frames` / `read_frames_at`: frames as uint8 `(T, H, W, 3)` tensors, the same from every backend.

The wrapper owns everything that must not differ between backends: validation and error
reasons, de-duplication and sorting of the request, rotation, and restoring request order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from vidlab.io.backends import (
    DEFAULT_BACKEND,
    VideoBackend,
    get_backend,
)
from vidlab.io.backends.base import BackendCannotDecode
from vidlab.io.errors import Reason, VideoReadError
from vidlab.io.index import frame_index
from vidlab.io.probe import VideoInfo, probe

logger = logging.getLogger(__name__)

BACKEND_ENV = "VIDLAB_VIDEO_BACKEND"

IndexLike = Sequence[int] | np.ndarray | torch.Tensor
TimesLike = Sequence[float] | np.ndarray | torch.Tensor


def _resolve_backend(name: str | None, info: VideoInfo) -> VideoBackend:
    """The named backend; a missing one raises BackendUnavailableError, a setup error, not a bad file."""
    backend = get_backend(name or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND)
    return backend if backend.handles(info) else get_backend(DEFAULT_BACKEND)


def _as_int_array(path: str, indices: IndexLike) -> np.ndarray:
    array = indices.numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise VideoReadError(
            path, Reason.OUT_OF_RANGE, f"frame indices must be a 1-D integer sequence, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64, copy=False)


def _decode_ranks(
    path: str, info: VideoInfo, ranks: np.ndarray, backend: str | None, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Frames at in-range `ranks` (any order, duplicates allowed), rotated, in request order."""
    if ranks.size == 0:
        height, width = size if size is not None else (info.height, info.width)
        return torch.empty((0, height, width, 3), dtype=torch.uint8)
    unique, inverse = np.unique(ranks, return_inverse=True)
    decoder = _resolve_backend(backend, info)
    # the decoder scales stored frames: a quarter-turned video is turned after scaling to the swapped size
    stored_size = size[::-1] if size is not None and info.rotation in (90, 270) else size

    def decode(decoder: VideoBackend) -> torch.Tensor:
        if stored_size is None:
            return decoder.decode(path, info, unique)
        return decoder.decode_scaled(path, info, unique, stored_size)

    try:
        frames = decode(decoder)
    except BackendCannotDecode as exc:
        logger.debug("%s: backend %s failed (%s); decoding with %s", path, decoder.name, exc, DEFAULT_BACKEND)
        decoder = get_backend(DEFAULT_BACKEND)
        frames = decode(decoder)
    if info.rotation and not decoder.applies_rotation:
        frames = torch.rot90(frames, k=info.rotation // 90, dims=(1, 2))
    if len(unique) == len(ranks) and np.array_equal(unique, ranks):
        return frames.contiguous()
    return frames[torch.from_numpy(inverse.reshape(-1))]


def read_frames(
    path: str | os.PathLike[str],
    indices: IndexLike,
    *,
    backend: str | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """uint8 RGB frames `(len(indices), H, W, 3)` at presentation-order `indices`, in request order.

    Index `i` is the frame with the i-th smallest presentation timestamp. Unsorted and repeated
    indices are fine; each distinct frame is decoded once. `backend` (else env
    `VIDLAB_VIDEO_BACKEND`, else "pyav") picks the decoder. `size` = (height, width) of the displayed
    frames scales them with FFmpeg's bicubic scaler; the pyav backend does it while converting to RGB, for a
    video without display rotation exactly as `ffmpeg -vf scale=W:H -pix_fmt rgb24` does (a rotated video is
    scaled before it is turned, the CLI turns first; other backends scale the RGB frames after decoding).
    """
    path = os.fspath(path)
    info = probe(path)
    ranks = _as_int_array(path, indices)
    invalid = (ranks < 0) | (ranks >= info.num_frames)
    if invalid.any():
        bad = int(ranks[invalid][0])
        raise VideoReadError(
            path, Reason.OUT_OF_RANGE, f"frame {bad} requested, the video has {info.num_frames} frames"
        )
    return _decode_ranks(path, info, ranks, backend, size)


def read_frames_at(
    path: str | os.PathLike[str], timestamps_s: TimesLike, *, backend: str | None = None
) -> torch.Tensor:
    """uint8 RGB frames displayed at each time in `timestamps_s` (seconds from the first frame).

    The frame displayed at `t` is the last one whose presentation time is <= `t`; valid times
    are 0 <= t <= duration.
    """
    path = os.fspath(path)
    info = probe(path)
    if isinstance(timestamps_s, torch.Tensor):
        timestamps_s = timestamps_s.numpy()
    times = np.asarray(timestamps_s, dtype=np.float64).reshape(-1)
    invalid = ~(np.isfinite(times) & (times >= 0) & (times <= info.duration + 1e-6))
    if invalid.any():
        bad = float(times[invalid][0])
        raise VideoReadError(
            path, Reason.OUT_OF_RANGE, f"time {bad:.6g} s requested, the video lasts {info.duration:.6g} s"
        )
    frame_times = frame_index(path).frame_times()
    # A tolerance of 1 microsecond absorbs float round-off in times computed by callers (k / fps).
    ranks = np.searchsorted(frame_times, times + 1e-6, side="right") - 1
    return _decode_ranks(path, info, np.clip(ranks, 0, None).astype(np.int64), backend)
