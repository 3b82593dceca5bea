"""ShapesBench generation: idempotence, determinism, annotation files read through vidlab's readers,
cross-file consistency, the CLI, and the trivial-baseline table."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vidlab.bench.shapes_baselines import shapes_baselines
from vidlab.cli.main import main
from vidlab.data.formats import read_annotations
from vidlab.data.shapesbench import (
    APPEARANCE_CLASSES,
    MOTION_CLASSES,
    OPPOSITE,
    SceneSpec,
    ShapesBenchError,
    generate,
    read_manifest,
    sample_scene,
)
from vidlab.data.shapesbench.text import COLOR_WORDS
from vidlab.io import probe, read_frames

SPLITS = ("train", "val", "test")
MOTION_WORDS = ("left", "right", "up", "down", "rise", "sink", "fall", "clockwise", "grow", "shrink", "bigger",
                "smaller", "expand", "contract", "bounc", "turn")


def _ann(root: Path, name: str) -> Path:
    return root / "annotations" / name


def _label_list(root: Path, task: str) -> dict[str, str]:
    classes = json.loads(_ann(root, f"{task}_classes.json").read_text())
    out = {}
    for split in SPLITS:
        for line in _ann(root, f"{task}_{split}.txt").read_text().splitlines():
            rel, label = line.rsplit(" ", 1)
            out[rel] = classes[int(label)]
    return out


def test_generate_returns_at_once_when_the_dataset_exists(shapesbench_tiny: Path) -> None:
    manifest = shapesbench_tiny / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert generate(shapesbench_tiny, "tiny", seed=0, progress=False) == shapesbench_tiny
    assert manifest.stat().st_mtime_ns == stamp
    assert read_manifest(shapesbench_tiny)["params"]["seed"] == 0


def test_generate_refuses_to_mix_datasets(shapesbench_tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ShapesBenchError, match="seed=0"):
        generate(shapesbench_tiny, "tiny", seed=1, progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ShapesBenchError, match="not empty"):
        generate(tmp_path, "tiny", progress=False)
    with pytest.raises(ShapesBenchError, match="unknown ShapesBench size"):
        generate(tmp_path / "x", "medium", progress=False)
    with pytest.raises(ShapesBenchError, match="at least"):
        generate(tmp_path / "x", "tiny", count=3, progress=False)
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # no staging folder left behind


def test_scene_ranges_that_cannot_hold_the_programs_are_refused() -> None:
    with pytest.raises(ShapesBenchError, match="at least 16 frames"):
        SceneSpec(width=64, height=64, fps_choices=(4,), duration_s=(2.0, 3.0))
    with pytest.raises(ShapesBenchError, match="even"):
        SceneSpec(width=63, height=64, fps_choices=(8,), duration_s=(2.0, 3.0))
    with pytest.raises(ShapesBenchError, match="unknown program"):
        sample_scene(SceneSpec(64, 64, (8,), (2.0, 3.0)), "jump", np.random.default_rng(0))


def test_same_seed_gives_identical_files_and_frames_with_any_worker_count(
    shapesbench_tiny: Path, tmp_path: Path
) -> None:
    again = generate(tmp_path / "again", "tiny", seed=0, num_workers=2, progress=False)
    for rel in sorted(p.relative_to(shapesbench_tiny) for p in (shapesbench_tiny / "annotations").iterdir()):
        assert (again / rel).read_bytes() == (shapesbench_tiny / rel).read_bytes(), rel
    assert (again / "metadata.jsonl").read_bytes() == (shapesbench_tiny / "metadata.jsonl").read_bytes()
    videos = sorted((shapesbench_tiny / "videos").iterdir())
    assert len(videos) == 40
    for video in videos:
        n = probe(video).num_frames
        twin = again / "videos" / video.name
        assert np.array_equal(read_frames(video, range(n)).numpy(), read_frames(twin, range(n)).numpy())
    for image in (shapesbench_tiny / "images").iterdir():
        assert (again / "images" / image.name).read_bytes() == image.read_bytes()
    other = generate(tmp_path / "other", "tiny", seed=1, progress=False)
    assert _ann(other, "captions_train.json").read_bytes() != _ann(shapesbench_tiny, "captions_train.json").read_bytes()


def test_annotations_load_through_vidlab_readers(shapesbench_tiny: Path) -> None:
    root = shapesbench_tiny
    answer_list = set(json.loads(_ann(root, "qa_answer_list.json").read_text()))
    seen_videos: set[str] = set()
    for split in SPLITS:
        raw = json.loads(_ann(root, f"captions_{split}.json").read_text())
        captions = read_annotations("singularity", _ann(root, f"captions_{split}.json"), root=root)
        assert len(captions) == len(raw) > 0
        for record, entry in zip(captions, raw):
            assert record.kind == "video" and os.path.isfile(record.path)
            assert len(record.captions) == len(entry["temporal"]) >= 2
            assert any(entry["temporal"]) and not all(entry["temporal"])
            seen_videos.add(record.path)
        images = read_annotations("singularity", _ann(root, f"images_{split}.json"), root=root)
        assert all(r.kind == "image" and os.path.isfile(r.path) and r.captions for r in images)
        qa = read_annotations("singularity", _ann(root, f"qa_{split}.json"), root=root)
        assert {r.path for r in qa} == {r.path for r in captions}
        assert all(r.extra["answers"][0] in answer_list for r in qa)
        assert len({r.extra["question_id"] for r in qa}) == len(qa)
        mc = read_annotations("singularity", _ann(root, f"mc_{split}.json"), root=root)
        assert all(len(set(r.captions)) == 5 and 0 <= r.label < 5 for r in mc)
        for task, classes in (("motion", MOTION_CLASSES), ("appearance", APPEARANCE_CLASSES)):
            labels = read_annotations("evl_list", _ann(root, f"{task}_{split}.txt"), root=root)
            assert all(0 <= r.label < len(classes) and r.path in seen_videos for r in labels)
    assert len(seen_videos) == 40
    for path in sorted(seen_videos)[:5]:
        info = probe(path)
        assert info.codec == "h264" and info.has_audio and (info.width, info.height) == (64, 64)


def test_labels_questions_and_choices_agree(shapesbench_tiny: Path) -> None:
    root = shapesbench_tiny
    motion = _label_list(root, "motion")
    appearance = _label_list(root, "appearance")
    assert set(motion.values()) == set(MOTION_CLASSES)  # every class is present, even in tiny
    for split in SPLITS:
        for entry in json.loads(_ann(root, f"qa_{split}.json").read_text()):
            if entry["qtype"] == "direction":
                assert entry["answer"] == motion[entry["video"]]
            if entry["qtype"] == "color" and entry["video"] in appearance and "object" not in entry["question"]:
                assert entry["answer"] in APPEARANCE_CLASSES
        for entry in json.loads(_ann(root, f"captions_{split}.json").read_text()):
            static = [c for c, temporal in zip(entry["caption"], entry["temporal"]) if not temporal]
            assert not any(word in c for c in static for word in MOTION_WORDS), static
            if entry["video"] in appearance:
                assert all(any(w in c for w in COLOR_WORDS[appearance[entry["video"]]]) for c in static)
        for entry in json.loads(_ann(root, f"mc_{split}.json").read_text()):
            label = motion.get(entry["video"])
            if label is not None:  # the reversed motion is always one of the distractors
                correct = entry["caption"][entry["answer"]]
                assert any(_swap_direction(correct, label, OPPOSITE[label]) == c for c in entry["caption"]), entry


def _swap_direction(caption: str, label: str, opposite: str) -> str:
    """The caption with its direction word(s) replaced by the opposite's."""
    words = {"left": "left", "right": "right", "up": "up", "down": "down", "clockwise": "clockwise",
             "counterclockwise": "counterclockwise", "grow": "grows", "shrink": "shrinks"}
    swap = {words[label]: words[opposite], words[opposite]: words[label]}
    return re.sub(rf"\b({words[label]}|{words[opposite]})\b", lambda m: swap[m.group(1)], caption)


