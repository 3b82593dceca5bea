"""`vidlab bench data`: clips/s and peak memory of vidlab's clip loading next to two references.

For each sampling setup (FiT, EVL, GDT) and DataLoader worker count, the same seeded clips are loaded by

- ``vidlab``: `MediaDataset` as training runs it: probe, the system's sampler, `read_frames` (+ `read_audio`),
  the system's training resize/crop;
- ``vidlab decode``: the same without the transform, the fair partner of the lower bound;
- ``naive``: PyAV decodes every frame of the video, then the wanted ones are picked (EVL's official
  loader); same transform as ``vidlab``;
- ``lower bound``: the ffmpeg CLI decodes exactly the GOP spans the clip needs, one process per
  contiguous span (+ one for the audio window), process launches included.

Every (setup, workers, method) cell runs in a fresh process (`run_isolated`), so its peak RSS is its own.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vidlab.bench.common import BenchError, format_ratio, markdown_table, run_isolated
from vidlab.data.datasets import AudioWindow, MediaDataset, Transform, sample_rng
from vidlab.data.formats import MediaRecord
from vidlab.data.transforms import build_transform
from vidlab.data.workers import loader_kwargs, start_method
from vidlab.io import VideoInfo, cli_read_frames, ffmpeg_executable, probe
from vidlab.io.container import first_video_stream, open_container
from vidlab.io.ffmpeg import FFMPEG_ENV, run_ffmpeg
from vidlab.io.index import FrameIndex, frame_index
from vidlab.io.sampling import make_sampler
from vidlab.testing.media import make_video

VIDLAB, VIDLAB_DECODE, NAIVE, LOWER_BOUND = "vidlab", "vidlab decode", "naive", "lower bound"
METHODS = (VIDLAB, VIDLAB_DECODE, NAIVE, LOWER_BOUND)
TRANSFORMED = (VIDLAB, NAIVE)  # the others stop after decoding


def backend_method(backend: str) -> str:
    """The decode-only vidlab method on one named backend (the comparison that picks the default)."""
    return f"{VIDLAB_DECODE} [{backend}]"


def _method_backend(method: str) -> str | None:
    prefix = f"{VIDLAB_DECODE} ["
    return method[len(prefix) : -1] if method.startswith(prefix) and method.endswith("]") else None
AUDIO_RATE = 24000  # GDT's spectrogram input rate
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})
# The generated benchmark set: 10-s 30-fps 340x256 H.264 clips with 1-s GOPs and 48 kHz AAC audio.
# noise=8 gives ~0.75 Mbit/s, the bitrate of web video at this size (plain testsrc2 decodes unrealistically fast).
BENCH_VIDEO: dict[str, Any] = {
    "codec": "h264", "num_frames": 300, "fps": 30.0, "size": (340, 256), "gop": 30,
    "audio": True, "audio_sample_rate": 48000, "noise": 8,
}
# Targets from the issue, checked on the EVL setup.
TARGET_SETUP = "evl"
TARGET_VS_NAIVE = 2.0
TARGET_VS_LOWER_BOUND = 0.7


@dataclass(frozen=True)
class Setup:
    """One system's training clip: sampler (`make_sampler` kwargs), transform (`build_transform` config), audio."""

    name: str
    title: str
    sampler: dict[str, Any]
    num_frames: int
    transform: dict[str, Any]
    audio_seconds: float | None = None


# The resize/crop (+ flip, normalise) of each system's training preset; RandAugment and colour jitter are
# left out because they cost the same whichever decoder produced the frames.
SETUPS: dict[str, Setup] = {
    "fit": Setup("fit", "FiT 4 rand @224", {"name": "fit_rand", "num_frames": 4}, 4, {"preset": "fit"}),
    "evl": Setup(
        "evl", "EVL 8x16 @224", {"name": "evl_train", "num_frames": 8, "sampling_rate": 16}, 8,
        {"preset": "evl", "rand_augment": None},
    ),
    "gdt": Setup(
        "gdt", "GDT 30 @112 + 1 s audio", {"name": "fixed_fps", "num_frames": 30, "target_fps": 30.0}, 30,
        {"preset": "gdt", "color_jitter": 0.0}, audio_seconds=1.0,
    ),
}


