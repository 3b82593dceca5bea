"""The default backend: PyAV (bundles FFmpeg), decoding only the GOP spans that hold wanted frames."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import ClassVar

import av
import numpy as np
import torch

from vidlab.io.backends.base import VideoBackend
from vidlab.io.container import decode_errors, first_video_stream, open_container
from vidlab.io.errors import Reason, VideoReadError
from vidlab.io.index import FrameIndex, frame_index
from vidlab.io.probe import VideoInfo

# A gap between wanted frames is jumped with a (forward) seek when that skips at least this many
# packets; shorter gaps are decoded through. A seek plus decoder flush costs about one I-frame
# decode (~1 ms at 340x256). Measured (CPU ms per request, 10-s 30-fps 340x256 noisy H.264,
# 1-s GOP, one thread) for thresholds 0/4/8/16/32/never: 8 frames at stride 16:
# 54/54/55/67/70/64; 8 frames spread over the video: 76/77/74/84/125/141; 16 frames at stride 4:
# 43/44/48/42/44/44. Small thresholds win; past one GOP they decode whole GOPs for nothing.
MIN_SKIPPED_PACKETS = 4


def plan_spans(index: FrameIndex, ranks: np.ndarray, min_skip: int = MIN_SKIPPED_PACKETS) -> list[tuple[int, int]]:
    """Decode-order packet spans `[first, last]` that hold the frames at sorted `ranks`.

    Each span starts at the keyframe a wanted frame needs and ends at the packet of the last
    wanted frame it serves (with B-frames, its references come before it in decode order).
    Consecutive spans are merged unless jumping the gap skips at least `min_skip` packets, so
    the spans are disjoint and increasing: decoding them in order never seeks backwards.
    """
    starts = index.start_positions(ranks)
    ends = index.decode_positions(ranks)
    spans: list[tuple[int, int]] = []
    first, last = int(starts[0]), int(ends[0])
    for start, end in zip(starts[1:].tolist(), ends[1:].tolist()):
        if start - last - 1 >= min_skip:
            spans.append((first, last))
            first, last = start, end
        else:
            last = max(last, end)
    spans.append((first, last))
    return spans


def _seek_targets(index: FrameIndex, first: int) -> Iterator[int]:
    """Timestamps to seek by to reach the keyframe at decode position `first`, best first.

    mp4/mkv demuxers seek by pts and land exactly on the keyframe; AVI seeks by dts, where the
    keyframe's pts can overshoot it (packed B-frames). Then the dts, then earlier keyframes.
    """
    yield int(index.decode_pts[first])
    position = first
    while True:
        yield int(index.decode_dts[position])
        if position == 0:
            return
        position = index.previous_keyframe(position)


def _packets_from(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, index: FrameIndex, first: int
) -> Iterator[av.Packet]:
    """Packets from decode position `first` (a keyframe) on, seeking there unless it is the start.

    A seek that lands after `first` would lose frames, so it is retried with the next target of
    `_seek_targets`; landing early only costs decoding.
    """
    if first == 0:
        yield from container.demux(stream)
        return
    targets = list(_seek_targets(index, first))
    for attempt, target in enumerate(targets):
        container.seek(target, stream=stream, backward=True)
        packets = container.demux(stream)
        head = next(packets, None)
        if head is None:
            return
        head_pts = head.pts if head.pts is not None else head.dts
        if index.position_of_pts.get(head_pts, -1) <= first or attempt == len(targets) - 1:
            yield head
            yield from packets
            return


class RGBConverter:
    """Converts decoded frames to packed RGB24 through libavfilter's `scale`, as the ffmpeg CLI does.

    PyAV's `VideoFrame.to_ndarray(format='rgb24')` uses different swscale settings: for 10-bit
    input it differs from the CLI by up to ~120 levels at colour edges (measured), while the
    filter path is bit-identical to `ffmpeg -pix_fmt rgb24` and about 3x faster per frame.
    All frames are scaled to the size of the first one, so a mid-stream resolution change still
    yields one tensor, or to a given size in the same pass (as `ffmpeg -vf scale=W:H -pix_fmt rgb24`). The graph runs on the calling thread: swscale's slice threads gain nothing at
    video sizes (64x64: 0.007 against 0.034 ms a frame; 1280x720: 0.35 against 0.28 ms) and a graph
    holding threads hangs a forked child that frees it (see `vidlab.data.workers`).
    """

    def __init__(self, time_base: Fraction, size: tuple[int, int] | None = None):
        self._time_base = time_base
        self._graph: av.filter.Graph | None = None
        self._input_key: tuple[int, int, str] | None = None
        self.size = size  # (width, height) of the output; None: the first frame's

    def _build(self, frame: av.VideoFrame) -> None:
        if self.size is None:
            self.size = (frame.width, frame.height)
        graph = av.filter.Graph()
        graph.threads = 1
        source = graph.add_buffer(
            width=frame.width, height=frame.height, format=frame.format.name, time_base=self._time_base
        )
        scale = graph.add("scale", f"w={self.size[0]}:h={self.size[1]}:flags=bicubic")
        to_rgb = graph.add("format", "pix_fmts=rgb24")
        sink = graph.add("buffersink")
        source.link_to(scale)
        scale.link_to(to_rgb)
        to_rgb.link_to(sink)
        graph.configure()
        self._graph = graph
        self._input_key = (frame.width, frame.height, frame.format.name)

    def into(self, frame: av.VideoFrame, out: np.ndarray) -> None:
        """Write `frame` as RGB into `out` (H, W, 3), without an intermediate copy."""
        if (frame.width, frame.height, frame.format.name) != self._input_key:
            self._build(frame)
        self._graph.push(frame)
        rgb = self._graph.pull()
        plane = rgb.planes[0]
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(rgb.height, plane.line_size)
        out[...] = rows[:, : rgb.width * 3].reshape(rgb.height, rgb.width, 3)


class PyAVBackend(VideoBackend):
    """Seeks to the keyframe before each span of wanted frames and decodes forward with FFmpeg threads.

    Frames that are not wanted are decoded only as far as needed: non-reference frames outside
    the request are skipped by the decoder (`skip_frame=NONREF`; measured -30% CPU for sparse
    requests on x264 streams with B-frames), and no unwanted frame is converted to RGB.
    """

    name: ClassVar[str] = "pyav"

    def __init__(self, num_threads: int | None = None, min_skip: int = MIN_SKIPPED_PACKETS):
        super().__init__(num_threads)
        self.min_skip = min_skip

    def decode(self, path: str, info: VideoInfo, ranks: np.ndarray) -> torch.Tensor:
        return self._decode(path, info, ranks, None)

    def decode_scaled(self, path: str, info: VideoInfo, ranks: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """Scaled while converting to RGB, in FFmpeg's one `scale` pass (not a second resize of RGB frames)."""
        return self._decode(path, info, ranks, size)

    def _decode(self, path: str, info: VideoInfo, ranks: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
        index = frame_index(path)
        if ranks[-1] >= index.num_frames:
            why = "the file ends early or is damaged" if not index.complete else "the header promises more"
            raise VideoReadError(
                path,
                Reason.CORRUPT,
                f"frame {int(ranks[-1])} requested but only {index.num_frames} of the header's "
                f"{info.num_frames} frames can be read ({why})",
            )
        slot_of_pts = {int(pts): slot for slot, pts in enumerate(index.frame_pts[ranks].tolist())}
        position_of_pts = index.position_of_pts
        filled = np.zeros(len(ranks), dtype=bool)
        frames: np.ndarray | None = None

        with open_container(path) as container, decode_errors(path, "decoding"):
            stream = first_video_stream(container, path)
            codec = stream.codec_context
            codec.thread_type = "AUTO"
            codec.thread_count = self.decoder_threads()
            converter = RGBConverter(stream.time_base, size[::-1] if size is not None else None)

            def take(decoded: list[av.VideoFrame]) -> None:
                nonlocal frames
                for frame in decoded:
                    slot = slot_of_pts.get(frame.pts)
                    if slot is None or filled[slot]:
                        continue
                    if frames is None:
                        height, width = size if size is not None else (frame.height, frame.width)
                        frames = np.empty((len(ranks), height, width, 3), dtype=np.uint8)
                    converter.into(frame, frames[slot])
                    filled[slot] = True

            for first, last in plan_spans(index, ranks, self.min_skip):
                for packet in _packets_from(container, stream, index, first):
                    pts = packet.pts if packet.pts is not None else packet.dts
                    position = position_of_pts.get(pts, -1)
                    if packet.size == 0 or position > last:
                        break
                    codec.skip_frame = "DEFAULT" if pts in slot_of_pts else "NONREF"
                    take(codec.decode(packet))
                    if position == last:
                        break
                codec.skip_frame = "DEFAULT"
                take(codec.decode(None))  # drain: the span's wanted packets are all sent

        if not filled.all():
            missing = ranks[~filled].tolist()
            raise VideoReadError(path, Reason.CORRUPT, f"frames {missing[:8]} could not be decoded (damaged data)")
        return torch.from_numpy(frames)
