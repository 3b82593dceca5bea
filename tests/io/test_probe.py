"""`probe`: header facts without decoding, checked against how the files were made."""

from __future__ import annotations

import av
import pytest

from vidlab.io import VideoInfo, probe


def test_probe_mp4_fields(media):
    path = media.video(
        "probe.mp4",
        codec="h264",
        num_frames=30,
        fps=15,
        size=(64, 48),
        gop=10,
        bframes=2,
        audio=True,
        audio_sample_rate=22050,
    )
    info = probe(path)
    assert isinstance(info, VideoInfo)
    assert info.path == str(path)
    assert (info.num_frames, info.fps, info.duration) == (30, 15.0, pytest.approx(2.0))
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert info.has_audio and info.audio_sample_rate == 22050


def test_probe_does_not_decode(media):
    # Every frame of this file is random bytes: decoding any of them fails, reading headers does not.
    info = probe(media.corrupt("probe_garbage_frames.mp4", num_frames=12, fps=12))
    assert (info.num_frames, info.fps, info.width) == (12, 12.0, 64)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("probe.webm", {"codec": "vp9", "num_frames": 17, "fps": 25}),
        ("probe.mkv", {"codec": "h264", "num_frames": 17, "fps": 25, "bframes": 2}),
    ],
)
def test_probe_counts_frames_when_the_header_has_none(media, name, kwargs):
    path = media.video(name, **kwargs)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no frame count
    info = probe(path)
    assert info.num_frames == 17
    assert info.fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(17 / 25, abs=0.002)


def test_probe_vfr_reports_the_mean_rate(media):
    # Frame durations cycle 1, 2, 3 periods of 1/25 s: frame 20 starts 6 * 6 + 3 = 39 periods in.
    path = media.video("probe_vfr.mkv", codec="h264", num_frames=21, fps=25.0, vfr=True)
    info = probe(path)
    assert info.num_frames == 21
    assert info.fps == pytest.approx(20 / (39 / 25), rel=0.01)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_probe_rotation_and_display_size(media, rotation):
    info = probe(media.video(f"probe_rot{rotation}.mp4", num_frames=3, size=(64, 48), rotation=rotation))
    assert info.rotation == rotation
    assert (info.width, info.height) == ((48, 64) if rotation % 180 else (64, 48))


@pytest.mark.parametrize("suffix,codec", [("jpg", "mjpeg"), ("png", "png"), ("webp", "webp"), ("bmp", "bmp")])
def test_probe_still_image(media, suffix, codec):
    info = probe(media.image(f"probe_still.{suffix}", size=(40, 30)))
    assert (info.num_frames, info.width, info.height, info.codec) == (1, 40, 30, codec)
    assert info.is_still_image and not info.has_audio


def test_probe_gif(media):
    info = probe(media.gif("probe.gif", num_frames=7, fps=10, size=(40, 30)))
    assert (info.num_frames, info.fps, info.codec, info.width) == (7, 10.0, "gif", 40)
    assert info.duration == pytest.approx(0.7)
    assert not info.is_still_image


def test_probe_is_cached_per_file_version(media, tmp_path):
    path = tmp_path / "rewritten.mp4"
    path.write_bytes(media.video("probe_a.mp4", num_frames=5).read_bytes())
    assert probe(path).num_frames == 5
    path.write_bytes(media.video("probe_b.mp4", num_frames=9, size=(32, 24)).read_bytes())
    assert probe(path).num_frames == 9
