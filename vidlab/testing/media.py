"""Makers of small media files for tests and benchmarks, built with the ffmpeg CLI.

Content comes from FFmpeg's `testsrc2` pattern (moving colour bars plus a running clock), so
consecutive frames differ and an off-by-one in decoding shows up as a pixel mismatch.
Each maker writes to `path` (its suffix picks the container) and returns it as a `Path`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vidlab.io.ffmpeg import FFmpegError, ffmpeg_encoders, ffmpeg_version, run_ffmpeg

# Codec short name -> encoder names to try, in order of preference.
VIDEO_ENCODERS: dict[str, tuple[str, ...]] = {
    "h264": ("libx264",),
    "hevc": ("libx265",),
    "vp9": ("libvpx-vp9",),
    "vp8": ("libvpx",),
    "av1": ("libaom-av1", "libsvtav1", "librav1e"),
    "mpeg4": ("mpeg4",),
    "mjpeg": ("mjpeg",),
    "ffv1": ("ffv1",),
}

# Audio codec per container when the caller does not pick one.
_DEFAULT_AUDIO_CODEC = {".webm": "libopus", ".avi": "pcm_s16le", ".wav": "pcm_s16le", ".mkv": "flac", ".mov": "aac"}


def video_encoder(codec: str) -> str | None:
    """The ffmpeg encoder used for `codec`, or None when this ffmpeg has none of its encoders."""
    if codec not in VIDEO_ENCODERS:
        raise ValueError(f"unknown codec {codec!r}; known: {sorted(VIDEO_ENCODERS)}")
    available = ffmpeg_encoders()
    return next((name for name in VIDEO_ENCODERS[codec] if name in available), None)


def _vfr_pts_expr(fps: float) -> str:
    """setpts expression giving frame durations cycling 1, 2, 3 periods: pts(n) = (6*(n//3) + [0,1,3][n%3]) / fps."""
    return f"setpts=(6*floor(N/3)+eq(mod(N\\,3)\\,1)+3*eq(mod(N\\,3)\\,2))/({fps}*TB)"


def _encoder_args(encoder: str, *, gop: int | None, bframes: int | None, quality: int | None) -> list[str]:
    args = ["-c:v", encoder]
    if gop is not None:
        args += ["-g", str(gop)]
        if encoder == "libx264":
            args += ["-sc_threshold", "0"]  # no scene-cut keyframes: GOPs are exactly `gop` long
        if encoder == "libx265":
            args += ["-x265-params", f"scenecut=0:keyint={gop}:min-keyint={gop}:log-level=error"]
    if bframes is not None:
        args += ["-bf", str(bframes)]
    if encoder == "libaom-av1":
        args += ["-cpu-used", "8", "-row-mt", "1"]
    if encoder == "libvpx-vp9":
        args += ["-deadline", "realtime", "-cpu-used", "8"]
    if encoder == "libsvtav1":
        args += ["-preset", "12"]
    if quality is not None:
        args += ["-q:v" if encoder in ("mpeg4", "mjpeg") else "-crf", str(quality)]
    return args


def _audio_source(duration: float, sample_rate: int, freqs: Sequence[float]) -> list[str]:
    """lavfi input: one sine per channel at the given frequencies, amplitude 0.5."""
    channels = "|".join(f"0.5*sin(2*PI*{f}*t)" for f in freqs)
    return ["-f", "lavfi", "-i", f"aevalsrc={channels}:s={sample_rate}:d={duration}"]


def make_video(
    path: str | os.PathLike[str],
    *,
    codec: str = "h264",
    num_frames: int = 30,
    fps: float = 25.0,
    size: tuple[int, int] = (64, 48),
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    bframes: int | None = None,
    audio: bool = False,
    audio_codec: str | None = None,
    audio_sample_rate: int = 16000,
    audio_freqs: Sequence[float] = (440.0,),
    rotation: int = 0,
    vfr: bool = False,
    noise: int = 0,
    quality: int | None = None,
    faststart: bool = False,
) -> Path:
    """Encode a `testsrc2` clip of `num_frames` frames at `size=(width, height)` to `path`.

    `gop` fixes the keyframe interval, `bframes` the B-frame count; `rotation` (counter-clockwise
    degrees, FFmpeg's display-matrix convention) is stored as metadata only (mp4/mov);
    `vfr` makes frame durations cycle 1, 2, 3 frame periods; `noise` (0-100) adds temporal noise,
    for benchmark clips that cost as much to decode as real footage; `audio` adds one sine per
    entry of `audio_freqs` (one channel each, amplitude 0.5).
    """
    path = Path(path)
    encoder = video_encoder(codec)
    if encoder is None:
        raise FFmpegError(f"this ffmpeg has no encoder for {codec} (tried {', '.join(VIDEO_ENCODERS[codec])})")
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    width, height = size
    # Stream length in frame periods: durations cycle 1, 2, 3 under `vfr`.
    periods = 6 * (num_frames // 3) + (0, 1, 3)[num_frames % 3] if vfr else num_frames
    duration = periods / fps
    # trim (not -frames:v, which ends the whole output and would cut the audio short)
    filters = [f"trim=end_frame={num_frames}", f"scale={width}:{height}"]
    if noise:
        filters.append(f"noise=alls={noise}:allf=t")
    if vfr:
        filters.append(_vfr_pts_expr(fps))
    # Build the even-sized pattern, then scale: testsrc2 itself only makes even sizes.
    args = ["-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={fps}"]
    if audio:
        args += _audio_source(duration, audio_sample_rate, audio_freqs)
    args += ["-map", "0:v"] + (["-map", "1:a"] if audio else [])
    args += ["-vf", ",".join(filters), "-pix_fmt", pix_fmt]
    args += _encoder_args(encoder, gop=gop, bframes=bframes, quality=quality)
    if vfr:
        args += ["-fps_mode", "vfr"]
    if audio:
        args += ["-c:a", audio_codec or _DEFAULT_AUDIO_CODEC.get(path.suffix.lower(), "aac")]
    if faststart:
        args += ["-movflags", "+faststart"]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if rotation % 360:
            with tempfile.TemporaryDirectory() as tmp:
                plain = Path(tmp) / f"plain{path.suffix}"
                run_ffmpeg([*args, str(plain)], what=f"encoding {path.name}")
                _remux_rotated(plain, path, rotation % 360, faststart=faststart)
        else:
            run_ffmpeg([*args, str(path)], what=f"encoding {path.name}")
    except FFmpegError:
        path.unlink(missing_ok=True)
        raise
    return path


def _remux_rotated(src: Path, dst: Path, rotation: int, *, faststart: bool) -> None:
    """Stream-copy `src` to `dst` with a display matrix of `rotation` degrees counter-clockwise.

    ffmpeg >= 6 takes the angle as the input option -display_rotation; 5.x only honours the
    legacy `rotate` tag, and only when stream-copying (an encode drops it).
    """
    if ffmpeg_version() >= 6:
        args = ["-display_rotation", str(rotation), "-i", str(src)]
    else:
        args = ["-i", str(src), "-metadata:s:v:0", f"rotate={rotation}"]
    extra = ["-movflags", "+faststart"] if faststart else []
    run_ffmpeg(
        ["-y", "-loglevel", "error", *args, "-map", "0", "-c", "copy", *extra, str(dst)], what=f"rotating {dst.name}"
    )


def make_image(path: str | os.PathLike[str], *, size: tuple[int, int] = (64, 48), frame: int = 7) -> Path:
    """A still image (format from the suffix: jpg, png, webp, bmp) of `testsrc2` frame `frame`."""
    path = Path(path)
    width, height = size
    args = ["-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"]
    args += ["-vf", f"select=eq(n\\,{frame}),scale={width}:{height}", "-frames:v", "1", "-update", "1", str(path)]
    run_ffmpeg(args, what=f"writing {path.name}")
    return path


def make_gif(
    path: str | os.PathLike[str], *, num_frames: int = 10, fps: float = 10.0, size: tuple[int, int] = (64, 48)
) -> Path:
    """An animated GIF of `num_frames` frames of `testsrc2`."""
    path = Path(path)
    width, height = size
    args = ["-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={fps}"]
    args += ["-vf", f"scale={width}:{height}", "-frames:v", str(num_frames), str(path)]
    run_ffmpeg(args, what=f"writing {path.name}")
    return path


def make_audio_only(
    path: str | os.PathLike[str],
    *,
    duration: float = 1.0,
    sample_rate: int = 16000,
    freqs: Sequence[float] = (440.0,),
    codec: str | None = None,
) -> Path:
    """An audio-only file: one sine channel per entry of `freqs` (amplitude 0.5)."""
    path = Path(path)
    args = ["-y", "-loglevel", "error", *_audio_source(duration, sample_rate, freqs)]
    args += ["-c:a", codec or _DEFAULT_AUDIO_CODEC.get(path.suffix.lower(), "aac"), str(path)]
    run_ffmpeg(args, what=f"writing {path.name}")
    return path


def make_text_file(path: str | os.PathLike[str], text: str = "this is not a video\n") -> Path:
    """A plain text file, whatever its suffix says."""
    path = Path(path)
    path.write_text(text)
    return path


def make_empty(path: str | os.PathLike[str]) -> Path:
    """A 0-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def _mp4_payload_offset(data: bytes) -> int:
    """Byte offset of the first `mdat` box's payload in an ISO-BMFF file (after all header boxes)."""
    offset = 0
    while offset + 8 <= len(data):
        box_size = int.from_bytes(data[offset : offset + 4], "big")
        box_type = data[offset + 4 : offset + 8]
        if box_type == b"mdat":
            return offset + 8
        if box_size < 8:
            break
        offset += box_size
    raise ValueError("no mdat box found")


def make_corrupt(path: str | os.PathLike[str], *, seed: int = 0, **video_kwargs) -> Path:
    """An mp4 whose header (ftyp + moov, written first) is valid but whose frame data is random bytes."""
    path = Path(path)
    make_video(path, faststart=True, **video_kwargs)
    data = path.read_bytes()
    payload_at = _mp4_payload_offset(data)
    garbage = np.random.default_rng(seed).integers(0, 256, len(data) - payload_at, dtype=np.uint8).tobytes()
    path.write_bytes(data[:payload_at] + garbage)
    return path


def make_truncated(path: str | os.PathLike[str], *, keep_fraction: float = 0.5, **video_kwargs) -> Path:
    """A video cut after `keep_fraction` of its bytes, as an interrupted download leaves it.

    mp4/mov files are written with the header first, so the frame table survives the cut and
    promises frames whose data is gone.
    """
    path = Path(path)
    if path.suffix.lower() in (".mp4", ".mov"):
        video_kwargs.setdefault("faststart", True)
    make_video(path, **video_kwargs)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def copy_as(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy a file under another name (e.g. to give a video a misleading suffix)."""
    return Path(shutil.copyfile(src, dst))


class MediaCache:
    """Makes each named test file once (per session) in `root`; later requests reuse it.

    `cache.video("h264_bf.mp4", bframes=3)` calls `make_video(root / name, bframes=3)` the first
    time and returns the same path afterwards; the name must be unique per set of arguments.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._made: dict[str, tuple[str, dict]] = {}

    def _get(self, maker, name: str, kwargs: dict) -> Path:
        path = self.root / name
        recipe = (maker.__name__, kwargs)
        if name in self._made:
            if self._made[name] != recipe:
                raise ValueError(f"{name} was already made with {self._made[name]}, not {recipe}")
            return path
        maker(path, **kwargs)
        self._made[name] = recipe
        return path

    def video(self, name: str, **kwargs) -> Path:
        return self._get(make_video, name, kwargs)

    def image(self, name: str, **kwargs) -> Path:
        return self._get(make_image, name, kwargs)

    def gif(self, name: str, **kwargs) -> Path:
        return self._get(make_gif, name, kwargs)

    def audio_only(self, name: str, **kwargs) -> Path:
        return self._get(make_audio_only, name, kwargs)

    def corrupt(self, name: str, **kwargs) -> Path:
        return self._get(make_corrupt, name, kwargs)

    def truncated(self, name: str, **kwargs) -> Path:
        return self._get(make_truncated, name, kwargs)
