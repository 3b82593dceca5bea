"""Shared pytest fixtures. Media files are made once per session, in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidlab.data.shapesbench import generate
from vidlab.io.ffmpeg import FFmpegError, ffmpeg_executable
from vidlab.testing.media import MediaCache, video_encoder


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> MediaCache:
    """Maker of small test media (`media.video("x.mp4", ...)`), each file made once per session."""
    try:
        ffmpeg_executable()
    except FFmpegError as exc:
        pytest.skip(f"media fixtures need the ffmpeg CLI: {exc}")
    return MediaCache(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def require_encoder():
    """`require_encoder("av1")` skips the test when this ffmpeg cannot encode that codec."""

    def check(codec: str) -> None:
        if video_encoder(codec) is None:
            pytest.skip(f"this ffmpeg has no {codec} encoder")

    return check


@pytest.fixture(scope="session")
def shapesbench_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of ShapesBench `tiny` (seed 0): 40 clips, 16 images, every annotation file; made once per session."""
    return generate(tmp_path_factory.mktemp("shapesbench") / "tiny", "tiny", seed=0, progress=False)