def test_cli_synth_reuses_and_reports(shapesbench_tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(shapesbench_tiny), "--size", "tiny"]) == 0
    assert "24 train, 8 val, 8 test" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(shapesbench_tiny), "--size", "tiny", "--seed", "5"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vidlab: error:") and len(error.strip().splitlines()) == 1


def test_baseline_table_has_chance_and_majority_per_task(shapesbench_tiny: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    rows = {r.task: r for r in shapes_baselines(shapesbench_tiny)}
    assert {"motion", "appearance", "shape", "qa:direction", "qa:color"} <= set(rows)
    assert rows["motion"].temporal and not rows["appearance"].temporal
    assert rows["motion"].chance == pytest.approx(1 / len(MOTION_CLASSES))
    assert rows["appearance"].chance == pytest.approx(1 / len(APPEARANCE_CLASSES))
    train_lines = _ann(shapesbench_tiny, "motion_train.txt").read_text().splitlines()
    train = Counter(line.rsplit(" ", 1)[1] for line in train_lines)
    test = [line.rsplit(" ", 1)[1] for line in _ann(shapesbench_tiny, "motion_test.txt").read_text().splitlines()]
    top = max(train.values())
    assert rows["motion"].num_eval == len(test)
    assert rows["motion"].majority in {test.count(c) / len(test) for c, n in train.items() if n == top}
    assert all(0.0 <= r.middle_frame <= 1.0 for r in rows.values() if not math.isnan(r.middle_frame))
    out_json = tmp_path / "rows.json"
    assert main(["bench", "shapes-baselines", "--data", str(shapesbench_tiny), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "| motion" in printed and "middle frame %" in printed
    assert {r["task"] for r in json.loads(out_json.read_text())} == set(rows)


def test_single_frame_oracle_fails_on_motion_and_solves_appearance(tmp_path: Path) -> None:
    """The point of the benchmark: one frame cannot tell the motion class, but tells the colour."""
    root = generate(tmp_path / "probe", "tiny", seed=3, count=250, progress=False)
    rows = {r.task: r for r in shapes_baselines(root)}
    assert rows["appearance"].middle_frame >= 0.8
    assert rows["motion"].middle_frame <= 0.35
    assert rows["qa:direction"].middle_frame <= 0.35


def test_a_dataset_of_an_older_generator_is_named_as_such_and_never_overwritten(shapesbench_tiny: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(shapesbench_tiny, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["params"]["version"] -= 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShapesBenchError, match=r"made by generator version \d+; this vidlab makes version \d+ of the same "
                       r"scenes: make it anew with `vidlab data synth --size tiny --seed 0 --out .* --overwrite`"):
        generate(old, "tiny", seed=0, progress=False)
    assert json.loads((old / "manifest.json").read_text()) == manifest
