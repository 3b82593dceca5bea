"""Frames from `read_frames` / `read_frames_at` against the ffmpeg CLI, the independent reference."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import vidlab.io.backends.pyav as pyav_backend
from vidlab.data.workers import loader_kwargs
from vidlab.io import (
    BackendUnavailableError,
    available_backends,
    cli_read_frames,
    probe,
    read_frames,
    read_frames_at,
)
from vidlab.io.index import FrameIndex

# The CLI and PyAV convert to RGB with the same swscale call (bicubic `scale` filter) and were
# bit-identical on every case here; 2 levels leave room for SIMD rounding differences between
# FFmpeg builds on other CPUs. Consecutive test frames differ by far more (checked in
# test_decode_reference.py), so an off-by-one frame still fails.
TOLERANCE = 2


def assert_same_frames(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == torch.uint8
    assert actual.shape == expected.shape
    if actual.numel():
        assert (actual.int() - expected.int()).abs().max().item() <= TOLERANCE


# name -> make_video arguments: the codec/container/pixel-format matrix.
VIDEO_CASES = {
    "h264_bframes_long_gop.mp4": {"codec": "h264", "num_frames": 60, "gop": 60, "bframes": 3},
    "h264_bframes.mov": {"codec": "h264", "num_frames": 20, "gop": 8, "bframes": 2},
    "h264_bframes.avi": {"codec": "h264", "num_frames": 20, "gop": 8, "bframes": 2},
    "hevc_bframes.mkv": {"codec": "hevc", "num_frames": 20, "gop": 8, "bframes": 2},
    "vp9.webm": {"codec": "vp9", "num_frames": 20, "gop": 8},
    "av1.mkv": {"codec": "av1", "num_frames": 10, "gop": 5},
    "mpeg4_bframes.avi": {"codec": "mpeg4", "num_frames": 20, "gop": 8, "bframes": 2},
    "mjpeg_full_range.mov": {"codec": "mjpeg", "num_frames": 8, "pix_fmt": "yuvj420p"},
    "vfr_bframes.mp4": {"codec": "h264", "num_frames": 21, "gop": 8, "bframes": 2, "vfr": True},
    "vfr.mkv": {"codec": "h264", "num_frames": 21, "gop": 8, "vfr": True},
    "odd_size.webm": {"codec": "vp9", "num_frames": 8, "size": (63, 47)},
    "odd_size_yuv444p.mp4": {"codec": "h264", "num_frames": 8, "size": (63, 47), "pix_fmt": "yuv444p"},
    "yuv420p10le.mp4": {"codec": "h264", "num_frames": 8, "pix_fmt": "yuv420p10le"},
    "yuv420p10le_hevc.mkv": {"codec": "hevc", "num_frames": 8, "pix_fmt": "yuv420p10le"},
    "gray.mkv": {"codec": "ffv1", "num_frames": 8, "pix_fmt": "gray"},
    "rotated90.mp4": {"codec": "h264", "num_frames": 12, "gop": 5, "bframes": 2, "rotation": 90},
    "rotated180.mov": {"codec": "h264", "num_frames": 6, "rotation": 180},
    "rotated270.mp4": {"codec": "h264", "num_frames": 6, "rotation": 270},
}


@pytest.fixture(scope="module")
def video_case(media, require_encoder, request) -> tuple:
    """(path, frames decoded by the ffmpeg CLI) for one VIDEO_CASES entry."""
    name = request.param
    require_encoder(VIDEO_CASES[name]["codec"])
    path = media.video(name, **VIDEO_CASES[name])
    return path, cli_read_frames(path)


def _sparse_request(num_frames: int) -> list[int]:
    """Unsorted, with a duplicate, first and last frames included."""
    return [num_frames - 1, 0, num_frames // 2, 1, num_frames // 2, num_frames - 2]


@pytest.mark.parametrize("video_case", sorted(VIDEO_CASES), indirect=True)
def test_frames_match_ffmpeg_cli(video_case):
    path, reference = video_case
    num_frames = probe(path).num_frames
    assert num_frames == len(reference)
    assert_same_frames(read_frames(path, list(range(num_frames))), reference)
    sparse = _sparse_request(num_frames)
    assert_same_frames(read_frames(path, sparse), reference[sparse])


@pytest.mark.parametrize("name", ["rotated90.mp4", "rotated270.mp4"])
def test_quarter_rotation_swaps_width_and_height(media, name):
    path = media.video(name, **VIDEO_CASES[name])
    frames = read_frames(path, [0])
    assert frames.shape == (1, 64, 48, 3)  # stored 64x48 (w x h), displayed 48 wide, 64 high


@pytest.mark.parametrize("name", ["still.jpg", "still.png", "still.webp", "still.bmp"])
def test_still_image_is_a_one_frame_video(media, name):
    path = media.image(name, size=(64, 48))
    reference = cli_read_frames(path)
    assert probe(path).num_frames == 1
    assert_same_frames(read_frames(path, [0, 0]), reference[[0, 0]])
    assert_same_frames(read_frames_at(path, [0.0]), reference)


def test_gif_is_a_video(media):
    path = media.gif("anim.gif", num_frames=10, fps=10)
    reference = cli_read_frames(path)
    assert probe(path).num_frames == len(reference) == 10
    assert_same_frames(read_frames(path, [9, 2, 2, 5]), reference[[9, 2, 2, 5]])
    assert_same_frames(read_frames_at(path, [0.0, 0.55]), reference[[0, 5]])


def _vfr_times(num_frames: int, fps: float) -> np.ndarray:
    """Presentation times make_video(vfr=True) gives: durations cycle 1, 2, 3 frame periods."""
    n = np.arange(num_frames)
    return (6 * (n // 3) + np.array([0, 1, 3])[n % 3]) / fps


def test_read_frames_at_picks_the_frame_on_display(media):
    path = media.video("vfr.mkv", **VIDEO_CASES["vfr.mkv"])
    reference = cli_read_frames(path)
    starts = _vfr_times(21, fps=25.0)
    # On a frame's own time, just before the next one, and half way through a long frame.
    times = [starts[4], starts[5] - 0.001, (starts[5] + starts[6]) / 2, 0.0, starts[20]]
    expected = [4, 4, 5, 0, 20]
    assert_same_frames(read_frames_at(path, times), reference[expected])


def test_vfr_index_is_presentation_order(media):
    path = media.video("vfr_bframes.mp4", **VIDEO_CASES["vfr_bframes.mp4"])
    reference = cli_read_frames(path)
    times = _vfr_times(21, fps=25.0)
    # Asking by time for each frame's start time yields frame i, the same as asking by index.
    assert_same_frames(read_frames_at(path, times), reference)
    assert_same_frames(read_frames(path, [13, 7]), reference[[13, 7]])


def test_request_order_duplicates_and_index_types(media):
    path = media.video("h264_bframes.mov", **VIDEO_CASES["h264_bframes.mov"])
    reference = cli_read_frames(path)
    request = [7, 3, 7, 19, 0, 3]
    expected = reference[request]
    assert_same_frames(read_frames(path, request), expected)
    assert_same_frames(read_frames(path, np.array(request, dtype=np.int32)), expected)
    assert_same_frames(read_frames(path, torch.tensor(request)), expected)
    assert read_frames(path, []).shape == (0, 48, 64, 3)


class _RecordingContainer:
    """Wraps a PyAV container, recording seek targets and how many packets were demuxed."""

    def __init__(self, container):
        self._container = container
        self.seeks: list[int] = []
        self.packets = 0

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._container.close()

    def seek(self, offset, **kwargs):
        self.seeks.append(offset)
        return self._container.seek(offset, **kwargs)

    def demux(self, *args):
        for packet in self._container.demux(*args):
            self.packets += 1
            yield packet


@pytest.fixture
def recorded(monkeypatch) -> list[_RecordingContainer]:
    """Every container the PyAV backend opens, wrapped in a `_RecordingContainer`."""
    opened: list[_RecordingContainer] = []
    real_open = pyav_backend.open_container

    def recording_open(path):
        opened.append(_RecordingContainer(real_open(path)))
        return opened[-1]

    monkeypatch.setattr(pyav_backend, "open_container", recording_open)
    return opened


def test_decodes_forward_only_the_needed_gops(media, recorded):
    path = media.video("gop10_90.mp4", codec="h264", num_frames=90, gop=10, bframes=2)
    reference = cli_read_frames(path)
    request = [85, 31, 33, 31, 62]
    assert_same_frames(read_frames(path, request, backend="pyav"), reference[request])
    (container,) = recorded
    # Three forward seeks (GOPs 30, 60, 80); never back, never to GOPs without wanted frames.
    assert len(container.seeks) == 3
    assert container.seeks == sorted(container.seeks)
    # GOP 30-39 up to frame 33, 60-69 up to 62, 80-89 up to 85: at most 4+3+6 frame packets,
    # plus up to 2 B-frame reorder packets and the 1 packet that ends each span.
    assert container.packets <= 13 + 3 * 3


def test_request_from_the_first_gop_does_not_seek(media, recorded):
    path = media.video("gop10_90.mp4", codec="h264", num_frames=90, gop=10, bframes=2)
    read_frames(path, [2, 0, 4], backend="pyav")
    (container,) = recorded
    assert container.seeks == []
    assert container.packets <= 5 + 3


def _index(pts: list[int], keyframes: list[int]) -> FrameIndex:
    pts_array = np.asarray(pts, dtype=np.int64)
    is_key = np.zeros(len(pts), dtype=bool)
    is_key[keyframes] = True
    return FrameIndex(pts_array, pts_array, is_key, time_base=Fraction(1), end_pts=max(pts) + 1, complete=True)


def test_plan_spans_seeks_only_over_big_gaps():
    # 40 frames in decode order with B-frame reordering inside each 10-frame GOP.
    gop = [0, 3, 1, 2, 6, 4, 5, 9, 7, 8]
    index = _index([g * 10 + p for g in range(4) for p in gop], keyframes=[0, 10, 20, 30])
    ranks = np.array([2, 4, 35])
    # Frame 4 sits at decode position 5; frame 35 needs the keyframe at 30 and ends at position 36.
    assert pyav_backend.plan_spans(index, ranks, min_skip=4) == [(0, 5), (30, 36)]
    # A threshold above the 24 skippable packets decodes straight through.
    assert pyav_backend.plan_spans(index, ranks, min_skip=25) == [(0, 36)]
    # Frame 13 (decode position 11) continues the first span: its keyframe is only 4 packets on.
    assert pyav_backend.plan_spans(index, np.array([4, 13]), min_skip=5) == [(0, 11)]


def test_backend_by_argument_and_environment(media, monkeypatch):
    path = media.video("h264_bframes.mov", **VIDEO_CASES["h264_bframes.mov"])
    assert available_backends()[0] == "pyav"
    # an unknown backend is a setup error, not a bad file a dataset could skip
    with pytest.raises(BackendUnavailableError, match="no-such-backend"):
        read_frames(path, [0], backend="no-such-backend")
    monkeypatch.setenv("VIDLAB_VIDEO_BACKEND", "no-such-backend")
    with pytest.raises(BackendUnavailableError, match="no-such-backend"):
        read_frames(path, [0])
    assert read_frames(path, [0], backend="pyav").shape == (1, 48, 64, 3)


OPTIONAL_BACKEND_CASES = [
    "h264_bframes_long_gop.mp4",
    "hevc_bframes.mkv",
    "vp9.webm",
    "av1.mkv",
    "vfr_bframes.mp4",
    "yuv420p10le.mp4",
    "rotated90.mp4",  # decord cannot rotate: PyAV fallback
    "mpeg4_bframes.avi",  # AVI random access is wrong in both: PyAV fallback
]


@pytest.mark.parametrize("backend", ["torchcodec", "decord"])
@pytest.mark.parametrize("video_case", OPTIONAL_BACKEND_CASES, indirect=True)
def test_optional_backends_give_the_same_frames(video_case, backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not importable here")
    path, reference = video_case
    sparse = _sparse_request(len(reference))
    assert_same_frames(read_frames(path, sparse, backend=backend), reference[sparse])


@pytest.mark.parametrize("backend", ["torchcodec", "decord"])
def test_optional_backends_read_images_and_gifs(media, backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not importable here")
    image = media.image("still.jpg", size=(64, 48))
    gif = media.gif("anim.gif", num_frames=10, fps=10)
    assert_same_frames(read_frames(image, [0], backend=backend), cli_read_frames(image))
    assert_same_frames(read_frames(gif, [8, 1], backend=backend), cli_read_frames(gif)[[8, 1]])


class _ThreadsSeen(torch.utils.data.Dataset):
    """Reports the decoder threads a backend built in the parent would use in the process reading."""

    def __init__(self, backend):
        self.backend = backend

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        return self.backend.decoder_threads()


def _threads_in_worker(backend) -> int:
    loader = torch.utils.data.DataLoader(_ThreadsSeen(backend), batch_size=None, num_workers=1, **loader_kwargs(1))
    return int(next(iter(loader)))


def test_decoder_threads_one_per_dataloader_worker_unless_set(monkeypatch):
    monkeypatch.delenv("VIDLAB_DECODE_THREADS", raising=False)
    backend = pyav_backend.PyAVBackend()  # built in the parent, as `get_backend` builds it once
    assert backend.decoder_threads() == 0  # one process decoding: FFmpeg's thread per core
    assert _threads_in_worker(backend) == 1  # the workers are the parallelism
    assert _threads_in_worker(pyav_backend.PyAVBackend(num_threads=3)) == 3
    monkeypatch.setenv("VIDLAB_DECODE_THREADS", "2")
    assert _threads_in_worker(backend) == 2
