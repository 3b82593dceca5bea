"""VIMPAC video2token frames: the `ffmpeg_fps` sampler keeps the frames FFmpeg's `fps` filter keeps, and the whole
cut (fps, short-side scale, top / centre / bottom crop, flip) equals the official ffmpeg filter chain pixel for
pixel, for YUV and RGB sources; options are checked with one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidlab.data.video_tokens import TokenFrameSpec, crop_origin, normalize_frames, resize_dims, token_frames
from vidlab.errors import ConfigError
from vidlab.io import probe, read_frames
from vidlab.io.ffmpeg import run_ffmpeg
from vidlab.io.sampling import make_sampler


def official_chain(path, spec: TokenFrameSpec) -> torch.Tensor:
    """What the official extractor's ffmpeg-python pipe returns: -vf fps,scale[,crop][,hflip] -pix_fmt rgb24."""
    info = probe(path)
    height, width = resize_dims(info.height, info.width, spec.short_side)
    chain = f"fps=fps={spec.fps},scale={width}:{height}"
    if spec.crop != "none":
        x, y = crop_origin(height, width, spec.output_size, spec.crop)
        chain += f",crop={spec.output_size}:{spec.output_size}:{x}:{y}"
        height = width = spec.output_size
    if spec.hflip:
        chain += ",hflip"
    raw = run_ffmpeg(["-loglevel", "error", "-i", str(path), "-vf", chain, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
    return torch.from_numpy(np.frombuffer(raw.stdout, np.uint8).reshape(-1, height, width, 3).copy())


@pytest.mark.parametrize("output_fps", [4, 3, 2.5, 7, 13, 0.5])
def test_ffmpeg_fps_sampler_keeps_the_frames_of_the_fps_filter(media, output_fps):
    path = media.video("fps_lossless.mkv", codec="ffv1", pix_fmt="bgr0", num_frames=20, fps=10.0)
    every = read_frames(path, range(20))
    filtered = official_chain(path, TokenFrameSpec(fps=output_fps, short_side=48, output_size=48, crop="none"))
    indices = make_sampler("ffmpeg_fps", output_fps=output_fps)(20, 10.0)[0]
    assert len(indices) == len(filtered)
    kept = [next(i for i in range(20) if torch.equal(every[i], frame)) for frame in filtered]
    assert kept == indices.tolist()


@pytest.mark.parametrize("source", ["h264_yuv420p", "ffv1_bgr0"])
@pytest.mark.parametrize(("crop", "hflip"), [("center", False), ("top", True), ("bottom", False), ("none", False)])
def test_token_frames_equal_the_official_ffmpeg_chain(media, source, crop, hflip):
    codec, pix_fmt = source.split("_")
    path = media.video(f"tokens_{source}.mkv", codec=codec, pix_fmt=pix_fmt, num_frames=23, fps=12.0, size=(72, 50))
    spec = TokenFrameSpec(fps=5, short_side=40, output_size=32, crop=crop, hflip=hflip)
    frames = token_frames(path, spec)
    assert torch.equal(frames, official_chain(path, spec))
    normalized = normalize_frames(frames)
    assert normalized.shape == (frames.shape[0], 3, *frames.shape[1:3]) and normalized.min() >= -1


def test_scaled_reading_of_a_rotated_video_has_the_displayed_orientation(media):
    path = media.video("tokens_rot90.mp4", num_frames=4, size=(64, 48), rotation=90)
    full = read_frames(path, range(4))
    scaled = read_frames(path, range(4), size=(40, 30))
    assert full.shape == (4, 64, 48, 3) and scaled.shape == (4, 40, 30, 3)
    reference = torch.nn.functional.interpolate(full.permute(0, 3, 1, 2).float(), size=(40, 30), mode="area")
    wrong_way = torch.nn.functional.interpolate(full.flip(1, 2).permute(0, 3, 1, 2).float(), size=(40, 30), mode="area")
    error = (scaled.permute(0, 3, 1, 2).float() - reference).abs().mean()
    assert error < (scaled.permute(0, 3, 1, 2).float() - wrong_way).abs().mean() / 2


def test_crop_rule_applies_the_offset_factor_to_both_axes():
    assert resize_dims(48, 64, 40) == (40, 53) and resize_dims(64, 48, 40) == (53, 40)
    assert [crop_origin(40, 53, 32, c) for c in ("top", "center", "bottom")] == [(0, 0), (10, 4), (21, 8)]


@pytest.mark.parametrize(
    ("options", "message"),
    [({"crop": "left"}, "crop must be one of"), ({"fps": 0}, "must be positive"), ({"output_size": 200}, "larger")],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message) as failure:
        TokenFrameSpec(**options)
    assert "\n" not in str(failure.value)
