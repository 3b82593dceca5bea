"""`read_audio`: a window of a file's first audio stream as float32 mono at a chosen sample rate."""

from __future__ import annotations

import math
import os

import av
import numpy as np
import torch

from vidlab.io.container import decode_errors, open_container
from vidlab.io.errors import Reason, VideoReadError

# Seek this far before the window: codecs with overlapping transforms (AAC, Opus, Vorbis) only
# decode correctly after some pre-roll, and the resampler's filter needs history too.
_PREROLL_S = 0.5


def read_audio(
    path: str | os.PathLike[str],
    start_s: float = 0.0,
    end_s: float | None = None,
    *,
    sample_rate: int = 16000,
) -> torch.Tensor:
    """float32 mono samples `(N,)` of `[start_s, end_s)` (to the end when `end_s` is None).

    Times count from the start of the audio stream. Channels are averaged (not FFmpeg's
    downmix, which weights them), then resampled to `sample_rate`. N is
    `round((end_s - start_s) * sample_rate)` unless the audio ends first.
    """
    path = os.fspath(path)
    if sample_rate <= 0:
        raise VideoReadError(path, Reason.OUT_OF_RANGE, f"sample_rate must be positive, got {sample_rate}")
    if not (math.isfinite(start_s) and start_s >= 0) or (end_s is not None and not end_s > start_s):
        raise VideoReadError(path, Reason.OUT_OF_RANGE, f"bad audio window [{start_s}, {end_s}) s")
    with open_container(path) as container:
        if not container.streams.audio:
            raise VideoReadError(path, Reason.NO_AUDIO_STREAM)
        stream = container.streams.audio[0]
        time_base = stream.time_base
        stream_start = float(stream.start_time * time_base) if stream.start_time is not None else 0.0
        duration = _audio_duration(container, stream)
        if duration is not None and start_s >= duration:
            raise VideoReadError(path, Reason.OUT_OF_RANGE, f"audio starts at {start_s} s but lasts {duration:.6g} s")
        if start_s > _PREROLL_S:
            container.seek(int((stream_start + start_s - _PREROLL_S) / time_base), stream=stream, backward=True)
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        chunks: list[np.ndarray] = []
        resampled = 0  # samples in `chunks`
        first_time: float | None = None
        with decode_errors(path, "decoding audio"):
            for frame in container.decode(stream):
                if first_time is None:
                    first_time = float(frame.pts * time_base) - stream_start if frame.pts is not None else 0.0
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    resampled += out.samples
                if end_s is not None and first_time + resampled / sample_rate >= end_s + _PREROLL_S:
                    break
            chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    if first_time is None or not chunks:
        raise VideoReadError(path, Reason.CORRUPT, "the audio stream decodes to no samples")
    mono = np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32)
    offset = round((start_s - first_time) * sample_rate)
    until = end_s if end_s is not None else duration
    stop = None if until is None else offset + round((until - start_s) * sample_rate)
    window = mono[max(offset, 0) : stop]
    if window.size == 0:
        raise VideoReadError(path, Reason.OUT_OF_RANGE, f"no audio samples in [{start_s}, {end_s}) s")
    return torch.from_numpy(np.ascontiguousarray(window))


def _audio_duration(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> float | None:
    if stream.duration is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None
