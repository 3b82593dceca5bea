"""Generate a ShapesBench dataset: plan, render and encode in parallel, annotate, stamp.

The dataset is a pure function of (preset, seed): every clip draws from its own random stream
`(seed, stream, index)`, so the result does not depend on the number of workers or their order.
A dataset is built in a hidden sibling folder and renamed into place when complete, with
`manifest.json` written last; `generate` on a folder holding a complete dataset with the same
parameters returns at once, which makes it safe to call from every test session and demo run.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vidlab.data.shapesbench.annotations import SPLITS, write_annotations
from vidlab.data.shapesbench.audio import SAMPLE_RATE, render_audio
from vidlab.data.shapesbench.media import write_image, write_video
from vidlab.data.shapesbench.render import render_frame, render_frames
from vidlab.data.shapesbench.scene import (
    LABEL_TASKS,
    PROGRAMS,
    SceneSpec,
    ShapesBenchError,
    sample_scene,
    sample_still,
    scene_labels,
)
from vidlab.data.shapesbench.text import (
    image_captions,
    multiple_choice,
    video_captions,
    video_questions,
)
from vidlab.data.workers import WorkerError, map_in_workers

GENERATOR_VERSION = 2  # bump whenever output for the same parameters changes
MANIFEST = "manifest.json"
SERIAL_BELOW = 200  # files; smaller datasets are generated in-process unless num_workers says otherwise
STALL_S = 300.0  # a file takes well under a second to make: a worker silent this long is stuck
VIDEO_DIR = "videos"
IMAGE_DIR = "images"

# Independent random streams per item, so adding a caption template does not move any pixel.
_STREAM_VIDEO_SCENE, _STREAM_VIDEO_TEXT, _STREAM_IMAGE_SCENE, _STREAM_IMAGE_TEXT, _STREAM_PLAN = range(5)


@dataclass(frozen=True)
class Preset:
    """A dataset size: how many clips and images, at which resolution, frame rates, durations and splits."""

    name: str
    num_videos: int
    num_images: int
    resolution: int
    fps_choices: tuple[int, ...]
    duration_s: tuple[float, float]
    split_fractions: tuple[float, float, float]

    def scene_spec(self) -> SceneSpec:
        return SceneSpec(width=self.resolution, height=self.resolution, fps_choices=self.fps_choices,
                         duration_s=self.duration_s)


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 40, 16, 64, (8, 10, 12), (2.0, 3.0), (0.6, 0.2, 0.2)),
    "small": Preset("small", 2000, 400, 64, (8, 10, 12, 15), (2.0, 4.0), (0.8, 0.1, 0.1)),
    "large": Preset("large", 20000, 4000, 96, (8, 10, 12, 15), (2.0, 4.0), (0.8, 0.1, 0.1)),
}


def resolve_preset(size: str, count: int | None = None) -> Preset:
    """The preset named `size`, with `count` clips (and count/5 images) when given."""
    if size not in PRESETS:
        raise ShapesBenchError(f"unknown ShapesBench size {size!r}; expected one of {sorted(PRESETS)}")
    preset = PRESETS[size]
    if count is None:
        return preset
    if count < len(PROGRAMS):
        raise ShapesBenchError(f"count must be at least {len(PROGRAMS)} (one clip per program), got {count}")
    return Preset(preset.name, count, max(1, count // 5), preset.resolution, preset.fps_choices,
                  preset.duration_s, preset.split_fractions)


@dataclass(frozen=True)
class _Job:
    root: str
    kind: str  # "video" or "image"
    index: int
    seed: int
    preset: Preset
    program: str
    split: str


def generate(
    out_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    num_workers: int | None = None,
    *,
    count: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Generate ShapesBench into `out_dir` (or find it there) and return the dataset root.

    `count` overrides the number of clips of the size preset (mainly for `large`). An existing
    complete dataset with the same parameters is reused; one with other parameters is an error
    unless `overwrite` is set. `num_workers` defaults to the usable CPU count (1 below
    SERIAL_BELOW files, where starting processes costs more than it saves).
    """
    if seed < 0:
        raise ShapesBenchError(f"seed must be non-negative, got {seed}")
    root = Path(out_dir).expanduser().resolve()
    preset = resolve_preset(size, count)
    params = _params(preset, seed)
    existing = read_manifest(root)
    if existing is not None:
        if existing["params"] == params:
            return root
        if not overwrite and {**existing["params"], "version": GENERATOR_VERSION} == params:
            raise ShapesBenchError(
                f"{root} holds ShapesBench made by generator version {existing['params'].get('version')}; this "
                f"vidlab makes version {GENERATOR_VERSION} of the same scenes: make it anew with `vidlab data synth "
                f"--size {size} --seed {seed}{'' if count is None else f' --count {count}'} --out {root} --overwrite` "
                "(or choose another folder)"
            )
        if not overwrite:
            raise ShapesBenchError(
                f"{root} holds ShapesBench {_describe(existing['params'])}, not {_describe(params)}; "
                "choose another output folder or overwrite it (--overwrite)"
            )
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ShapesBenchError(f"{root} exists, is not empty and holds no complete ShapesBench dataset")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _build(staging, preset, seed, params, num_workers, progress)
        if existing is not None:
            shutil.rmtree(root)
        return _move_into_place(staging, root, params)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of a complete dataset at `root`, or None when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShapesBenchError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("generator") != "shapesbench":
        raise ShapesBenchError(f"{path}: not a ShapesBench manifest")
    return manifest


