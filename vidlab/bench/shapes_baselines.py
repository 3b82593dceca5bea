"""Trivial baselines on ShapesBench: chance, majority class, and a single-frame oracle, per task.

The oracle sees only each clip's middle frame: a ridge-regression linear probe (one-vs-rest on
centred one-hot targets, regularisation chosen on `val`, trained on `train`, scored on `test`)
over standardised features of that frame (16x16 average-pooled
RGB pixels, a 6x6x6 colour histogram and the log-magnitude 2-D Fourier spectrum of a 32x32 copy,
which is translation invariant). Near-chance oracle accuracy on a task proves that one frame does
not solve it; high accuracy shows the task is appearance only.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidlab.bench.common import BenchError, markdown_table
from vidlab.data.formats import MediaRecord, read_annotations
from vidlab.data.shapesbench.annotations import class_file, label_file, qa_file
from vidlab.data.shapesbench.generate import read_manifest
from vidlab.data.shapesbench.scene import LABEL_TASKS
from vidlab.io import probe, read_frames

RIDGE_LAMBDAS = (10.0, 100.0, 1000.0, 10000.0)
TEMPORAL_LABEL_TASKS = frozenset({"motion"})
HISTOGRAM_BINS = 6
POOLED_SIDE = 16
SPECTRUM_SIDE = 32
FEATURE_CHUNK = 256  # frames per feature batch: keeps the int64 histogram temporaries small


@dataclass(frozen=True)
class Task:
    """One classification problem over clips: labels (class indices) per split, keyed by clip path."""

    name: str
    temporal: bool
    classes: tuple[str, ...]
    labels: dict[str, dict[str, int]]  # split -> {clip path: class index}


@dataclass(frozen=True)
class BaselineRow:
    task: str
    temporal: bool
    num_classes: int
    num_train: int
    num_eval: int
    chance: float
    majority: float
    middle_frame: float


def load_tasks(root: str | Path) -> list[Task]:
    """The label tasks (motion, appearance, shape) and one task per QA question type, read through
    vidlab's annotation readers. A QA task's classes are the answers its questions ever get."""
    root = Path(root)
    tasks = []
    for name in LABEL_TASKS:
        classes = tuple(json.loads((root / class_file(name)).read_text()))
        labels = {
            split: {r.path: int(r.label) for r in _read_or_empty("evl_list", root / label_file(name, split), root)}
            for split in ("train", "val", "test")
        }
        tasks.append(Task(name, name in TEMPORAL_LABEL_TASKS, classes, labels))
    by_type: dict[str, dict[str, dict[str, str]]] = {}
    temporal: dict[str, bool] = {}
    for split in ("train", "val", "test"):
        for r in _read_or_empty("singularity", root / qa_file(split), root):
            qtype = r.extra["qtype"]
            by_type.setdefault(qtype, {"train": {}, "val": {}, "test": {}})[split][r.path] = r.extra["answers"][0]
            temporal[qtype] = bool(r.extra["temporal"])
    for qtype, answers in by_type.items():
        classes = tuple(sorted({a for split in answers.values() for a in split.values()}))
        labels = {split: {path: classes.index(a) for path, a in items.items()} for split, items in answers.items()}
        tasks.append(Task(f"qa:{qtype}", temporal[qtype], classes, labels))
    return tasks


def _read_or_empty(fmt: str, path: Path, root: Path) -> list[MediaRecord]:
    """Records of an annotation file; a split may legitimately have none (tiny datasets)."""
    if path.is_file() and path.read_text().strip() in ("", "[]"):
        return []
    return read_annotations(fmt, path, root=root)


def middle_frame(path: str) -> np.ndarray:
    """The middle frame (index (n - 1) // 2) of a clip, uint8 (H, W, 3)."""
    return read_frames(path, [(probe(path).num_frames - 1) // 2])[0].numpy()


def frame_features(frames: np.ndarray) -> np.ndarray:
    """Single-frame features (N, D) of uint8 frames (N, H, W, 3): pooled pixels, colour histogram,
    log Fourier magnitude (position-free, so shape is linearly readable wherever the object is)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    pooled = F.adaptive_avg_pool2d(x, POOLED_SIDE).flatten(1)
    bins = (x * HISTOGRAM_BINS).long().clamp(0, HISTOGRAM_BINS - 1)
    cell = ((bins[:, 0] * HISTOGRAM_BINS + bins[:, 1]) * HISTOGRAM_BINS + bins[:, 2]).flatten(1)
    histogram = torch.zeros(len(x), HISTOGRAM_BINS**3, dtype=x.dtype)
    histogram.scatter_add_(1, cell, torch.ones_like(cell, dtype=x.dtype))
    small = F.adaptive_avg_pool2d(x, SPECTRUM_SIDE)
    spectrum = torch.fft.rfft2(small - small.mean(dim=(2, 3), keepdim=True)).abs()
    return torch.cat([pooled, torch.log1p(histogram), torch.log1p(spectrum).flatten(1)], dim=1).double().numpy()


def ridge_predictions(gram: torch.Tensor, train_rows: Sequence[int], train_y: np.ndarray,
                      eval_rows: Sequence[Sequence[int]], num_classes: int,
                      lambdas: Sequence[float]) -> list[list[np.ndarray]]:
    """Predictions of ridge one-vs-rest classifiers in dual form over a precomputed Gram matrix of
    all clips: result[i][j] = predicted classes of the rows `eval_rows[j]` at `lambdas[i]`."""
    train_index = torch.as_tensor(list(train_rows))
    k_train = gram[train_index][:, train_index]
    targets = torch.eye(num_classes, dtype=gram.dtype)[torch.as_tensor(train_y)]
    targets -= targets.mean(0)
    cross = [gram[torch.as_tensor(list(rows))][:, train_index] for rows in eval_rows]
    out = []
    for lam in lambdas:
        factor = torch.linalg.cholesky(k_train + lam * torch.eye(len(train_index), dtype=gram.dtype))
        dual = torch.cholesky_solve(targets, factor)
        out.append([(k @ dual).argmax(1).numpy() for k in cross])
    return out


def shapes_baselines(root: str | Path, num_threads: int = 2) -> list[BaselineRow]:
    """One row per task: chance, majority class and middle-frame oracle accuracy on `test`
    (the oracle's regularisation picked on `val`, trained on `train`)."""
    root = Path(root)
    if read_manifest(root) is None:
        raise BenchError(f"{root} holds no complete ShapesBench dataset (generate one with `vidlab data synth`)")
    tasks = load_tasks(root)
    paths = sorted({p for t in tasks for split in t.labels.values() for p in split})
    with ThreadPoolExecutor(max(1, num_threads)) as pool:  # PyAV decodes without holding the GIL
        frames = np.stack(list(pool.map(middle_frame, paths)))
    features = torch.from_numpy(np.concatenate([frame_features(frames[i : i + FEATURE_CHUNK])
                                                 for i in range(0, len(frames), FEATURE_CHUNK)]))
    row_of = {p: i for i, p in enumerate(paths)}
    train_rows = sorted({row_of[p] for t in tasks for p in t.labels["train"]})
    mean, std = features[train_rows].mean(0), features[train_rows].std(0) + 1e-6
    standardized = (features - mean) / std
    gram = standardized @ standardized.T
    return [_evaluate(task, row_of, gram) for task in tasks]


def _evaluate(task: Task, row_of: dict[str, int], gram: torch.Tensor) -> BaselineRow:
    train, val, test = (task.labels[s] for s in ("train", "val", "test"))
    train_y = np.array(list(train.values()), dtype=np.int64)
    val_y = np.array(list(val.values()), dtype=np.int64)
    test_y = np.array(list(test.values()), dtype=np.int64)
    chance = 1.0 / len(task.classes)
    if not len(test_y) or not len(train_y):
        return BaselineRow(task.name, task.temporal, len(task.classes), len(train_y), len(test_y), chance,
                           float("nan"), float("nan"))
    majority_class = Counter(train_y.tolist()).most_common(1)[0][0]
    middle = float("nan")
    if len(set(train_y.tolist())) > 1:
        rows = [[row_of[p] for p in split] for split in (train, test, val)]
        evals = rows[1:] if len(val_y) else rows[1:2]
        predictions = ridge_predictions(gram, rows[0], train_y, evals, len(task.classes), RIDGE_LAMBDAS)
        best = int(np.argmax([np.mean(p[1] == val_y) for p in predictions])) if len(val_y) else len(RIDGE_LAMBDAS) // 2
        middle = float(np.mean(predictions[best][0] == test_y))
    return BaselineRow(
        task=task.name,
        temporal=task.temporal,
        num_classes=len(task.classes),
        num_train=len(train_y),
        num_eval=len(test_y),
        chance=chance,
        majority=float(np.mean(test_y == majority_class)),
        middle_frame=middle,
    )


def format_baselines(rows: Sequence[BaselineRow]) -> str:
    """The baseline table as markdown, accuracies in percent."""
    def pct(v: float) -> str:
        return "-" if math.isnan(v) else f"{100 * v:.1f}"

    return markdown_table(
        ["task", "needs time", "classes", "train", "test", "chance %", "majority %", "middle frame %"],
        [[r.task, "yes" if r.temporal else "no", r.num_classes, r.num_train, r.num_eval, pct(r.chance),
          pct(r.majority), pct(r.middle_frame)] for r in rows],
        right_align_from=2,
    ) + "\n"


def baselines_json(rows: Sequence[BaselineRow]) -> list[dict]:
    return [asdict(r) for r in rows]
