"""Frame-index samplers of every system: pure functions of (number of frames, fps, rng).

A sampler answers "which decoded frames make this clip?" without touching media, so datasets, benchmarks and
the golden tests share one definition of each official rule. Datasets build one from YAML with
`make_sampler(name=..., **params)` and call it as `sampler(vlen, fps, rng)`; it returns one int64 index
array per temporal view, every index inside [0, vlen).

Names, their parameters, and the official rule each one reproduces:

- ``fit_rand`` (num_frames): FiT training. [0, vlen) is cut into acc = min(num_frames, vlen) segments at
  ``np.linspace(0, vlen, acc + 1).astype(int)``; segment j spans frames [a_j, e_j] and draws from [a_j, e_j):
  the official ``random.choice(range(a_j, e_j))`` never draws the segment's last frame. A one-frame segment
  (a_j == e_j) makes the official code raise IndexError; vidlab takes a_j there, its only deviation in this
  mode. Returns acc indices: the dataset pads the clip to num_frames with black frames (FiT's rule).
- ``fit_uniform`` (num_frames, fix_start=None): FiT evaluation, (a_j + e_j) // 2 per segment; with
  ``fix_start`` a_j + fix_start instead. acc indices, black-padded by the dataset.
- ``fit_sliding_window`` (num_frames, stride): FiT ``test.py --sliding_window_stride``: one view per offset in
  ``range(0, vlen // (acc + 1), stride)`` (the official divides by the number of segment edges, acc + 1),
  each view a_j + offset. A video too short for any offset gets the one offset 0 (the official code
  produces a NaN offset).
- ``singularity_rand`` (num_frames): segments and draws as ``fit_rand``; when any segment has one frame the
  official code falls back to ``sorted(permutation(vlen)[:acc])``, and so does vidlab. Padded to num_frames
  by repeating the last index.
- ``singularity_middle`` (num_frames, fix_start=None): as ``fit_uniform``, padded by repeating the last index.
- ``singularity_fps`` (output_fps, max_num_frames=-1): Singularity ``fpsX``: frame times delta/2 + k*delta
  below duration + delta/2 (delta = 1 / output_fps seconds, duration = vlen / fps), index =
  ``np.around(t * fps)`` (half to even), kept if < vlen; the first max_num_frames if that is > 0.
- ``evl_train`` (num_frames, sampling_rate=1): EVL training: num_frames frames sampling_rate apart from a
  random start in [0, vlen - span], span = (num_frames - 1) * sampling_rate + 1. When span >= vlen it is
  deterministic: start 0, and positions past the end repeat the last position inside the video.
- ``evl_tsn`` (num_frames): EVL ``--tsn_sampling``: seg = (vlen - 1) / num_frames; frame i is drawn from
  [round(seg * i), round(seg * (i + 1))], both ends included (Python's round).
- ``uniform_views`` (num_frames, num_views=1, sampling_rate=1, target_fps=None), alias ``evl_eval``: EVL's
  evaluation temporal crops, used for every system's multi-view testing: slack = max(vlen - span, 0);
  start = slack // 2 for one view, else ``round(slack / (num_views - 1) * i)`` (half to even); positions
  past the end repeat frame vlen - 1. (VIMPAC spaces its test clips with int(slack * i / (num_views - 1))
  and GDT with int(slack * i / num_views); vidlab uses EVL's rule, the one the golden vectors pin down.)
- ``ffmpeg_fps`` (output_fps): every frame FFmpeg's ``fps=F`` filter outputs (VIMPAC's video2token): output
  frame n (n < round(vlen * F / fps)) is the last source frame i with round(i * F / fps) <= n, rounding half
  away from zero, i.e. i = ceil((n + 1/2) * fps / F) - 1 (frames repeat when F > fps). Exact rational
  arithmetic on the fps (a float fps is read as the nearest fraction with denominator <= 100000, e.g. 30000/1001);
  timestamps are assumed regular from 0, where the filter reads each frame's own.
- ``fixed_fps`` (num_frames, target_fps, sampling_rate=1, start='random'): VIMPAC / GDT clips of num_frames
  frames at target_fps, derived from the video's fps: clip frame k sits k * sampling_rate * fps / target_fps
  source frames after the start (nearest source frame). ``start='random'`` places the clip as
  ``evl_train`` does (training); ``start='center'`` centres it as one-view ``uniform_views`` (evaluation).
- ``gdt_shift`` (num_frames, sampling_rate=1, target_fps=None, distinct=True): GDT pretraining's two clips of
  one video at times tau1 and tau2, each placed as ``fixed_fps`` / ``evl_train`` place one clip, from its own
  random start. The official dataset draws the two starts independently (``randint(0, 1000)`` each, equal
  once in ~1000 draws); with ``distinct`` (default) tau2 is drawn among the other starts whenever the video has
  more than one, so the shift views always differ (a short clip would otherwise repeat tau1 often).

Where the official code produces indices no decoder can serve -- ``fix_start`` past the end of a short
video, or no frame time inside a very short video in ``fps`` mode -- the official datasets crash; calling a
vidlab sampler raises `SamplingError` (a `VidlabError`) so the dataset's bad-sample policy can handle the video.
`Sampler.unchecked` returns the official output as is, and the golden tests compare it exactly.

Random samplers take ``rng``: a ``numpy.random.Generator`` or a ``random.Random``, never global state, so
datasets seed per sample and epoch. With a ``random.Random`` the segment samplers draw exactly what the
official code draws after ``random.seed`` (``randrange(a_j, e_j)`` consumes the generator as
``random.choice(range(a_j, e_j))`` does), except in Singularity's fallback, which used numpy's global state.
"""

