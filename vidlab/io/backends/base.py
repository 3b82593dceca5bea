"""The one interface every decoding backend implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

from vidlab.io.probe import VideoInfo
from vidlab.io.scale import scale_frames

THREADS_ENV = "VIDLAB_DECODE_THREADS"


def default_threads() -> int:
    """Decoder threads per video: env `VIDLAB_DECODE_THREADS`, else 1 in a DataLoader worker, else 0 (the
    library picks, one per core).

    Workers already decode side by side, one per core; a decoder that also starts a thread per core at
    every file it opens oversubscribes the machine (ShapesBench clips through 2 workers on 2 cores: 5.3
    against 8.1 ms a clip).
    """
    if THREADS_ENV in os.environ:
        return int(os.environ[THREADS_ENV])
    return 1 if torch.utils.data.get_worker_info() is not None else 0


class BackendCannotDecode(Exception):
    """Raised by an optional backend for a file its library cannot handle; the wrapper then decodes
    it with PyAV, which either succeeds (same frames) or raises the proper `VideoReadError`."""


class VideoBackend(ABC):
    """Decodes frames by presentation rank; `vidlab.io.read_frames` does validation, rotation and ordering.

    Backends receive sorted, unique, in-range ranks and return frames in that order, so each one
    only has to be good at decoding; everything that must behave the same across backends lives
    in the wrapper.
    """

    name: ClassVar[str]
    # Whether `decode` returns frames already turned by the display rotation.
    applies_rotation: ClassVar[bool] = False

    def __init__(self, num_threads: int | None = None):
        self.num_threads = num_threads

    def decoder_threads(self) -> int:
        """Threads for the next file: the constructor's, else `default_threads()` in the calling process
        (backends are built once and inherited by forked DataLoader workers)."""
        return default_threads() if self.num_threads is None else self.num_threads

    def handles(self, info: VideoInfo) -> bool:
        """Whether this backend can decode the file; the wrapper falls back to PyAV otherwise."""
        return True

    @abstractmethod
    def decode(self, path: str, info: VideoInfo, ranks: np.ndarray) -> torch.Tensor:
        """uint8 RGB frames `(len(ranks), H, W, 3)` at sorted unique frame ranks (int64)."""

    def decode_scaled(self, path: str, info: VideoInfo, ranks: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """As `decode`, frames scaled to `size` = (height, width) with FFmpeg's bicubic scaler. This default
        scales the decoded RGB frames; a backend that converts to RGB with FFmpeg scales in that one pass."""
        return scale_frames(self.decode(path, info, ranks), *size)
