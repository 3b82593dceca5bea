"""Backend on torchcodec (Meta's FFmpeg-based decoder; uses the system's FFmpeg shared libraries)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torchcodec.decoders import VideoDecoder

from vidlab.io.backends.base import BackendCannotDecode, VideoBackend
from vidlab.io.probe import VideoInfo


class TorchCodecBackend(VideoBackend):
    """`seek_mode='exact'` scans the file, so indices are presentation ranks as in PyAV.

    torchcodec turns frames by the display matrix itself. AVI goes to PyAV: with B-frames,
    torchcodec's random access returns wrong frames or fails ("no more frames left to decode",
    torchcodec #905), measured with H.264 and MPEG-4 in AVI.
    """

    name: ClassVar[str] = "torchcodec"
    applies_rotation: ClassVar[bool] = True

    def handles(self, info: VideoInfo) -> bool:
        return info.container != "avi"

    def decode(self, path: str, info: VideoInfo, ranks: np.ndarray) -> torch.Tensor:
        try:
            decoder = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=self.decoder_threads(), seek_mode="exact")
            if ranks[-1] >= len(decoder):
                raise BackendCannotDecode(f"torchcodec sees {len(decoder)} frames")
            return decoder.get_frames_at(torch.from_numpy(ranks)).data
        except (RuntimeError, ValueError, IndexError) as exc:
            raise BackendCannotDecode(str(exc)) from exc
