"""The HTML report of a retrieval run: per-stage metrics table, training curves, text queries with thumbnails.

Everything is read back from the run folder (the TensorBoard events of each stage) or passed in as plain
data, so the report can be rebuilt for any run; images are written as PNG files next to `report.html`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vidlab.report import Figure, Gallery, Paragraph, Report, Section, Table
from vidlab.report import write_report as write_html

REPORT_FILE = "report.html"
CURVES_FILE = "curves.png"
THUMBS_DIR = "thumbs"
SUBSETS = ("all", "temporal")
DIRECTIONS = ("t2v", "v2t")
COLUMNS = ("R1", "R5", "R10", "MedR")
# scalars plotted from each stage's TensorBoard events (tag -> panel title)
CURVE_TAGS = {"train/loss": "training loss", "val/all/t2v_R1": "val t2v R@1 (all)", "val/temporal/t2v_R1": "val t2v R@1 (temporal)"}


@dataclass
class RetrievedVideo:
    path: Path  # the video file
    caption: str  # one of its ground-truth captions, shown under the thumbnail
    score: float  # cosine similarity to the query


@dataclass
class QueryResult:
    stage: str
    query: str
    videos: list[RetrievedVideo] = field(default_factory=list)


def metrics_rows(stage_metrics: Mapping[str, Mapping[str, float]]) -> list[list[str]]:
    """Header + one row per stage x subset x direction with R@1/5/10 (%) and MedR."""
    rows = [["stage", "captions", "direction", *COLUMNS]]
    for stage, metrics in stage_metrics.items():
        for subset in SUBSETS:
            for direction in DIRECTIONS:
                if f"{subset}/{direction}_R1" in metrics:
                    values = [f"{metrics[f'{subset}/{direction}_{c}']:.1f}" for c in COLUMNS]
                    rows.append([stage, subset, direction, *values])
    return rows


def format_metrics_table(stage_metrics: Mapping[str, Mapping[str, float]]) -> str:
    """The metrics table as aligned text, for the console."""
    rows = metrics_rows(stage_metrics)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def read_scalars(stage_dirs: Sequence[Path], tags: Sequence[str]) -> dict[str, list[tuple[int, float, str]]]:
    """tag -> [(step counted over all stages, value, stage folder name)] from each stage's TensorBoard events.

    Steps of a later stage are offset by the last step of the stages before it, so the curriculum reads as
    one curve.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its per-file INFO lines are noise here
    series: dict[str, list[tuple[int, float, str]]] = {tag: [] for tag in tags}
    offset = 0
    for stage_dir in stage_dirs:
        events = stage_dir / "tensorboard"
        if not events.is_dir():
            continue
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        available = set(accumulator.Tags().get("scalars", []))
        last_step = 0
        for tag in tags:
            if tag in available:
                for event in accumulator.Scalars(tag):
                    series[tag].append((offset + event.step, event.value, stage_dir.name))
                    last_step = max(last_step, event.step)
        offset += last_step
    return series


def plot_curves(series: Mapping[str, list[tuple[int, float, str]]], out_file: Path) -> Path:
    """One panel per tag, one colour per stage."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (tag, points) in zip(axes[0], series.items()):
        for stage in dict.fromkeys(p[2] for p in points):
            steps = [p[0] for p in points if p[2] == stage]
            values = [p[1] for p in points if p[2] == stage]
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=stage)
        ax.set_title(CURVE_TAGS.get(tag, tag), fontsize=10)
        ax.set_xlabel("step")
        if points:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_file, dpi=90)
    plt.close(fig)
    return out_file


def save_thumbnail(frame: torch.Tensor, out_file: Path) -> Path:
    """A (H, W, 3) uint8 frame as a PNG."""
    from PIL import Image

    Image.fromarray(frame.numpy()).save(out_file)
    return out_file


def write_report(
    run_dir: Path,
    stage_dirs: Sequence[Path],
    stage_metrics: Mapping[str, Mapping[str, float]],
    queries: Sequence[QueryResult],
    frames: Mapping[Path, torch.Tensor],
    title: str,
    notes: Sequence[str] = (),
) -> Path:
    """Write `run_dir/report.html` with its PNGs (curves from `stage_dirs`' TensorBoard events, one middle
    frame per retrieved video from `frames`) and return its path."""
    series = read_scalars(stage_dirs, list(CURVE_TAGS))
    plot_curves(series, run_dir / CURVES_FILE)
    thumbs_dir = run_dir / THUMBS_DIR
    thumbs_dir.mkdir(exist_ok=True)
    thumbs: dict[Path, str] = {}
    for i, (video, frame) in enumerate(frames.items()):
        name = f"{i:03d}_{video.stem}.png"
        save_thumbnail(frame, thumbs_dir / name)
        thumbs[video] = f"{THUMBS_DIR}/{name}"
    galleries = [
        Gallery(
            [Figure(thumbs[v.path], v.path.name, v.caption, f"{v.score:.3f}", width=96) for v in result.videos],
            title=f"{result.stage}: \u201c{result.query}\u201d",
        )
        for result in queries
    ]
    report = Report(title, [
        *(Paragraph(note) for note in notes),
        Section("Test retrieval per stage", [
            Table(metrics_rows(stage_metrics)),
            Paragraph("R@K in %; MedR = median rank. 'temporal': captions a single frame cannot match (motion, "
                      "direction, rotation)."),
        ]),
        Section("Training curves", [Figure(CURVES_FILE, "training curves")]),
        Section("Text queries: top-5 test videos (middle frames)", galleries),
    ])
    return write_html(report, run_dir / REPORT_FILE)


__all__ = [
    "QueryResult",
    "RetrievedVideo",
    "format_metrics_table",
    "metrics_rows",
    "plot_curves",
    "read_scalars",
    "write_report",
]