from __future__ import annotations

import inspect
import math
import operator
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Sequence, Union

import numpy as np

from vidlab.errors import ConfigError, VidlabError

Rng = Union[np.random.Generator, random.Random]


class SamplingError(VidlabError, ValueError):
    """A sampler cannot serve this video (no frames, bad fps, or indices past its end)."""


class Sampler(ABC):
    """Callable ``(vlen, fps, rng) -> list of int64 index arrays``, one array per temporal view."""

    @property
    def needs_rng(self) -> bool:
        """Whether calls must pass a random generator (training samplers)."""
        return False

    @property
    def uses_fps(self) -> bool:
        """Whether the video's fps matters; other samplers accept any value for it."""
        return False

    def unchecked(self, vlen: int, fps: float, rng: Rng | None = None) -> list[np.ndarray]:
        """The official rule's output as is, even indices no decoder can serve (for golden comparisons)."""
        vlen = _frame_count(vlen)
        if self.uses_fps:
            fps = _video_fps(self, fps)
        if self.needs_rng and rng is None:
            raise SamplingError(
                f"{self} draws at random: pass rng=numpy.random.default_rng(seed) or random.Random(seed)"
            )
        return [np.asarray(view, dtype=np.int64) for view in self._views(vlen, fps, rng)]

    def __call__(self, vlen: int, fps: float, rng: Rng | None = None) -> list[np.ndarray]:
        views = self.unchecked(vlen, fps, rng)
        for view in views:
            if view.size == 0:
                raise SamplingError(f"{self}: no frame of a {vlen}-frame video at {fps} fps falls in the clip")
            if view.min() < 0 or view.max() >= vlen:
                raise SamplingError(f"{self}: index {int(view.max())} is past the end of a {vlen}-frame video")
        return views

    @abstractmethod
    def _views(self, vlen: int, fps: float, rng: Rng | None) -> list[Sequence[int] | np.ndarray]:
        """The official rule, on validated inputs; the base class checks what it returns."""


