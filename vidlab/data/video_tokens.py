"""The frames VIMPAC's video2token tokenizes, as its official extractor cuts them (`dataset_base.py`), read
through vidlab's own reader instead of an ffmpeg-python pipe.

The official chain is `ffmpeg -vf fps=F,scale=W:H[,crop=S:S:x:y][,hflip] -pix_fmt rgb24`:

- frames: those FFmpeg's `fps` filter keeps (`vidlab.io.sampling.FfmpegFps`);
- scale: the short side to `short_side`, the long one to int(long * short_side / short) (truncated), with
  FFmpeg's bicubic scaler in the conversion to RGB (`read_frames(..., size=...)`);
- crop (`top` / `center` / `bottom`, or `none` for the whole frame): an `output_size` square at
  x = int(f * (W - S) / 2), y = int(f * (H - S) / 2) with f = 0 / 1 / 2 on BOTH axes, so 'top' is the top-left
  and 'bottom' the bottom-right square;
- optional horizontal flip; then uint8 -> /255 -> (x - 0.5) / 0.5, i.e. [-1, 1] in (T, 3, H, W).

With the pyav backend the frames are FFmpeg's own (same swscale pass); other backends scale decoded RGB frames,
which equals it for RGB sources only. The resize follows the display size (rotation applied); the official one
reads the stored size, so it squashes quarter-turned videos (docs/deviations.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from vidlab.errors import ConfigError
from vidlab.io import probe, read_frames
from vidlab.io.sampling import FfmpegFps

CROP_OFFSET_FACTORS = {"top": 0, "center": 1, "bottom": 2}
CROP_TYPES = (*CROP_OFFSET_FACTORS, "none")


@dataclass(frozen=True)
class TokenFrameSpec:
    """The official extractor's options: --fps, --frame_shorter_size, --frame_out_size, --crop_type, --hflip."""

    fps: float = 2.0
    short_side: int = 128
    output_size: int = 128
    crop: str = "center"
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.crop not in CROP_TYPES:
            raise ConfigError(f"crop must be one of {', '.join(CROP_TYPES)}, got {self.crop!r}")
        if self.fps <= 0 or self.short_side < 1 or self.output_size < 1:
            raise ConfigError(f"fps, short_side and output_size must be positive, got {self}")
        if self.crop != "none" and self.output_size > self.short_side:
            raise ConfigError(f"output_size {self.output_size} is larger than the short side {self.short_side}")


def resize_dims(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side `short_side` and the long one truncated (official `_get_resize_dim`)."""
    if height >= width:
        return int(height * short_side / width), short_side
    return short_side, int(width * short_side / height)


def crop_origin(height: int, width: int, output_size: int, crop: str) -> tuple[int, int]:
    """(x, y) of the official crop's top-left corner in a (height, width) frame."""
    factor = CROP_OFFSET_FACTORS[crop]
    return int(factor * (width - output_size) / 2.0), int(factor * (height - output_size) / 2.0)


def token_frames(path: str | os.PathLike[str], spec: TokenFrameSpec, backend: str | None = None) -> torch.Tensor:
    """uint8 (T, h, w, 3) RGB frames of `path` cut as the official extractor cuts them."""
    info = probe(path)
    indices = FfmpegFps(spec.fps)(info.num_frames, info.fps)[0]
    height, width = resize_dims(info.height, info.width, spec.short_side)
    frames = read_frames(path, indices, backend=backend, size=(height, width))
    if spec.crop != "none":
        x, y = crop_origin(height, width, spec.output_size, spec.crop)
        frames = frames[:, y : y + spec.output_size, x : x + spec.output_size]
    if spec.hflip:
        frames = frames.flip(2)
    return frames.contiguous()


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in [-1, 1], with the official operations in their order."""
    return (frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


__all__ = ["TokenFrameSpec", "resize_dims", "crop_origin", "token_frames", "normalize_frames", "CROP_TYPES"]
