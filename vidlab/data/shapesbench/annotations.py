"""Write ShapesBench annotations in the formats vidlab reads.

- Singularity json lists: captions `{video, caption: [..], temporal: [..], duration}`, image captions
  `{image, caption: [..], temporal: [..]}`, QA `{video, question, answer, question_id, qtype, temporal}`
  plus `qa_answer_list.json`, multiple choice `{video, caption: [5], answer, temporal}`.
- EVL-style label lists `<relpath> <int label>` for `motion`, `appearance` and `shape`, with a json
  list of class names per task (index = label).
- `metadata.jsonl`: one full record per clip and image (scene parameters, events, labels), for
  experiments that need ground truth beyond the labels.
Paths inside the files are relative to the dataset root.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vidlab.data.shapesbench.scene import LABEL_TASKS

SPLITS: tuple[str, ...] = ("train", "val", "test")
ANNOTATION_DIR = "annotations"
METADATA_FILE = "metadata.jsonl"


def caption_file(split: str) -> str:
    return f"{ANNOTATION_DIR}/captions_{split}.json"


def image_caption_file(split: str) -> str:
    return f"{ANNOTATION_DIR}/images_{split}.json"


def qa_file(split: str) -> str:
    return f"{ANNOTATION_DIR}/qa_{split}.json"


def mc_file(split: str) -> str:
    return f"{ANNOTATION_DIR}/mc_{split}.json"


def label_file(task: str, split: str) -> str:
    return f"{ANNOTATION_DIR}/{task}_{split}.txt"


def class_file(task: str) -> str:
    return f"{ANNOTATION_DIR}/{task}_classes.json"


ANSWER_LIST_FILE = f"{ANNOTATION_DIR}/qa_answer_list.json"


def write_annotations(root: Path, videos: Sequence[dict[str, Any]], images: Sequence[dict[str, Any]]) -> list[str]:
    """Write every annotation file from the per-item records; returns the relative paths written."""
    (root / ANNOTATION_DIR).mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def dump(rel: str, payload: Any) -> None:
        (root / rel).write_text(json.dumps(payload, indent=1) + "\n")
        written.append(rel)

    answers: set[str] = set()
    for split in SPLITS:
        in_split = [v for v in videos if v["split"] == split]
        dump(caption_file(split), [
            {"video": v["path"], "caption": v["captions"], "temporal": v["caption_temporal"], "duration": v["duration"]}
            for v in in_split
        ])
        qa = []
        for v in in_split:
            for q in v["qa"]:
                qa.append({"video": v["path"], **q})
                answers.add(q["answer"])
        dump(qa_file(split), qa)
        dump(mc_file(split), [
            {"video": v["path"], "caption": v["mc"]["caption"], "answer": v["mc"]["answer"], "temporal": True}
            for v in in_split
        ])
        dump(image_caption_file(split), [
            {"image": i["path"], "caption": i["captions"], "temporal": [False] * len(i["captions"])}
            for i in images if i["split"] == split
        ])
        for task, classes in LABEL_TASKS.items():
            labelled = [v for v in in_split if v["labels"][task] is not None]
            lines = [f"{v['path']} {classes.index(v['labels'][task])}\n" for v in labelled]
            (root / label_file(task, split)).write_text("".join(lines))
            written.append(label_file(task, split))
    dump(ANSWER_LIST_FILE, sorted(answers))
    for task, classes in LABEL_TASKS.items():
        dump(class_file(task), list(classes))
    with open(root / METADATA_FILE, "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in list(videos) + list(images))
    written.append(METADATA_FILE)
    return written


def read_metadata(root: str | Path) -> list[dict[str, Any]]:
    """The per-item records of a generated dataset (clips first, then images)."""
    with open(Path(root) / METADATA_FILE) as f:
        return [json.loads(line) for line in f if line.strip()]
