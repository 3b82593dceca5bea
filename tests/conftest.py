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


@pytest.fixture
def evl_dummy_config(tmp_path: Path):
    """`make(**sections)`: the path of a YAML config of the cheapest training run, EVL-tiny on random clips (no files,
    no downloads; 2 epochs x 2 steps, a fine-tuned backbone so that every weight is in its checkpoints) writing into
    tmp_path/runs; `sections` update top-level sections."""
    import yaml

    def make(**sections: dict) -> Path:
        config: dict = {
            "recipe": "evl",
            "name": "evl_dummy",
            "seed": 0,
            "output_dir": str(tmp_path / "runs"),
            "model": {"base": "evl-tiny", "backbone": {"layers": 2, "freeze": False}},
            "data": {"dummy": True, "dummy_samples": 8, "batch_size": 4, "num_workers": 0},
            "trainer": {"accelerator": "cpu", "max_epochs": 2, "log_every_n_steps": 1},
            "checkpoint": {"keep": 1},
            "logging": {"tensorboard": False, "progress_bar": False},
            "eval": {"after_train": False, "batch_size": 4, "spatial_views": 1, "temporal_views": 1},
        }
        for key, values in sections.items():
            config[key] = {**config.get(key, {}), **values}
        path = tmp_path / "evl_dummy.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make
