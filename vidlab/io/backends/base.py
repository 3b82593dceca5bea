"""The one interface every decoding backend implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

from vidlab.io.probe import VideoInfo

THREADS_ENV = "VIDLAB_DECODE_THREADS"


def default_threads() -> int:
    """Decoder threads per video: env `VIDLAB_DECODE_THREADS`, else 0 (the library picks, one per core).

    Set it to 1 when many DataLoader workers decode side by side, to avoid oversubscription.
    """
    return int(os.environ.get(THREADS_ENV, "0"))


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

    def handles(self, info: VideoInfo) -> bool:
        """Whether this backend can decode the file; the wrapper falls back to PyAV otherwise."""
        return True

    @abstractmethod
    def decode(self, path: str, info: VideoInfo, ranks: np.ndarray) -> torch.Tensor:
        """uint8 RGB frames `(len(ranks), H, W, 3)` at sorted unique frame ranks (int64)."""
