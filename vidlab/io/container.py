"""Opening media files with PyAV, turning every failure into a `VideoReadError` with a reason.

Probing, the frame index, the PyAV backend and audio all open files through here, so a bad
file gets the same reason whichever function met it first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import av

from vidlab.io.errors import Reason, VideoReadError

# Leading bytes of container formats we decode; a file that starts like one of these but does not
# open is a damaged video (corrupt), anything else is not a video at all.
_MAGIC_AT_0 = (
    b"\x1a\x45\xdf\xa3",  # Matroska / WebM (EBML)
    b"RIFF",  # AVI, WAV, WebP
    b"GIF8",
    b"\x89PNG",
    b"\xff\xd8\xff",  # JPEG
    b"BM",  # BMP
    b"OggS",
    b"fLaC",
    b"ID3",
    b"FLV",
    b"\x00\x00\x01\xba",  # MPEG program stream
    b"\x30\x26\xb2\x75",  # ASF / WMV
)
_ISO_BMFF_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")
# Demuxers and codecs that accept arbitrary text (FFmpeg renders .txt/.nfo files as ANSI art).
_TEXT_FORMATS = {"tty"}
_TEXT_CODECS = {"ansi"}


def check_file(path: str | os.PathLike[str]) -> Path:
    """Fail fast, with a reason, on paths that cannot hold media: missing, a directory, or 0 bytes."""
    if "\0" in os.fspath(path):  # no file has such a name; the OS calls would raise a bare ValueError
        raise VideoReadError(path, Reason.MISSING, "NUL byte in the path")
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise VideoReadError(path, Reason.MISSING) from None
    except OSError as exc:
        raise VideoReadError(path, Reason.MISSING, f"cannot stat: {exc.strerror}") from None
    if path.is_dir():
        raise VideoReadError(path, Reason.NOT_A_VIDEO, "is a directory")
    if size == 0:
        raise VideoReadError(path, Reason.EMPTY, "0 bytes")
    if not os.access(path, os.R_OK):
        raise VideoReadError(path, Reason.MISSING, "not readable (permission denied)")
    return path


def looks_like_media(path: Path) -> bool:
    """Whether the file starts with the signature of a media container (used to tell corrupt from not-a-video)."""
    with open(path, "rb") as f:
        head = f.read(189)
    if head[4:8] in _ISO_BMFF_BOXES:
        return True
    if len(head) == 189 and head[0] == head[188] == 0x47:  # MPEG-TS: sync byte every 188 bytes
        return True
    return any(head.startswith(magic) for magic in _MAGIC_AT_0)


def _message(exc: Exception) -> str:
    """FFmpeg's own words for an error, without PyAV's errno and file name decoration."""
    return getattr(exc, "strerror", None) or str(exc)


def _unopenable(path: Path, exc: Exception) -> VideoReadError:
    if looks_like_media(path):
        return VideoReadError(path, Reason.CORRUPT, f"cannot parse the container: {_message(exc)}")
    return VideoReadError(path, Reason.NOT_A_VIDEO, "no known media format")


def open_container(path: str | os.PathLike[str]) -> av.container.InputContainer:
    """Open `path` for demuxing; the caller closes it (it is a context manager)."""
    path = check_file(path)
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except av.error.FileNotFoundError:
        raise VideoReadError(path, Reason.MISSING) from None
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise _unopenable(path, exc) from None
    if container.format.name in _TEXT_FORMATS:
        container.close()
        raise VideoReadError(path, Reason.NOT_A_VIDEO, "plain text")
    return container


def first_video_stream(
    container: av.container.InputContainer, path: str | os.PathLike[str]
) -> av.video.stream.VideoStream:
    """The stream vidlab decodes: the first video stream that is not a cover picture."""
    for stream in container.streams.video:
        if stream.codec_context is not None and stream.codec_context.name in _TEXT_CODECS:
            raise VideoReadError(path, Reason.NOT_A_VIDEO, "plain text")
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    if container.streams.audio:
        raise VideoReadError(path, Reason.NO_VIDEO_STREAM, "audio only")
    raise VideoReadError(path, Reason.NOT_A_VIDEO, "no video or audio stream")


@contextlib.contextmanager
def decode_errors(path: str | os.PathLike[str], doing: str) -> Iterator[None]:
    """Turn FFmpeg errors raised while demuxing or decoding into `VideoReadError(CORRUPT)`."""
    try:
        yield
    except av.error.FileNotFoundError:
        raise VideoReadError(path, Reason.MISSING, f"disappeared while {doing}") from None
    except (av.error.FFmpegError, EOFError) as exc:
        raise VideoReadError(path, Reason.CORRUPT, f"{doing}: {_message(exc)}") from None
