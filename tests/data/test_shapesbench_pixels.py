"""ShapesBench labels and events checked against pixels and samples: rendered frames, decoded clips
and decoded audio. The estimators here read only pixels or samples (plus the object's colour to find
it), never the scene's parameters, so they check the generator from the outside."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidlab.data.shapesbench.audio import SAMPLE_RATE, render_audio
from vidlab.data.shapesbench.media import write_video
from vidlab.data.shapesbench.render import render_frames
from vidlab.data.shapesbench.scene import (
    COLORS,
    MOTION_CLASSES,
    OPPOSITE,
    SYMMETRY_DEG,
    SceneSpec,
    motion_label,
    sample_scene,
)
from vidlab.io import probe, read_audio, read_frames

SPEC = SceneSpec(width=64, height=64, fps_choices=(8, 12), duration_s=(2.0, 3.0))


def object_mask(frames: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """Soft mask (T, H, W) of pixels close to colour `rgb` (1 at the colour, 0 beyond 60 levels away)."""
    distance = np.linalg.norm(frames.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1)
    return np.clip(1.0 - distance / 60.0, 0.0, 1.0)


def centroids(mask: np.ndarray) -> np.ndarray:
    """(T, 2) mask centroids (x, y) in pixels."""
    ys, xs = np.mgrid[0 : mask.shape[1], 0 : mask.shape[2]]
    area = mask.sum(axis=(1, 2))
    return np.stack([(mask * xs).sum(axis=(1, 2)) / area, (mask * ys).sum(axis=(1, 2)) / area], axis=1)


def _rotation_error(first: np.ndarray, last: np.ndarray, clockwise_deg: float) -> float:
    """Mismatch between `last` and `first` turned clockwise by the angle, centroids aligned."""
    (cx0, cy0), (cx1, cy1) = centroids(first[None])[0], centroids(last[None])[0]
    image = Image.fromarray((first * 255).astype(np.uint8))
    turned = image.rotate(-clockwise_deg, resample=Image.Resampling.BILINEAR, center=(cx0, cy0),
                          translate=(cx1 - cx0, cy1 - cy0))
    return float(np.abs(np.asarray(turned, np.float32) / 255 - last).sum())


def motion_from_pixels(frames: np.ndarray, rgb: tuple[int, int, int], symmetry_deg: float | None) -> str:
    """The motion class the pixels of the `rgb` object show over the clip."""
    mask = object_mask(frames, rgb)
    (x0, y0), (x1, y1) = centroids(mask[[0, -1]])
    if max(abs(x1 - x0), abs(y1 - y0)) > 4:
        if abs(x1 - x0) > abs(y1 - y0):
            return "right" if x1 > x0 else "left"
        return "down" if y1 > y0 else "up"
    area_ratio = mask[-1].sum() / mask[0].sum()
    if abs(np.log(area_ratio)) > 0.5:  # scaling changes the area 2.8x or more; rotation by blur only
        return "grow" if area_ratio > 1 else "shrink"
    # Fit a steady rate of turn to the first frame against four later ones. Rotations stay below
    # half the symmetry period (the heart counts as 180), so only the true sense fits on this range.
    n = len(mask)
    later = sorted({n // 4, n // 2, 3 * n // 4, n - 1})
    max_rate = min(symmetry_deg or 360.0, 180.0) / 2 / (n - 1)
    rates = np.linspace(max_rate / 30, max_rate, 30)

    def misfit(rate: float) -> float:
        return sum(_rotation_error(mask[0], mask[j], rate * j) for j in later)

    clockwise = min(misfit(r) for r in rates)
    counterclockwise = min(misfit(-r) for r in rates)
    return "clockwise" if clockwise < counterclockwise else "counterclockwise"


def _scene_cases() -> list[tuple[str, int]]:
    return [(program, seed) for program in MOTION_CLASSES for seed in range(3)]


@pytest.mark.parametrize("program,seed", _scene_cases())
def test_rendered_pixels_show_the_labelled_motion_and_reversal_flips_it(program: str, seed: int) -> None:
    scene = sample_scene(SPEC, program, np.random.default_rng([seed, 99]))
    label = motion_label(scene)
    assert label == program
    frames = render_frames(scene)
    primary = scene.primary
    rgb, symmetry = COLORS[primary.colors[0]], SYMMETRY_DEG.get(primary.shape)
    assert motion_from_pixels(frames, rgb, symmetry) == label
    assert motion_from_pixels(frames[::-1], rgb, symmetry) == OPPOSITE[label]
    backwards = scene.reversed()
    assert motion_label(backwards) == OPPOSITE[label]
    assert np.array_equal(render_frames(backwards), frames[::-1])  # the reversed scene is the clip played backwards


def test_colour_changes_reverse_exactly() -> None:
    scene = sample_scene(SPEC, "color", np.random.default_rng([0, 5]))
    frames = render_frames(scene)
    assert np.array_equal(render_frames(scene.reversed()), frames[::-1])
    shown = [COLORS[c] for c in scene.primary.colors]
    centre = tuple(int(v) for v in scene.primary.position(0.5))
    first_px, last_px = frames[0][centre[1], centre[0]], frames[-1][centre[1], centre[0]]
    assert np.abs(first_px.astype(int) - shown[0]).max() < 10
    assert np.abs(last_px.astype(int) - shown[-1]).max() < 10


def visual_bounces(frames: np.ndarray, rgb: tuple[int, int, int], fps: float) -> list[float]:
    """Times (s) at which the object's motion reverses on an axis along which it clearly moves.

    Steps far smaller than the axis's typical step (codec jitter, or the step that contains the
    bounce itself) are skipped; a flip between the kept steps k1 < k2 is placed half-way between
    their centres, (k1 + k2 + 1) / 2 frames.
    """
    steps = np.diff(centroids(object_mask(frames, rgb)), axis=0)
    times = []
    for axis in (0, 1):
        typical = float(np.median(np.abs(steps[:, axis])))
        if typical < 0.5:
            continue
        kept = [k for k in range(len(steps)) if abs(steps[k, axis]) >= 0.25 * typical]
        for k1, k2 in itertools.pairwise(kept):
            if steps[k1, axis] * steps[k2, axis] < 0:
                times.append((k1 + k2 + 1) / 2 / fps)
    return sorted(times)


def audio_clicks(samples: np.ndarray, sample_rate: int) -> list[float]:
    """Onset times (s) of clicks: bursts where the sample-to-sample change jumps far above a tone's."""
    jumps = np.abs(np.diff(samples)) > 0.25
    onsets, last = [], -1.0
    for index in np.flatnonzero(jumps):
        t = index / sample_rate
        if t - last > 0.05:
            onsets.append(t)
        last = t
    return onsets


