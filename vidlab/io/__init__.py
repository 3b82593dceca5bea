"""Video input: decoding, probing, audio, frame sampling.

Frames leave this package as uint8 `(T, H, W, 3)` RGB tensors in request order with the display
rotation applied; every failure is a `VideoReadError(path, reason, detail)`.
"""

from vidlab.io.audio import read_audio
from vidlab.io.backends import (
    BackendUnavailableError,
    VideoBackend,
    available_backends,
    get_backend,
)
from vidlab.io.errors import Reason, VideoReadError
from vidlab.io.ffmpeg import FFmpegError, cli_read_frames, ffmpeg_executable
from vidlab.io.probe import VideoInfo, probe
from vidlab.io.video import read_frames, read_frames_at

__all__ = [
    "BackendUnavailableError",
    "FFmpegError",
    "Reason",
    "VideoBackend",
    "VideoInfo",
    "VideoReadError",
    "available_backends",
    "cli_read_frames",
    "ffmpeg_executable",
    "get_backend",
    "probe",
    "read_audio",
    "read_frames",
    "read_frames_at",
]
