"""Encode rendered frames and audio into real files with PyAV (the FFmpeg stack vidlab decodes with)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from vidlab.data.shapesbench.scene import ShapesBenchError

VIDEO_CODEC = "libx264"
AUDIO_CODECS = ("pcm_s16le", "aac")
AAC_BIT_RATE = 64000
CRF = "18"
# x264's macroblock-tree rate control gives different bitstreams for the same frames from one process to
# the next (seen with PyAV 18.1's x264: 4 of ShapesBench tiny's 40 clips, up to 38 levels once decoded);
# without it, 51 generations of tiny in 1, 2 and 3 processes gave one set of files.
X264_PARAMS = "mbtree=0"


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    gop_size: int = 12,
    max_b_frames: int = 0,
    audio_codec: str = "pcm_s16le",
) -> None:
    """Write uint8 (T, H, W, 3) frames as H.264 (yuv420p) mp4 with an optional mono audio track,
    16-bit PCM or AAC (AAC costs ~20 ms per clip to encode, PCM ~1 ms).

    One encoder thread: generation parallelises over files, and single-threaded x264 output is
    bit-identical from run to run, which the determinism guarantee needs.
    """
    num_frames, height, width, _ = frames.shape
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream(VIDEO_CODEC, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.gop_size = gop_size
        video.codec_context.max_b_frames = max_b_frames
        video.options = {"preset": "veryfast", "crf": CRF, "threads": "1", "x264-params": X264_PARAMS}
        audio_stream = None
        if audio is not None:
            if audio_codec not in AUDIO_CODECS:
                raise ShapesBenchError(f"audio codec must be one of {AUDIO_CODECS}, got {audio_codec!r}")
            audio_stream = container.add_stream(audio_codec, rate=sample_rate, layout="mono")
            if audio_codec == "aac":
                audio_stream.bit_rate = AAC_BIT_RATE
                audio_stream.options = {"aac_coder": "fast"}
        for k in range(num_frames):
            # converted here on this thread: left to the encoder, swscale would start slice threads
            frame = av.VideoFrame.from_ndarray(frames[k], format="rgb24").reformat(format="yuv420p", threads=1)
            frame.pts = k
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio_stream is not None:
            chunk = audio_stream.codec_context.frame_size or 1024
            if audio_codec == "aac":
                samples, sample_format = np.ascontiguousarray(audio, dtype=np.float32), "fltp"
            else:
                samples, sample_format = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16), "s16"
            for start in range(0, len(samples), chunk):
                piece = av.AudioFrame.from_ndarray(
                    samples[None, start : start + chunk], format=sample_format, layout="mono"
                )
                piece.sample_rate = sample_rate
                piece.pts = start
                container.mux(audio_stream.encode(piece))
            container.mux(audio_stream.encode(None))


def write_image(path: str | Path, frame: np.ndarray) -> None:
    """Write one uint8 (H, W, 3) frame; the format (png, jpg) follows the file suffix."""
    options = {"quality": 95} if Path(path).suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(frame).save(path, **options)
