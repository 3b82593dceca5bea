"""Tiny media shared by the dataset, quality and shard tests (built once per module that asks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vidlab.testing.media import make_empty, make_image, make_text_file, make_truncated, make_video

SIZE = (64, 48)  # width, height
GOOD_FRAMES = 20


@dataclass
class MediaFolder:
    root: Path
    good: list[Path]  # h264 mp4, GOOD_FRAMES frames each
    short: Path  # 3 frames: shorter than the clips the tests ask for
    image: Path
    bad: dict[str, Path]  # expected reason -> file

    @property
    def good_paths(self) -> list[str]:
        return [str(p) for p in self.good]


def build_media_folder(root: Path, num_good: int = 3) -> MediaFolder:
    root.mkdir(parents=True, exist_ok=True)
    good = [make_video(root / f"good{i}.mp4", num_frames=GOOD_FRAMES, fps=10, size=SIZE) for i in range(num_good)]
    short = make_video(root / "short.mp4", num_frames=3, fps=10, size=SIZE)
    image = make_image(root / "still.jpg", size=SIZE)
    bad = {
        "missing": root / "missing.mp4",
        "empty": make_empty(root / "empty.mp4"),
        # an interrupted download: the header promises frames whose data is gone
        "corrupt": make_truncated(root / "corrupt.mp4", num_frames=10, size=SIZE, keep_fraction=0.5),
        "not a video": make_text_file(root / "notes.mp4"),
    }
    return MediaFolder(root, good, short, image, bad)


def to_float(clip: torch.Tensor) -> torch.Tensor:
    """The simplest transform: uint8 (T,C,H,W) -> float in [0, 1]."""
    return clip.float() / 255


def noisy(clip: torch.Tensor) -> torch.Tensor:
    """A transform drawing from torch's global RNG, as random augmentations do."""
    return clip.float() / 255 + torch.rand(())
