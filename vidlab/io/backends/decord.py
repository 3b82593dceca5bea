"""Backend on decord2 (imported as `decord`; bundles its own FFmpeg)."""

from __future__ import annotations

from typing import ClassVar

import decord
import numpy as np
import torch

from vidlab.io.backends.base import BackendCannotDecode, VideoBackend
from vidlab.io.probe import VideoInfo


class DecordBackend(VideoBackend):
    """decord indexes frames by presentation order like PyAV.

    Measured failures, which go to PyAV instead: rotated videos (decord sizes its output for the
    turned frame but returns the stored one), still images ("failed to measure duration"), and
    AVI (random access returns wrong frames, even without B-frames).
    """

    name: ClassVar[str] = "decord"

    def handles(self, info: VideoInfo) -> bool:
        return info.rotation == 0 and not info.is_still_image and info.container != "avi"

    def decode(self, path: str, info: VideoInfo, ranks: np.ndarray) -> torch.Tensor:
        try:
            reader = decord.VideoReader(path, num_threads=self.decoder_threads())
            if ranks[-1] >= len(reader):
                raise BackendCannotDecode(f"decord sees {len(reader)} frames")
            return torch.from_numpy(reader.get_batch(ranks.tolist()).asnumpy())
        except decord.DECORDError as exc:
            raise BackendCannotDecode(str(exc)) from exc