@dataclass(frozen=True)
class Span:
    """One ffmpeg process of the lower bound: `count` frames from the keyframe at rank `first`.

    `start_s` is the `-ss` that makes ffmpeg start decoding at that keyframe (None: the file start).
    """

    start_s: float | None
    first: int
    count: int


@dataclass(frozen=True)
class PlannedClip:
    """One benchmark sample, fixed before any method runs so that every method loads the same frames."""

    path: str
    indices: tuple[int, ...]
    torch_seed: int
    audio_start_s: float
    spans: tuple[Span, ...]


@dataclass(frozen=True)
class CellResult:
    setup: str
    workers: int
    method: str
    clips: int
    seconds: float
    peak_rss_mib: float

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds


@dataclass
class BenchReport:
    videos: list[str]
    video_note: str
    clips: int
    seed: int
    baseline_rss_mib: float
    ffmpeg: str
    worker_start: str  # how DataLoader workers start: the multiprocessing start method
    cells: list[CellResult] = field(default_factory=list)

    def find(self, setup: str, workers: int, method: str) -> CellResult | None:
        return next((c for c in self.cells if (c.setup, c.workers, c.method) == (setup, workers, method)), None)


# --- the benchmark video set -------------------------------------------------------------------------


def bench_video_note() -> str:
    """What the generated benchmark set is, for the report header."""
    width, height = BENCH_VIDEO["size"]
    seconds = BENCH_VIDEO["num_frames"] / BENCH_VIDEO["fps"]
    return (
        f"generated: {seconds:g}-s {BENCH_VIDEO['fps']:g}-fps {width}x{height} {BENCH_VIDEO['codec']}, "
        f"GOP {BENCH_VIDEO['gop']} frames, {BENCH_VIDEO['audio_sample_rate']} Hz audio, noise {BENCH_VIDEO['noise']}"
    )


def benchmark_videos(workdir: Path, count: int) -> list[Path]:
    """The generated benchmark set in `workdir`: made once with `make_video`, reused by later runs."""
    if count < 1:
        raise BenchError(f"--num-videos must be >= 1, got {count}")
    width, height = BENCH_VIDEO["size"]
    stem = (
        f"{BENCH_VIDEO['codec']}_{width}x{height}_{BENCH_VIDEO['fps']:g}fps_{BENCH_VIDEO['num_frames']}f"
        f"_gop{BENCH_VIDEO['gop']}_noise{BENCH_VIDEO['noise']}_audio{BENCH_VIDEO['audio_sample_rate']}"
    )
    paths = [workdir / f"{stem}_{i:03d}.mp4" for i in range(count)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.exists()]
    progress = tqdm(missing, desc="generating benchmark videos", unit="video", file=sys.stderr, disable=not missing)
    for i, path in progress:
        partial = path.with_name(f"{path.stem}.partial.mp4")  # an interrupted run leaves no half file behind
        # A different tone per file keeps the files distinct (the picture is the same test pattern).
        make_video(partial, audio_freqs=(220.0 + 55.0 * i,), **BENCH_VIDEO)
        partial.replace(path)
    return paths


