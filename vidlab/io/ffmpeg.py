"""The ffmpeg command-line tool: locating it, and a reference decoder built on it.

The reference decoder is deliberately independent of vidlab's own decoding path (a separate
process, FFmpeg's own frame selection and colour conversion), so tests can check our frames
against it and the benchmark can use it as the "decode lower bound".
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vidlab.errors import VidlabError

FFMPEG_ENV = "VIDLAB_FFMPEG"


class FFmpegError(VidlabError):
    """The ffmpeg executable is missing or a command run through it failed."""


def ffmpeg_executable() -> str:
    """Path of the ffmpeg to run: env `VIDLAB_FFMPEG`, then PATH, then the imageio-ffmpeg binary."""
    configured = os.environ.get(FFMPEG_ENV)
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            raise FFmpegError(f"{FFMPEG_ENV}={configured!r} is not an executable file")
        return configured
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        try:
            return imageio_ffmpeg.get_ffmpeg_exe()
        except RuntimeError:
            pass
    raise FFmpegError(
        "no ffmpeg executable found: install ffmpeg (e.g. `apt-get install ffmpeg`), "
        f"`pip install imageio-ffmpeg`, or set {FFMPEG_ENV}"
    )


def run_ffmpeg(args: list[str], *, what: str = "ffmpeg") -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg quietly with `args`; a failure becomes an `FFmpegError` carrying ffmpeg's own message."""
    cmd = [ffmpeg_executable(), "-hide_banner", "-nostdin", "-nostats", *args]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        tail = " | ".join(message[-3:]) if message else f"exit code {proc.returncode}"
        raise FFmpegError(f"{what} failed: {tail}")
    return proc


@functools.lru_cache(maxsize=8)
def _capabilities(executable: str) -> tuple[int, frozenset[str]]:
    """(major version, encoder names) of an ffmpeg binary; cached because both need a subprocess."""
    version_text = subprocess.run([executable, "-version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"version n?(\d+)\.", version_text)
    # Git snapshots report e.g. "version N-112345-g..." (newer than any release).
    major = int(match.group(1)) if match else 99
    listing = subprocess.run(
        [executable, "-hide_banner", "-encoders"], capture_output=True, text=True, check=False
    ).stdout
    encoders = frozenset(m.group(1) for m in re.finditer(r"^\s*[VAS][.\w]{5}\s+(\S+)", listing, re.MULTILINE))
    return major, encoders


def ffmpeg_version() -> int:
    """Major version of the ffmpeg that `ffmpeg_executable` finds (99 for unversioned git builds)."""
    return _capabilities(ffmpeg_executable())[0]


def ffmpeg_encoders() -> frozenset[str]:
    """Names of the encoders that ffmpeg has (e.g. 'libx264', 'libaom-av1')."""
    return _capabilities(ffmpeg_executable())[1]


_OUTPUT_SIZE = re.compile(r"Output #0.*?Stream #0:0.*?Video: rawvideo.*?, (\d+)x(\d+)", re.DOTALL)


def cli_read_frames(
    path: str | os.PathLike[str],
    *,
    start_s: float | None = None,
    num_frames: int | None = None,
    threads: int | None = None,
    keep: Sequence[int] | None = None,
) -> torch.Tensor:
    """Decode with the ffmpeg CLI to uint8 RGB `(N, H, W, 3)`: every frame, rotation applied.

    `start_s` seeks the input to that time (ffmpeg decodes from the keyframe before it and drops
    the frames before `start_s`); `num_frames` stops after that many decoded frames. `keep` (sorted
    positions counted from the first decoded frame) converts and outputs only those frames, as a
    decoder that needs a few frames of a span would. Timestamps are passed through
    (`-fps_mode passthrough`), so variable-frame-rate input yields each frame once.
    """
    args: list[str] = []
    if threads is not None:
        args += ["-threads", str(threads)]
    if start_s is not None:
        args += ["-ss", f"{start_s:.6f}"]
    args += ["-i", os.fspath(path), "-map", "0:v:0", "-fps_mode", "passthrough"]
    if keep is not None:
        args += ["-vf", "select='" + "+".join(f"eq(n,{int(k)})" for k in keep) + "'"]
        if num_frames is not None:
            args += ["-frames:v", str(len(keep))]
    elif num_frames is not None:
        args += ["-frames:v", str(num_frames)]
    args += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = run_ffmpeg(["-loglevel", "info", *args], what=f"decoding {path}")
    size = _OUTPUT_SIZE.search(proc.stderr.decode(errors="replace"))
    if size is None:
        raise FFmpegError(f"decoding {path}: could not read the output frame size from ffmpeg's log")
    width, height = int(size.group(1)), int(size.group(2))
    raw = np.frombuffer(proc.stdout, dtype=np.uint8)
    return torch.from_numpy(raw.reshape(-1, height, width, 3).copy())