def segment_bounds(num_frames: int, vlen: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last frame of each FiT/Singularity segment: min(num_frames, vlen) truncated-linspace pieces."""
    edges = np.linspace(0, vlen, min(num_frames, vlen) + 1).astype(np.int64)
    return edges[:-1], edges[1:] - 1


@dataclass(frozen=True)
class SegmentMiddle(Sampler):
    """FiT 'uniform' / Singularity 'middle' (or a_j + fix_start); Singularity pads with the last index."""

    num_frames: int
    fix_start: int | None = None
    pad_with_last: bool = False

    def __post_init__(self) -> None:
        _check_positive_int(self, "num_frames")
        if self.fix_start is not None:
            _check_int(self, "fix_start", minimum=0)

    def _views(self, vlen: int, fps: float, rng: Rng | None) -> list[np.ndarray]:
        firsts, lasts = segment_bounds(self.num_frames, vlen)
        indices = firsts + self.fix_start if self.fix_start is not None else (firsts + lasts) // 2
        return [_pad_with_last(indices, self.num_frames) if self.pad_with_last else indices]


@dataclass(frozen=True)
class SegmentRandom(Sampler):
    """FiT / Singularity 'rand': one draw from [a_j, e_j) per segment; see the module notes on one-frame segments."""

    num_frames: int
    singularity: bool = False

    def __post_init__(self) -> None:
        _check_positive_int(self, "num_frames")

    @property
    def needs_rng(self) -> bool:
        return True

    def _views(self, vlen: int, fps: float, rng: Rng | None) -> list[np.ndarray]:
        firsts, lasts = segment_bounds(self.num_frames, vlen)
        if not self.singularity:
            return [np.array([a if a == e else _randint(rng, a, e) for a, e in zip(firsts.tolist(), lasts.tolist())])]
        if (firsts == lasts).any():
            indices = _sorted_subset(rng, vlen, len(firsts))
        else:
            indices = np.array([_randint(rng, a, e) for a, e in zip(firsts.tolist(), lasts.tolist())])
        return [_pad_with_last(indices, self.num_frames)]


@dataclass(frozen=True)
class SlidingWindow(Sampler):
    """FiT test-time sliding window: the segment starts shifted by each offset, one view per offset."""

    num_frames: int
    stride: int

    def __post_init__(self) -> None:
        _check_positive_int(self, "num_frames")
        _check_positive_int(self, "stride")

    def _views(self, vlen: int, fps: float, rng: Rng | None) -> list[np.ndarray]:
        firsts, _ = segment_bounds(self.num_frames, vlen)
        offsets = range(0, vlen // (len(firsts) + 1), self.stride) or range(1)
        return [firsts + offset for offset in offsets]


@dataclass(frozen=True)
class FpsFrames(Sampler):
    """Singularity 'fpsX': one frame per 1/output_fps seconds, at the middle of each interval."""

    output_fps: float
    max_num_frames: int = -1

    def __post_init__(self) -> None:
        _check_positive_float(self, "output_fps")
        _check_int(self, "max_num_frames", minimum=-1)

    @property
    def uses_fps(self) -> bool:
        return True

    def _views(self, vlen: int, fps: float, rng: Rng | None) -> list[np.ndarray]:
        delta = 1 / self.output_fps
        frame_seconds = np.arange(delta / 2, vlen / fps + delta / 2, delta)
        indices = np.around(frame_seconds * fps).astype(np.int64)
        indices = indices[indices < vlen]
        return [indices[: self.max_num_frames] if self.max_num_frames > 0 else indices]


@dataclass(frozen=True)
class FfmpegFps(Sampler):
    """The frames FFmpeg's `fps` filter keeps (default rounding 'near'): one per 1/output_fps seconds."""

    output_fps: float

    def __post_init__(self) -> None:
        _check_positive_float(self, "output_fps")

    @property
    def uses_fps(self) -> bool:
        return True

    def _views(self, vlen: int, fps: float, rng: Rng | None) -> list[np.ndarray]:
        ratio = Fraction(fps).limit_denominator(100000) / Fraction(self.output_fps).limit_denominator(100000)
        count = math.floor(vlen / ratio + Fraction(1, 2))  # the end time in output frames, rounded half up
        indices = [min(math.ceil((n + Fraction(1, 2)) * ratio) - 1, vlen - 1) for n in range(count)]
        return [np.asarray(indices, dtype=np.int64)]


@dataclass(frozen=True)
class DenseRandomClip(Sampler):
    """EVL training clip (also fixed-fps training clips): evenly spaced frames from a random start."""

    num_frames: int
    sampling_rate: int = 1
    target_fps: float | None = None

    def __post_init__(self) -> None:
        _check_clip_params(self)

    @property
    def needs_rng(self) -> bool:
        return True

    @property
    def uses_fps(self) -> bool:
        return self.target_fps is not None

    def _views(self, vlen: int, fps: float, rng: Rng | None) -> list[np.ndarray]:
        offsets = _clip_offsets(self, fps)
        span = int(offsets[-1]) + 1
        if span >= vlen:
            inside = offsets[offsets < vlen]
            return [np.where(offsets < vlen, offsets, inside[-1])]
        return [_randint(rng, 0, vlen - span + 1) + offsets]


@dataclass(frozen=True)
class TsnSegments(Sampler):
    """EVL TSN sampling: one random frame from each of num_frames overlapping, rounded segments."""

    num_frames: int

    def __post_init__(self) -> None:
        _check_positive_int(self, "num_frames")

    @property
    def needs_rng(self) -> bool:
        return True

    def _views(self, vlen: int, fps: float, rng: Rng | None) -> list[list[int]]:
        seg_size = (vlen - 1) / self.num_frames
        return [[_randint(rng, round(seg_size * i), round(seg_size * (i + 1)) + 1) for i in range(self.num_frames)]]


@dataclass(frozen=True)
class UniformViews(Sampler):
    """EVL evaluation temporal crops: num_views evenly placed clips, short videos padded with the last frame."""

    num_frames: int
    num_views: int = 1
    sampling_rate: int = 1
    target_fps: float | None = None

    def __post_init__(self) -> None:
        _check_clip_params(self)
        _check_positive_int(self, "num_views")

    @property
    def uses_fps(self) -> bool:
        return self.target_fps is not None

    def _views(self, vlen: int, fps: float, rng: Rng | None) -> list[np.ndarray]:
        offsets = _clip_offsets(self, fps)
        slack = max(vlen - (int(offsets[-1]) + 1), 0)
        if self.num_views == 1:
            starts = [slack // 2]
        else:
            starts = [round(slack / (self.num_views - 1) * i) for i in range(self.num_views)]
        return [np.minimum(start + offsets, vlen - 1) for start in starts]


@dataclass(frozen=True)
class ShiftedClips(Sampler):
    """GDT pretraining: two clips (tau1, tau2) of one video, each a `DenseRandomClip` from its own start."""

    num_frames: int
    sampling_rate: int = 1
    target_fps: float | None = None
    distinct: bool = True

    def __post_init__(self) -> None:
        _check_clip_params(self)

    @property
    def needs_rng(self) -> bool:
        return True

    @property
    def uses_fps(self) -> bool:
        return self.target_fps is not None

    def _views(self, vlen: int, fps: float, rng: Rng | None) -> list[np.ndarray]:
        offsets = _clip_offsets(self, fps)
        span = int(offsets[-1]) + 1
        if span >= vlen:  # one possible start: both clips are the whole video, padded with its last frame
            inside = offsets[offsets < vlen]
            clip = np.where(offsets < vlen, offsets, inside[-1])
            return [clip, clip.copy()]
        starts = vlen - span + 1
        first = _randint(rng, 0, starts)
        if not self.distinct:
            second = _randint(rng, 0, starts)
        else:  # uniform over the other starts
            second = _randint(rng, 0, starts - 1)
            second += second >= first
        return [first + offsets, second + offsets]


def _fit_rand(num_frames: int) -> Sampler:
    return SegmentRandom(num_frames, singularity=False)


def _fit_uniform(num_frames: int, fix_start: int | None = None) -> Sampler:
    return SegmentMiddle(num_frames, fix_start, pad_with_last=False)


def _singularity_rand(num_frames: int) -> Sampler:
    return SegmentRandom(num_frames, singularity=True)


def _singularity_middle(num_frames: int, fix_start: int | None = None) -> Sampler:
    return SegmentMiddle(num_frames, fix_start, pad_with_last=True)


def _evl_train(num_frames: int, sampling_rate: int = 1) -> Sampler:
    return DenseRandomClip(num_frames, sampling_rate)


def _fixed_fps(num_frames: int, target_fps: float, sampling_rate: int = 1, start: str = "random") -> Sampler:
    if start == "random":
        return DenseRandomClip(num_frames, sampling_rate, target_fps)
    if start == "center":
        return UniformViews(num_frames, 1, sampling_rate, target_fps)
    raise ConfigError(f"fixed_fps: start must be 'random' (training) or 'center' (evaluation), got {start!r}")


SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "fit_rand": _fit_rand,
    "fit_uniform": _fit_uniform,
    "fit_sliding_window": SlidingWindow,
    "singularity_rand": _singularity_rand,
    "singularity_middle": _singularity_middle,
    "singularity_fps": FpsFrames,
    "ffmpeg_fps": FfmpegFps,
    "evl_train": _evl_train,
    "evl_tsn": TsnSegments,
    "evl_eval": UniformViews,
    "uniform_views": UniformViews,
    "fixed_fps": _fixed_fps,
    "gdt_shift": ShiftedClips,
}


def make_sampler(name: str | None = None, **params: Any) -> Sampler:
    """Build a sampler from its name and parameters, as a dataset does with ``make_sampler(**cfg.sampler)``."""
    if not isinstance(name, str) or name not in SAMPLERS:
        known = ", ".join(sorted(SAMPLERS))
        raise ConfigError(f"unknown frame sampler {name!r}; choose one of: {known}")
    builder = SAMPLERS[name]
    signature = inspect.signature(builder)
    try:
        signature.bind(**params)
    except TypeError as e:
        accepted = ", ".join(signature.parameters)
        raise ConfigError(f"sampler {name!r}: {e} (it takes: {accepted})") from None
    return builder(**params)


def _frame_count(vlen: Any) -> int:
    try:
        count = operator.index(vlen)
    except TypeError:
        raise SamplingError(f"number of video frames must be an integer, got {vlen!r}") from None
    if count < 1:
        raise SamplingError(f"cannot sample frames from a video with {count} frames")
    return count


def _video_fps(sampler: Sampler, fps: Any) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SamplingError(f"{sampler}: needs the video's frame rate, got fps={fps!r}")
    return value


def _pad_with_last(indices: np.ndarray, num_frames: int) -> np.ndarray:
    if len(indices) >= num_frames:
        return indices
    return np.concatenate([indices, np.full(num_frames - len(indices), indices[-1], dtype=indices.dtype)])


def _clip_offsets(sampler: DenseRandomClip | UniformViews | ShiftedClips, fps: float) -> np.ndarray:
    """Frame offsets of a clip from its start: k * step source frames, step from the stride or the target fps."""
    step = float(sampler.sampling_rate)
    if sampler.target_fps is not None:
        step *= fps / sampler.target_fps
    return np.floor(np.arange(sampler.num_frames) * step + 0.5).astype(np.int64)


def _randint(rng: Rng | None, low: int, high: int) -> int:
    """A uniform integer in [low, high), drawn from the caller's generator."""
    if isinstance(rng, random.Random):
        return rng.randrange(low, high)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high))
    raise SamplingError(f"rng must be a numpy.random.Generator or random.Random, got {type(rng).__name__}")


def _sorted_subset(rng: Rng | None, n: int, k: int) -> np.ndarray:
    """k distinct indices of range(n), sorted: Singularity's permutation fallback."""
    if isinstance(rng, random.Random):
        return np.array(sorted(rng.sample(range(n), k)))
    if isinstance(rng, np.random.Generator):
        return np.sort(rng.permutation(n)[:k])
    raise SamplingError(f"rng must be a numpy.random.Generator or random.Random, got {type(rng).__name__}")


def _check_int(sampler: Sampler, field: str, minimum: int) -> None:
    value = getattr(sampler, field)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{type(sampler).__name__}: {field} must be an integer >= {minimum}, got {value!r}")


def _check_positive_int(sampler: Sampler, field: str) -> None:
    _check_int(sampler, field, minimum=1)


def _check_positive_float(sampler: Sampler, field: str) -> None:
    value = getattr(sampler, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{type(sampler).__name__}: {field} must be a positive number, got {value!r}")


def _check_clip_params(sampler: DenseRandomClip | UniformViews | ShiftedClips) -> None:
    _check_positive_int(sampler, "num_frames")
    _check_positive_int(sampler, "sampling_rate")
    if sampler.target_fps is not None:
        _check_positive_float(sampler, "target_fps")
