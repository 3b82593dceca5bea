"""Resizing RGB frames with FFmpeg's own scaler (libavfilter `scale`, swscale bicubic), so a pipeline written
as an ffmpeg filter chain (VIMPAC's video2token: `fps`, `scale`, `crop`, `hflip`) gives the same pixels."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import torch


def scale_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) RGB -> uint8 (T, height, width, 3) through `scale=w:h:flags=bicubic` (the ffmpeg CLI's
    default scaler). The graph runs on the calling thread (see `vidlab.io.backends.pyav.RGBConverter`)."""
    count, in_height, in_width, _ = frames.shape
    out = torch.empty((count, height, width, 3), dtype=torch.uint8)
    if count == 0:
        return out
    graph = av.filter.Graph()
    graph.threads = 1
    source = graph.add_buffer(width=in_width, height=in_height, format="rgb24", time_base=Fraction(1, 25))
    scale = graph.add("scale", f"w={width}:h={height}:flags=bicubic")
    to_rgb = graph.add("format", "pix_fmts=rgb24")
    sink = graph.add("buffersink")
    source.link_to(scale)
    scale.link_to(to_rgb)
    to_rgb.link_to(sink)
    graph.configure()
    for i, frame in enumerate(frames.numpy()):
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        picture.pts = i
        graph.push(picture)
        rgb = graph.pull()
        plane = rgb.planes[0]
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(rgb.height, plane.line_size)
        out[i] = torch.from_numpy(rows[:, : width * 3].reshape(height, width, 3).copy())
    return out


__all__ = ["scale_frames"]