def videos_in(folder: Path) -> list[Path]:
    """The video files directly in `folder`, sorted by name."""
    if not folder.is_dir():
        raise BenchError(f"--videos {folder}: not a folder")
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise BenchError(f"--videos {folder}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return videos


# --- planning: the same clips for every method --------------------------------------------------------


# Frames the lower bound decodes through rather than start another ffmpeg process: a launch costs
# 20-100 ms (static vs distribution build), about 30 frames of 340x256 H.264 (measured here).
MERGE_GAP_FRAMES = 30


def gop_spans(index: FrameIndex, ranks: Sequence[int], start_time_s: float) -> tuple[Span, ...]:
    """The lower bound's ffmpeg processes for frames `ranks`: one per run of needed frames.

    A wanted frame needs the frames from the keyframe opening its GOP up to itself; needs that overlap,
    touch, or are fewer than `MERGE_GAP_FRAMES` apart merge into one span, since decoding a few extra
    frames costs less than launching another process. `start_time_s` is the container's start time, which ffmpeg
    adds to `-ss`. The seek time sits 1 us before the keyframe: ffmpeg's seek rounds it to the
    keyframe's own timestamp, and its exact-seek trimming then keeps the keyframe itself.
    """
    wanted = np.unique(np.asarray(ranks, dtype=np.int64))
    key_pts = index.decode_pts[index.start_positions(wanted)]
    key_ranks = np.searchsorted(index.frame_pts, key_pts).tolist()
    runs: list[list[int]] = []
    for key, rank in zip(key_ranks, wanted.tolist()):
        if runs and key <= runs[-1][1] + MERGE_GAP_FRAMES:
            runs[-1][1] = rank
        else:
            runs.append([key, rank])
    spans = []
    for first, last in runs:
        seek_s = float(index.frame_pts[first] * index.time_base) - start_time_s - 1e-6
        spans.append(Span(seek_s if first > 0 else None, first, last - first + 1))
    return tuple(spans)


def plan_clips(setup: Setup, videos: Sequence[Path], num_clips: int, seed: int) -> list[PlannedClip]:
    """Clip `i` comes from video `i % len(videos)`, with the indices `MediaDataset` draws for sample `i`.

    `MediaDataset` seeds sample `i` of epoch 0 with `sample_rng(seed, 0, i, 0)` and calls the sampler
    first, so drawing here with the same generator reproduces its indices and transform seed.
    """
    sampler = make_sampler(**setup.sampler)
    facts: dict[Path, tuple[VideoInfo, FrameIndex, float]] = {}
    for path in videos:
        info = probe(path)
        if setup.audio_seconds and not info.has_audio:
            raise BenchError(
                f"{path}: has no audio, which the {setup.name} setup needs (leave {setup.name} out of --setups)"
            )
        with open_container(path) as container:
            start_time_s = (container.start_time or 0) / av.time_base
        facts[path] = (info, frame_index(path), start_time_s)
    plan = []
    for i in range(num_clips):
        path = videos[i % len(videos)]
        info, index, start_time_s = facts[path]
        rng, torch_seed = sample_rng(seed, 0, i, 0)
        views = sampler(info.num_frames, info.fps, rng)
        if len(views) != 1:
            raise BenchError(f"setup {setup.name}: the benchmark needs 1 temporal view, the sampler gave {len(views)}")
        indices = views[0].tolist()
        spans = gop_spans(index, indices, start_time_s)
        plan.append(PlannedClip(str(path), tuple(indices), torch_seed, indices[0] / info.fps, spans))
    return plan


# --- the reference loaders -----------------------------------------------------------------------------


def naive_frames(clip: PlannedClip) -> torch.Tensor:
    """EVL's official loader: PyAV (default settings) decodes every frame, frames are ordered by pts, and
    the wanted ones are converted to RGB."""
    with open_container(clip.path) as container:
        frames_by_pts = {frame.pts: frame for frame in container.decode(first_video_stream(container, clip.path))}
    ordered = [frames_by_pts[pts] for pts in sorted(frames_by_pts)]
    return torch.from_numpy(np.stack([ordered[i].to_ndarray(format="rgb24") for i in clip.indices]))


def naive_audio(path: str, start_s: float, seconds: float) -> torch.Tensor:
    """The whole audio stream decoded and resampled to mono `AUDIO_RATE`, then cut to the window: `(N,)`."""
    length = int(round(seconds * AUDIO_RATE))
    resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
    with open_container(path) as container:
        chunks = [out.to_ndarray()[0] for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray()[0] for out in resampler.resample(None)]
    first = int(round(start_s * AUDIO_RATE))
    wave = torch.from_numpy(np.concatenate(chunks)[first : first + length])
    return torch.nn.functional.pad(wave, (0, length - len(wave)))


def lower_bound_frames(clip: PlannedClip) -> torch.Tensor:
    """One ffmpeg process per planned span, decoding the whole span and converting only the wanted frames."""
    wanted = np.asarray(clip.indices, dtype=np.int64)
    frames: torch.Tensor | None = None
    for span in clip.spans:
        inside = (wanted >= span.first) & (wanted < span.first + span.count)
        offsets = np.unique(wanted[inside] - span.first)
        decoded = cli_read_frames(clip.path, start_s=span.start_s, num_frames=span.count, keep=offsets.tolist())
        if len(decoded) != len(offsets):
            raise BenchError(f"{clip.path}: ffmpeg gave {len(decoded)} of {len(offsets)} frames from frame {span.first}")
        if frames is None:
            frames = torch.empty((len(wanted), *decoded.shape[1:]), dtype=torch.uint8)
        frames[torch.from_numpy(inside)] = decoded[torch.from_numpy(np.searchsorted(offsets, wanted[inside] - span.first))]
    assert frames is not None, "a clip has at least one span"
    return frames


def lower_bound_audio(path: str, start_s: float, seconds: float) -> torch.Tensor:
    """The audio window alone, seeked, decoded and resampled to mono `AUDIO_RATE` by one ffmpeg process: `(N,)`."""
    length = int(round(seconds * AUDIO_RATE))
    args = ["-loglevel", "error", "-ss", f"{start_s:.6f}", "-t", f"{seconds:.6f}", "-i", path, "-map", "0:a:0"]
    proc = run_ffmpeg([*args, "-ac", "1", "-ar", str(AUDIO_RATE), "-f", "f32le", "-"], what=f"decoding audio of {path}")
    wave = torch.from_numpy(np.frombuffer(proc.stdout, dtype=np.float32)[:length].copy())
    return torch.nn.functional.pad(wave, (0, length - len(wave)))


def lower_bound_ffmpeg() -> str:
    """The ffmpeg the lower bound runs: `VIDLAB_FFMPEG` when set, else imageio-ffmpeg's static build, else
    `ffmpeg_executable()`'s. The static build launches in ~20 ms where a distribution build, which links
    ~200 shared libraries, takes ~100 ms (measured): the bound should not be inflated by the dynamic linker."""
    if os.environ.get(FFMPEG_ENV):
        return ffmpeg_executable()
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return ffmpeg_executable()


FrameDecoder = Callable[[PlannedClip], torch.Tensor]
AudioDecoder = Callable[[str, float, float], torch.Tensor]  # (path, start_s, seconds) -> (N,)
REFERENCE_DECODERS: dict[str, tuple[FrameDecoder, AudioDecoder]] = {
    NAIVE: (naive_frames, naive_audio),
    LOWER_BOUND: (lower_bound_frames, lower_bound_audio),
}


class ReferenceClips(Dataset):
    """The naive or lower-bound loader over planned clips, shaped like `MediaDataset` samples.

    The transform runs under the clip's torch seed, as in `MediaDataset`, so transformed clips match too.
    """

    def __init__(
        self, plan: Sequence[PlannedClip], method: str, transform: Transform | None, audio_seconds: float | None
    ):
        self.plan = plan
        self.decode_frames, self.decode_audio = REFERENCE_DECODERS[method]
        self.transform = transform
        self.audio_seconds = audio_seconds

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clip = self.plan[i]
        video = self.decode_frames(clip).permute(0, 3, 1, 2)
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(clip.torch_seed)
                video = self.transform(video)
        sample = {"video": video}
        if self.audio_seconds:
            sample["audio"] = self.decode_audio(clip.path, clip.audio_start_s, self.audio_seconds)
        return sample


def clip_dataset(method: str, setup: Setup, plan: Sequence[PlannedClip], seed: int) -> Dataset:
    """The dataset that loads `plan` with `method`; sample `i` holds the frames of `plan[i]`."""
    backend = _method_backend(method)
    if method not in METHODS and backend is None:
        raise BenchError(f"unknown method {method!r}; known: {', '.join(METHODS)}, {backend_method('NAME')}")
    transform = build_transform(setup.transform, train=True) if method in TRANSFORMED else None
    if method in (VIDLAB, VIDLAB_DECODE) or backend is not None:
        return MediaDataset(
            [MediaRecord(clip.path) for clip in plan],
            make_sampler(**setup.sampler),
            transform,
            num_frames=setup.num_frames,
            seed=seed,
            audio=AudioWindow(setup.audio_seconds, AUDIO_RATE) if setup.audio_seconds else None,
            bad_samples="raise",
            backend=backend,
        )
    return ReferenceClips(plan, method, transform, setup.audio_seconds)


# --- measuring -----------------------------------------------------------------------------------------


def measure_cell(setup: Setup, method: str, plan: Sequence[PlannedClip], workers: int, seed: int, ffmpeg: str) -> float:
    """Seconds to load every clip of `plan` through a DataLoader with `workers` workers.

    Runs in its own process (see `run_isolated`), whose environment points vidlab's ffmpeg calls at `ffmpeg`.
    One untimed warm-up clip first absorbs one-off costs (lazy imports, the ffmpeg lookup); the clock then
    runs from creating the DataLoader (worker start included) to the last clip.
    """
    os.environ[FFMPEG_ENV] = ffmpeg
    dataset = clip_dataset(method, setup, plan, seed)
    dataset[0]
    start = time.perf_counter()
    loaded = sum(1 for _ in DataLoader(dataset, batch_size=None, num_workers=workers, **loader_kwargs(workers)))
    seconds = time.perf_counter() - start
    if loaded != len(plan):
        raise BenchError(f"{method}: loaded {loaded} of {len(plan)} clips")
    return seconds


def _idle() -> None:
    """Nothing: run isolated, it measures the import-only baseline RSS of a measurement process."""


def run_benchmark(
    videos: Sequence[Path],
    *,
    setups: Sequence[str],
    workers: Sequence[int],
    clips: int,
    seed: int = 0,
    video_note: str = "",
    backends: Sequence[str] = (),
) -> BenchReport:
    """Measure every (setup, workers, method) cell, each in a fresh process, with a progress bar.

    `backends` adds a decode-only vidlab row per named decoder backend, to compare them side by side.
    """
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        raise BenchError(f"unknown setup(s) {', '.join(unknown)}; known: {', '.join(SETUPS)}")
    if clips < 1:
        raise BenchError(f"--clips must be >= 1, got {clips}")
    if any(w < 0 for w in workers):
        raise BenchError(f"--workers must be >= 0, got {list(workers)}")
    preload = [__name__]
    _, baseline = run_isolated(_idle, {}, preload=preload)
    report = BenchReport(
        [str(v) for v in videos], video_note, clips, seed, baseline,
        ffmpeg=lower_bound_ffmpeg(), worker_start=start_method(),
    )
    methods = METHODS + tuple(backend_method(b) for b in backends)
    cells = [(s, w, m) for s in setups for w in workers for m in methods]
    with tqdm(total=len(cells), desc="bench data", unit="cell", file=sys.stderr) as progress:
        for setup_name in setups:
            setup = SETUPS[setup_name]
            plan = plan_clips(setup, videos, clips, seed)
            for w in workers:
                for method in methods:
                    progress.set_postfix_str(f"{setup_name}, {w} workers, {method}")
                    kwargs = {
                        "setup": setup, "method": method, "plan": plan, "workers": w, "seed": seed,
                        "ffmpeg": report.ffmpeg,
                    }
                    seconds, peak = run_isolated(measure_cell, kwargs, preload=preload)
                    report.cells.append(CellResult(setup_name, w, method, clips, seconds, peak))
                    progress.update()
    return report


# --- reporting -----------------------------------------------------------------------------------------


def target_lines(report: BenchReport) -> list[str]:
    """The issue's targets on the EVL setup, per worker count: met or missed, with the measured ratio."""
    lines = []
    for w in sorted({c.workers for c in report.cells if c.setup == TARGET_SETUP}):
        cell = {m: report.find(TARGET_SETUP, w, m) for m in METHODS}
        vs_naive = cell[VIDLAB].clips_per_s / cell[NAIVE].clips_per_s
        vs_bound = cell[VIDLAB_DECODE].clips_per_s / cell[LOWER_BOUND].clips_per_s
        lines.append(
            f"- {SETUPS[TARGET_SETUP].title}, {w} workers: vidlab / naive = {vs_naive:.2f}x "
            f"(target >= {TARGET_VS_NAIVE:g}x: {'met' if vs_naive >= TARGET_VS_NAIVE else 'MISSED'}); "
            f"vidlab decode / lower bound = {vs_bound:.2f}x "
            f"(target >= {TARGET_VS_LOWER_BOUND:g}x: {'met' if vs_bound >= TARGET_VS_LOWER_BOUND else 'MISSED'})"
        )
    return lines


def render_markdown(report: BenchReport) -> str:
    """The report: what was measured, the setup x method table, how to read it, and the targets."""
    rows = []
    for c in report.cells:
        naive = report.find(c.setup, c.workers, NAIVE)
        bound = report.find(c.setup, c.workers, LOWER_BOUND)
        rows.append((
            SETUPS[c.setup].title, c.workers, c.method, f"{c.clips_per_s:.2f}",
            format_ratio(c.clips_per_s, naive.clips_per_s if naive else None) if c.method in TRANSFORMED else "-",
            format_ratio(c.clips_per_s, bound.clips_per_s if bound else None) if c.method not in TRANSFORMED else "-",
            f"{c.peak_rss_mib:.0f}",
        ))
    headers = ("setup", "workers", "method", "clips/s", "vs naive", "vs lower bound", "peak RSS MiB")
    parts = [
        "## vidlab bench data",
        "",
        f"{len(report.videos)} videos{f' ({report.video_note})' if report.video_note else ''}, "
        f"{report.clips} clips per setup, seed {report.seed}; PyAV {av.__version__}, torch {torch.__version__}, "
        f"ffmpeg CLI {Path(report.ffmpeg).name}.",
        "",
        markdown_table(headers, rows, right_align_from=3),
        "",
        f"- **clips/s**: wall time from creating the DataLoader (`batch_size=None`, workers started by "
        f"{report.worker_start}, start included) to its "
        "last clip, after one untimed warm-up clip; the same seeded clips (video, frame indices, transform seed) "
        "for every method.",
        "- **vidlab**: `MediaDataset` (probe, sampler, `read_frames`, + `read_audio` for GDT) with the setup's "
        "training resize/crop + flip + normalise (`build_transform`, RandAugment and colour jitter off); "
        "**vidlab decode**: the same without the transform.",
        "- **naive**: PyAV with default settings decodes every frame of the video, then indexes (EVL's official "
        "loader); GDT audio: the whole stream decoded and resampled; same transform as vidlab.",
        "- **lower bound**: the ffmpeg CLI decodes only the GOP spans the clip needs, one process per contiguous "
        "span (+ one for the audio window); **its time includes process launch**. No transform, so "
        "**vs lower bound** is given for the decode-only rows (vidlab decode vs lower bound); "
        "**vs naive** for the transformed rows.",
        "- **peak RSS**: each cell runs in a fresh process forked from an import-only server; the figure is the "
        "largest single process of the cell (main, DataLoader worker or ffmpeg; `ru_maxrss` of self and reaped "
        f"children). The import-only baseline of such a process is {report.baseline_rss_mib:.0f} MiB.",
    ]
    targets = target_lines(report)
    if targets:
        parts += ["", "Targets (issue; meant for 10-s 30-fps 340x256 1-s GOP clips):", *targets]
    return "\n".join(parts) + "\n"


def report_json(report: BenchReport) -> dict[str, Any]:
    """The report as plain data, with clips/s per cell."""
    data = dataclasses.asdict(report)
    data["cells"] = [{**dataclasses.asdict(c), "clips_per_s": c.clips_per_s} for c in report.cells]
    data["setups"] = {name: dataclasses.asdict(SETUPS[name]) for name in dict.fromkeys(c.setup for c in report.cells)}
    data["targets"] = target_lines(report)
    return data