def _params(preset: Preset, seed: int) -> dict[str, Any]:
    return {"version": GENERATOR_VERSION, "seed": seed, **json.loads(json.dumps(asdict(preset)))}


def _describe(params: dict[str, Any]) -> str:
    return (f"size={params.get('name')} seed={params.get('seed')} videos={params.get('num_videos')} "
            f"version={params.get('version')}")


def _move_into_place(staging: Path, root: Path, params: dict[str, Any]) -> Path:
    """Rename the finished dataset to `root`; if another process won the race with the same
    parameters, keep theirs."""
    try:
        if root.exists():
            root.rmdir()  # only ever an empty folder here
        os.rename(staging, root)
    except OSError:
        winner = read_manifest(root)
        if winner is None or winner["params"] != params:
            raise ShapesBenchError(f"{root} changed while ShapesBench was being generated") from None
    return root


def _build(staging: Path, preset: Preset, seed: int, params: dict[str, Any], num_workers: int | None,
           progress: bool) -> None:
    (staging / VIDEO_DIR).mkdir(parents=True)
    (staging / IMAGE_DIR).mkdir()
    plan_rng = np.random.default_rng([seed, _STREAM_PLAN])
    programs = _balanced(preset.num_videos, PROGRAMS)
    video_splits = _spread_splits(preset.num_videos, preset.split_fractions)
    image_splits = _spread_splits(preset.num_images, preset.split_fractions)
    video_order = plan_rng.permutation(preset.num_videos)  # position in the plan -> clip index
    image_order = plan_rng.permutation(preset.num_images)
    jobs = [_Job(str(staging), "video", int(video_order[p]), seed, preset, programs[p], video_splits[p])
            for p in range(preset.num_videos)]
    jobs += [_Job(str(staging), "image", int(image_order[p]), seed, preset, "still", image_splits[p])
             for p in range(preset.num_images)]
    if num_workers is None:  # starting worker processes costs ~1 s: not worth it for a few dozen files
        num_workers = _usable_cpus() if len(jobs) >= SERIAL_BELOW else 1
    workers = max(1, min(num_workers, len(jobs)))
    records: list[dict[str, Any]] = []
    with tqdm(total=len(jobs), desc=f"ShapesBench {preset.name}", unit="file", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                records.append(_make_item(job))
                bar.update()
        else:
            try:
                for record in map_in_workers(_make_item, jobs, workers, stall_s=STALL_S, what="ShapesBench generation"):
                    records.append(record)
                    bar.update()
            except WorkerError as e:
                raise ShapesBenchError(str(e)) from None
    videos = sorted((r for r in records if r["kind"] == "video"), key=lambda r: r["index"])
    images = sorted((r for r in records if r["kind"] == "image"), key=lambda r: r["index"])
    write_annotations(staging, videos, images)
    manifest = {
        "generator": "shapesbench",
        "params": params,
        "counts": {
            "videos": {s: sum(v["split"] == s for v in videos) for s in SPLITS},
            "images": {s: sum(i["split"] == s for i in images) for s in SPLITS},
            "labelled": {task: sum(v["labels"][task] is not None for v in videos) for task in LABEL_TASKS},
            "questions": sum(len(v["qa"]) for v in videos),
        },
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _make_item(job: _Job) -> dict[str, Any]:
    """Render, encode and annotate one clip or image (runs in a worker process)."""
    spec = job.preset.scene_spec()
    root = Path(job.root)
    if job.kind == "image":
        scene = sample_still(spec, np.random.default_rng([job.seed, _STREAM_IMAGE_SCENE, job.index]))
        text_rng = np.random.default_rng([job.seed, _STREAM_IMAGE_TEXT, job.index])
        suffix = "png" if job.index % 2 == 0 else "jpg"  # both still-image decoders get exercised
        rel = f"{IMAGE_DIR}/{job.index:06d}.{suffix}"
        write_image(root / rel, render_frame(scene, 0))
        return {"kind": "image", "index": job.index, "path": rel, "split": job.split,
                "captions": image_captions(scene, text_rng), "labels": scene_labels(scene),
                "scene": asdict(scene)}
    scene = sample_scene(spec, job.program, np.random.default_rng([job.seed, _STREAM_VIDEO_SCENE, job.index]))
    text_rng = np.random.default_rng([job.seed, _STREAM_VIDEO_TEXT, job.index])
    rel = f"{VIDEO_DIR}/{job.index:06d}.mp4"
    write_video(root / rel, render_frames(scene), scene.fps, render_audio(scene), SAMPLE_RATE,
                gop_size=scene.gop_size, max_b_frames=scene.max_b_frames, audio_codec=scene.audio_codec)
    captions = video_captions(scene, text_rng)
    questions = video_questions(scene, text_rng)
    for k, q in enumerate(questions):
        q["question_id"] = job.index * 16 + k
    options, answer = multiple_choice(scene, text_rng)
    return {
        "kind": "video", "index": job.index, "path": rel, "split": job.split, "program": scene.program,
        "duration": scene.duration_s, "num_frames": scene.num_frames, "fps": scene.fps,
        "labels": scene_labels(scene),
        "captions": [c for c, _ in captions], "caption_temporal": [t for _, t in captions],
        "qa": questions, "mc": {"caption": options, "answer": answer},
        "events": scene.events(), "scene": asdict(scene),
    }


def _balanced(n: int, names: tuple[str, ...]) -> list[str]:
    """n names, as equal in number as possible, grouped by name (program-major order)."""
    base, extra = divmod(n, len(names))
    return [name for i, name in enumerate(names) for _ in range(base + (i < extra))]


def _spread_splits(n: int, fractions: tuple[float, float, float]) -> list[str]:
    """Split names for n positions, each split spread evenly along the sequence (so a program-major
    sequence is stratified by program). Each position goes to the split furthest behind its quota."""
    assigned = [0] * len(SPLITS)
    out = []
    for i in range(n):
        behind = [f * (i + 1) - a for f, a in zip(fractions, assigned)]
        s = int(np.argmax(behind))
        assigned[s] += 1
        out.append(SPLITS[s])
    return out


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