@pytest.mark.parametrize("codec", ["pcm_s16le", "aac"])
def test_audio_clicks_align_with_decoded_bounces(tmp_path: Path, codec: str) -> None:
    checked = 0
    for seed in range(3):
        scene = sample_scene(SPEC, "bounce", np.random.default_rng([seed, 7]))
        path = tmp_path / f"bounce{seed}.mp4"
        write_video(path, render_frames(scene), scene.fps, render_audio(scene), SAMPLE_RATE,
                    gop_size=scene.gop_size, max_b_frames=scene.max_b_frames, audio_codec=codec)
        frames = read_frames(path, range(probe(path).num_frames)).numpy()
        seen = visual_bounces(frames, COLORS[scene.primary.colors[0]], scene.fps)
        heard = audio_clicks(read_audio(path, 0.0, None, sample_rate=SAMPLE_RATE).numpy(), SAMPLE_RATE)
        assert len(seen) >= 1 and len(heard) == len(seen), (seen, heard)
        for t_seen, t_heard in zip(seen, heard):
            assert abs(t_seen - t_heard) <= 1.0 / scene.fps
        checked += 1
    assert checked == 3


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]


def test_decoded_tiny_clips_move_as_labelled(shapesbench_tiny: Path) -> None:
    classes = json.loads((shapesbench_tiny / "annotations" / "motion_classes.json").read_text())
    labelled = {}
    for split in ("train", "val", "test"):
        for line in (shapesbench_tiny / "annotations" / f"motion_{split}.txt").read_text().splitlines():
            rel, label = line.rsplit(" ", 1)
            labelled[rel] = classes[int(label)]
    assert set(labelled.values()) == set(MOTION_CLASSES)
    by_path = {r["path"]: r for r in _records(shapesbench_tiny)}
    for rel, label in labelled.items():
        path = shapesbench_tiny / rel
        frames = read_frames(path, range(probe(path).num_frames)).numpy()
        primary = by_path[rel]["scene"]["objects"][0]
        rgb, symmetry = COLORS[primary["colors"][0]], SYMMETRY_DEG.get(primary["shape"])
        assert motion_from_pixels(frames, rgb, symmetry) == label, rel
        assert motion_from_pixels(frames[::-1], rgb, symmetry) == OPPOSITE[label], rel


def test_decoded_tiny_bounces_are_heard(shapesbench_tiny: Path) -> None:
    bouncers = [r for r in _records(shapesbench_tiny) if r.get("program") == "bounce"]
    assert bouncers
    for record in bouncers:
        path = shapesbench_tiny / record["path"]
        frames = read_frames(path, range(probe(path).num_frames)).numpy()
        seen = visual_bounces(frames, COLORS[record["scene"]["objects"][0]["colors"][0]], record["fps"])
        heard = audio_clicks(read_audio(path, 0.0, None, sample_rate=SAMPLE_RATE).numpy(), SAMPLE_RATE)
        assert len(heard) == len(seen) >= 1, (record["path"], seen, heard)
        assert all(abs(a - b) <= 1.0 / record["fps"] for a, b in zip(seen, heard))
