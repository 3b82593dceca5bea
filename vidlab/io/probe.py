"""`probe`: what a video is (frames, rate, size, rotation, codec, audio) from headers, without decoding."""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av

from vidlab.io.container import first_video_stream, open_container
from vidlab.io.filecache import cached_per_file
from vidlab.io.index import frame_index


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a video; `width`/`height` are the display size, i.e. after `rotation`.

    `rotation` is the counter-clockwise angle (0/90/180/270) by which stored frames are turned for
    display (FFmpeg's display-matrix convention); decoded frames come out already turned.
    """

    path: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    rotation: int
    codec: str
    pix_fmt: str
    has_audio: bool
    audio_sample_rate: int | None
    container: str = ""  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "gif"

    @property
    def is_still_image(self) -> bool:
        """A jpg/png/webp/bmp file (read as a 1-frame video)."""
        return self.container == "image2" or self.container.endswith("_pipe")


@cached_per_file(budget=16384)  # a VideoInfo is a few hundred bytes
def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read `VideoInfo` from container and stream headers.

    The header frame count is used when present and consistent with duration x frame rate;
    otherwise (Matroska/WebM, GIF, images, damaged headers) frames are counted by demuxing,
    still without decoding.
    """
    with open_container(path) as container:
        stream = first_video_stream(container, path)
        codec_context = stream.codec_context
        header_frames = stream.frames or 0
        rate = _positive(stream.average_rate) or _positive(stream.guessed_rate)
        duration = _stream_duration(stream) or (container.duration / av.time_base if container.duration else None)
        width, height = codec_context.width, codec_context.height
        codec = stream.codec.canonical_name
        pix_fmt = codec_context.format.name if codec_context.format is not None else "unknown"
        audio = container.streams.audio[0] if container.streams.audio else None
        container_format = container.format.name
        is_iso_bmff = any(name in container_format.split(",") for name in ("mov", "mp4"))
    rotation = _iso_bmff_rotation(path) if is_iso_bmff else 0
    if rotation in (90, 270):
        width, height = height, width

    if not _header_count_reliable(header_frames, rate, duration):
        index = frame_index(path)
        header_frames = index.num_frames
        duration = index.duration
        # Without a frame count the header rate is only FFmpeg's guess from the first frames,
        # which is wrong for variable frame rate: trust it only if the timestamps agree.
        measured = index.mean_rate()
        if measured is not None and (rate is None or abs(float(rate) / measured - 1) > 0.01):
            rate = Fraction(measured)
    if rate is None and duration:
        rate = Fraction(header_frames / duration)
    fps = float(rate) if rate else 0.0
    if duration is None:
        duration = header_frames / fps if fps else 0.0
    return VideoInfo(
        path=str(path),
        num_frames=int(header_frames),
        fps=fps,
        duration=float(duration),
        width=int(width),
        height=int(height),
        rotation=rotation,
        codec=codec,
        pix_fmt=pix_fmt,
        has_audio=audio is not None,
        audio_sample_rate=int(audio.codec_context.sample_rate) if audio is not None else None,
        container=container_format,
    )


def _positive(rate: Fraction | None) -> Fraction | None:
    return rate if rate is not None and rate > 0 else None


def _stream_duration(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or stream.duration <= 0 or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _header_count_reliable(count: int, rate: Fraction | None, duration: float | None) -> bool:
    """A header count is trusted when it agrees with duration x rate (within a frame or 2%)."""
    if count <= 0:
        return False
    if rate is None or duration is None:
        return True
    expected = duration * float(rate)
    return abs(count - expected) <= max(1.5, 0.02 * expected)


def _boxes(f: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the ISO-BMFF boxes laid out in [start, end)."""
    position = start
    while position + 8 <= end:
        f.seek(position)
        size, kind = struct.unpack(">I4s", f.read(8))
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", f.read(8))
            header = 16
        elif size == 0:
            size = end - position
        if size < header:
            return
        yield kind, position + header, min(position + size, end)
        position += size


def _child(f: BinaryIO, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in _boxes(f, start, end) if k == kind), None)


def _iso_bmff_rotation(path: str | os.PathLike[str]) -> int:
    """Counter-clockwise display rotation of the first video track of an mp4/mov, from its `tkhd` matrix.

    PyAV exposes a display matrix only on decoded frames, so probing reads the track header
    itself; flips in the matrix are ignored (only the rotation is applied to frames).
    """
    with open(path, "rb") as f:
        file_end = f.seek(0, os.SEEK_END)
        moov = _child(f, 0, file_end, b"moov")
        if moov is None:
            return 0
        for kind, start, end in _boxes(f, *moov):
            if kind != b"trak":
                continue
            mdia = _child(f, start, end, b"mdia")
            hdlr = _child(f, *mdia, b"hdlr") if mdia else None
            if hdlr is None:
                continue
            f.seek(hdlr[0] + 8)
            if f.read(4) != b"vide":
                continue
            tkhd = _child(f, start, end, b"tkhd")
            if tkhd is None:
                return 0
            f.seek(tkhd[0])
            version = f.read(1)[0]
            f.seek(tkhd[0] + (52 if version == 1 else 40))
            a, b = struct.unpack(">ii", f.read(8))
            if a == 0 and b == 0:
                return 0
            # FFmpeg's av_display_rotation_get: the matrix turns clockwise by atan2(b, a).
            return (round(-math.degrees(math.atan2(b, a)) / 90) * 90) % 360
    return 0
