"""The reference side of the decode tests: locating ffmpeg, the CLI decoder, and the media makers."""

from __future__ import annotations

import os
import stat
import sys

import av
import pytest

from vidlab.io import ffmpeg as ffmpeg_module
from vidlab.io.ffmpeg import FFmpegError, cli_read_frames, ffmpeg_executable


def test_ffmpeg_executable_prefers_env_then_path_then_imageio(monkeypatch, tmp_path):
    fake = tmp_path / "my-ffmpeg"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("VIDLAB_FFMPEG", str(fake))
    assert ffmpeg_executable() == str(fake)

    monkeypatch.setenv("VIDLAB_FFMPEG", str(tmp_path / "missing"))
    with pytest.raises(FFmpegError, match="VIDLAB_FFMPEG"):
        ffmpeg_executable()

    monkeypatch.delenv("VIDLAB_FFMPEG")
    monkeypatch.setattr(ffmpeg_module.shutil, "which", lambda name: None)
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the fallback needs imageio-ffmpeg")
    assert ffmpeg_executable() == imageio_ffmpeg.get_ffmpeg_exe()


def test_ffmpeg_executable_missing_everywhere_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("VIDLAB_FFMPEG", raising=False)
    monkeypatch.setattr(ffmpeg_module.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes the import fail
    with pytest.raises(FFmpegError, match="no ffmpeg executable"):
        ffmpeg_executable()


def test_made_video_has_the_requested_shape_rate_and_gops(media):
    path = media.video("made_gop5.mp4", codec="h264", num_frames=20, fps=10, size=(40, 30), gop=5, bframes=0)
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        keyframes = [packet.is_keyframe for packet in container.demux(stream) if packet.size]
        assert (stream.codec_context.width, stream.codec_context.height) == (40, 30)
        assert stream.average_rate == 10
    assert keyframes == [i % 5 == 0 for i in range(20)]


def test_made_frames_are_distinct_so_off_by_one_is_caught(media):
    frames = cli_read_frames(media.video("distinct.mp4", num_frames=30)).int()
    # Largest pixel change between consecutive frames, far above the decode-test tolerance (2).
    step = (frames[1:] - frames[:-1]).abs().amax(dim=(1, 2, 3))
    assert step.min().item() >= 50


def test_cli_reads_a_span_from_a_start_time(media):
    path = media.video("gop5_b.mp4", codec="h264", num_frames=20, fps=10, gop=5, bframes=2)
    everything = cli_read_frames(path)
    span = cli_read_frames(path, start_s=1.0, num_frames=4, threads=1)
    assert len(everything) == 20
    assert (span == everything[10:14]).all()


def test_made_audio_has_one_channel_per_frequency(media):
    path = media.audio_only("two_tones.wav", duration=0.5, sample_rate=8000, freqs=(300.0, 900.0))
    with av.open(os.fspath(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == 2
        assert stream.codec_context.sample_rate == 8000
