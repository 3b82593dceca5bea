"""`vidlab experiment evl-shapes`: EVL's claims on ShapesBench, end to end, with a backbone made here.

EVL (Lin et al., 2022) claims that a frozen CLIP image backbone read by a light decoder recognises actions
at a fraction of the trainable parameters and memory of fine-tuning the backbone, and that its temporal
modules (temporal convolution, temporal positional embedding, temporal cross attention) are what let a
backbone trained on still images see motion. The experiment:

1. generates ShapesBench (`--size`) into `--data` when it is not there;
2. pretrains vidlab's CLIP (`configs/clip/shapes_pretrain.yaml`) on the still images and one frame per
   training clip with its static caption: a backbone that never saw motion (reused when `--out` holds a
   finished pretraining of the same config);
3. trains EVL (`configs/experiments/evl_shapes/evl.yaml`) on that frozen backbone for `motion` and
   `appearance` (8 classes each, chance 12.5 %), each with all three temporal modules and with none, then
   `motion` with the backbone fine-tuned; each run in its own process, measured (`measure.measured_run`);
4. writes OUT/results.json and OUT/report.html and prints the table.

Expected: on `motion` the temporal modules make the difference: without them the decoder sees an unordered
set of frames, which shows the kind of motion (horizontal, vertical, rotation, size) but not its direction
(a left-moving clip is a right-moving one played backwards), so at best 50 % and at chance within each pair
of opposites; on `appearance` (colour, visible in any frame) they do not matter; fine-tuning the backbone
costs several times the trainable parameters and more memory and time.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vidlab.bench.common import markdown_table
from vidlab.errors import ConfigError
from vidlab.experiments.measure import RunMeasurement, measured_run
from vidlab.models.clip_weights import recorded_vision_sizes
from vidlab.recipes.evl import CONFUSION_FILE
from vidlab.report import Figure, Gallery, Paragraph, Report, Section, Table
from vidlab.report import write_report as write_html

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENT_CONFIGS = CONFIG_DIR / "experiments" / "evl_shapes"
CLIP_CONFIG = CONFIG_DIR / "clip" / "shapes_pretrain.yaml"
EVL_CONFIG = EXPERIMENT_CONFIGS / "evl.yaml"
QUICK_CLIP_CONFIG = EXPERIMENT_CONFIGS / "clip_quick.yaml"  # --quick: a few steps per run
QUICK_EVL_CONFIG = EXPERIMENT_CONFIGS / "evl_quick.yaml"
TASKS = ("motion", "appearance")
TEMPORAL_MODULES = ("temporal_conv", "temporal_pos_embed", "temporal_cross_attention")
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
MEASUREMENT_FILE = "measurement.json"  # in each run folder
MEMORY_NOTE = (
    "peak RSS: ru_maxrss of the largest process of the run (the training process, or a DataLoader worker if "
    "larger), each run in a fresh process forked from a server that only imported torch, Lightning and vidlab; "
    "it covers model building, training and the test evaluation. '+RSS' is that peak minus the process's RSS "
    "at its start (the import-only baseline)."
)


@dataclass(frozen=True)
class Variant:
    """One EVL run: a task, with or without the temporal modules, on a frozen or fine-tuned backbone, at the
    config's learning rate or `lr`."""

    task: str
    temporal: bool
    finetune: bool = False
    lr: float | None = None

    @property
    def name(self) -> str:
        return f"{self.task}-{'temporal' if self.temporal else 'no_temporal'}" + ("-finetune" if self.finetune else "")

    @property
    def backbone(self) -> str:
        return "fine-tuned" if self.finetune else "frozen"

    def overrides(self) -> list[str]:
        task = [
            f"data.train.annotations=annotations/{self.task}_train.txt",
            f"data.test.annotations=annotations/{self.task}_test.txt",
            f"data.class_names=annotations/{self.task}_classes.json",
            f"name=evl_shapes_{self.name}",
        ]
        modules = [f"model.decoder.{module}={str(self.temporal).lower()}" for module in TEMPORAL_MODULES]
        lr = [f"optim.lr={self.lr}"] if self.lr is not None else []
        return [*task, *modules, f"model.backbone.freeze={str(not self.finetune).lower()}", *lr]


VARIANTS = (
    Variant("motion", temporal=True),
    Variant("motion", temporal=False),
    Variant("appearance", temporal=True),
    Variant("appearance", temporal=False),
    # EVL fine-tunes the backbone at the decoder's rate; the frozen runs' 1e-3 wrecks this small pretrained
    # ViT (28.7 % motion top-1 measured, half the frozen backbone's), 3e-4 does not
    Variant("motion", temporal=True, finetune=True, lr=3e-4),
)


@dataclass
class ExperimentResult:
    size: str
    quick: bool
    data: str
    clip: dict[str, Any]  # the pretraining's measurement (its test metrics: zero-shot and retrieval)
    runs: list[dict[str, Any]]  # one row per variant: its identity and measurement
    chance: dict[str, float]  # task -> chance accuracy in %
    wall_time_s: float = 0.0
    memory_method: str = MEMORY_NOTE
    clip_reused: bool = False
    torch_threads: int | None = 1
    load_average: list[float] | None = None  # the machine's 1/5/15-min load average when the experiment ended


def backbone_overrides(clip_model_dir: Path) -> list[str]:
    """EVL's backbone = the pretrained CLIP image tower: its sizes (decoder width and heads as the backbone's,
    EVL's rule) and its weights."""
    vision = recorded_vision_sizes(clip_model_dir)
    sizes = [f"model.backbone.{key}={value}" for key, value in vision.items()]
    decoder = [f"model.decoder.qkv_dim={vision['width']}", f"model.decoder.num_heads={vision['heads']}"]
    return [*sizes, *decoder, f"model.backbone.weights={clip_model_dir}"]


def _finished_pretraining(run_dir: Path, config_file: Path, overrides: list[str]) -> RunMeasurement | None:
    """The measurement of an earlier pretraining in `run_dir`, when it finished with the same config."""
    from vidlab.engine.config import load_train_config

    saved = run_dir / MEASUREMENT_FILE
    if not saved.is_file():
        return None
    earlier = RunMeasurement(**json.loads(saved.read_text()))
    wanted = OmegaConf.to_container(load_train_config(config_file, [*overrides, f"run_dir={run_dir}"]), resolve=True)
    return earlier if earlier.config == wanted and Path(earlier.model_dir, "model.safetensors").is_file() else None


def _save_measurement(measurement: RunMeasurement) -> None:
    Path(measurement.run_dir, MEASUREMENT_FILE).write_text(json.dumps(asdict(measurement), indent=1) + "\n")


def _summary(measurement: RunMeasurement) -> dict[str, Any]:
    """A measurement without its resolved config (kept in the run folder's measurement.json)."""
    return {key: value for key, value in asdict(measurement).items() if key != "config"}


def _chance(data: Path, task: str) -> float:
    return 100.0 / len(json.loads((data / "annotations" / f"{task}_classes.json").read_text()))


def run_experiment(
    data: Path, out: Path, size: str = "small", quick: bool = False, seed: int = 0, torch_threads: int | None = 1
) -> ExperimentResult:
    """Generate (if needed), pretrain CLIP, train every EVL variant, write results.json and report.html.

    Every run trains with `torch_threads` intra-op threads (see `vidlab.experiments.measure`)."""
    from vidlab.data.shapesbench import generate

    if torch_threads is not None and torch_threads < 1:
        raise ConfigError(f"torch threads must be at least 1, got {torch_threads}")
    started = time.perf_counter()
    data, out = Path(data).resolve(), Path(out).resolve()
    print(f"[1/4] ShapesBench {size} (seed {seed}) in {data}")
    generate(data, size, seed)
    common = [f"data.root={data}", f"data.shapesbench.size={size}", f"data.shapesbench.seed={seed}"]

    clip_config, evl_config = (QUICK_CLIP_CONFIG, QUICK_EVL_CONFIG) if quick else (CLIP_CONFIG, EVL_CONFIG)
    clip_dir = out / "runs" / "clip"
    clip = _finished_pretraining(clip_dir, clip_config, common)
    print(f"[2/4] CLIP pretraining ({clip_config.name}) -> {clip_dir}" + (": reusing the finished run" if clip else ""))
    reused = clip is not None
    if clip is None:
        clip = measured_run(clip_config, common, clip_dir, torch_threads)
        _save_measurement(clip)

    rows = []
    extra = [*common, *backbone_overrides(Path(clip.model_dir))]
    for number, variant in enumerate(VARIANTS, start=1):
        print(f"[3/4] EVL {number}/{len(VARIANTS)}: {variant.name} ({evl_config.name})")
        measurement = measured_run(evl_config, [*extra, *variant.overrides()], out / "runs" / variant.name, torch_threads)
        _save_measurement(measurement)
        identity = {"variant": variant.name, "task": variant.task, "temporal": variant.temporal, "backbone": variant.backbone}
        rows.append({**identity, "lr": measurement.config["optim"]["lr"], **_summary(measurement)})

    result = ExperimentResult(
        size=size,
        quick=quick,
        data=str(data),
        clip=_summary(clip),
        runs=rows,
        chance={task: _chance(data, task) for task in TASKS},
        clip_reused=reused,
        torch_threads=torch_threads,
        load_average=[round(x, 2) for x in os.getloadavg()],
    )
    result.wall_time_s = time.perf_counter() - started
    print(f"[4/4] report: {write_report(result, out)}")
    (out / RESULTS_FILE).write_text(json.dumps(asdict(result), indent=1) + "\n")
    return result


# ---------------------------------------------------------------------------------------------------------
# Tables and the report

RUN_HEADERS = ("task", "backbone", "temporal modules", "lr", "top-1 %", "mean-class %", "trainable params", "peak RSS MiB", "+RSS MiB", "train s")
CLIP_HEADERS = ("zero-shot colour top-1 %", "zero-shot shape top-1 %", "text->image R@1 %", "image->text R@1 %", "train s")


def run_rows(result: ExperimentResult) -> list[list[str]]:
    """One row per EVL run, in the order of `RUN_HEADERS` (plus peak GPU MiB when measured)."""
    rows = []
    for run in result.runs:
        metrics = run["metrics"]
        row = [
            run["task"],
            run["backbone"],
            "all" if run["temporal"] else "none",
            f"{run['lr']:g}",
            f"{metrics.get('top1', float('nan')):.1f}",
            f"{metrics.get('mean_class_acc', float('nan')):.1f}",
            f"{run['trainable_params']:,}",
            f"{run['peak_rss_mib']:.0f}",
            f"{run['peak_rss_mib'] - run['start_rss_mib']:.0f}",
            f"{run['train_time_s']:.0f}",
        ]
        if any(r["peak_cuda_mib"] is not None for r in result.runs):
            row.append("-" if run["peak_cuda_mib"] is None else f"{run['peak_cuda_mib']:.0f}")
        rows.append(row)
    return rows


def _run_headers(result: ExperimentResult) -> list[str]:
    gpu = any(r["peak_cuda_mib"] is not None for r in result.runs)
    return [*RUN_HEADERS, *(["peak GPU MiB"] if gpu else [])]


def clip_row(result: ExperimentResult) -> list[str]:
    metrics = result.clip["metrics"]
    keys = ("zero_shot_appearance_top1", "zero_shot_shape_top1", "t2i_R1", "i2t_R1")
    return [*(f"{metrics.get(k, float('nan')):.1f}" for k in keys), f"{result.clip['train_time_s']:.0f}"]


def format_tables(result: ExperimentResult) -> str:
    """The EVL table and the CLIP line, as markdown (printed, and pasted into docs/experiments.md)."""
    chance = ", ".join(f"{task} {value:.1f} %" for task, value in result.chance.items())
    return "\n".join(
        [
            markdown_table(_run_headers(result), run_rows(result), right_align_from=4),
            "",
            f"chance: {chance}; test split; EVL top-1 over 1 centre crop x 1 clip",
            "",
            "CLIP backbone (pretraining test split: images and clips' middle frames):",
            "",
            markdown_table(CLIP_HEADERS, [clip_row(result)]),
        ]
    )


def write_report(result: ExperimentResult, out: Path) -> Path:
    """OUT/report.html: the EVL table, the CLIP numbers, how memory was measured, where each run is."""
    chance = ", ".join(f"{task} {value:.1f} %" for task, value in result.chance.items())
    runs = [["run", "folder"], *[[r["variant"], r["run_dir"]] for r in [*result.runs, {"variant": "clip", **result.clip}]]]
    confusions = [
        Figure(str(image.relative_to(out)), "confusion matrix", r["variant"], width=300)
        for r in result.runs
        if (image := Path(r["run_dir"]) / CONFUSION_FILE.format(split="test")).is_file() and image.is_relative_to(out)
    ]
    clip_note = " (reused from an earlier run of the same config)" if result.clip_reused else ""
    report = write_html(Report(f"EVL on ShapesBench {result.size}{' (quick)' if result.quick else ''}", [
        Paragraph(
            "A CLIP ViT pretrained here on ShapesBench stills, frozen (or fine-tuned), read by EVL's decoder with all "
            "three temporal modules (temporal convolution, temporal positional embedding, temporal cross attention) or "
            f"none. Test split, one centre crop x one clip per video. Chance: {chance}."
        ),
        Section("EVL", [
            Table([_run_headers(result), *run_rows(result)]),
            Paragraph(f"{result.memory_method} Training time: Lightning's training loop only; torch intra-op threads per "
                      f"run: {result.torch_threads or 'default'}."),
        ]),
        Section(f"CLIP backbone{clip_note}", [
            Table([list(CLIP_HEADERS), clip_row(result)]),
            Paragraph("Zero-shot: each frame's colour / shape against class-name prompts; retrieval over the split's "
                      "captions (clips: only captions not about motion)."),
        ]),
        Section("Confusion matrices (test; rows: true class)", [
            Paragraph("Without temporal modules the decoder sees an unordered set of frames: it can tell the kind of "
                      "motion (horizontal, vertical, rotation, size) but not its direction, so it confuses each class "
                      "with its opposite."),
            Gallery(confusions),
        ]),
        Section("Runs", [
            Table(runs),
            Paragraph(f"data: {result.data}; experiment wall time {result.wall_time_s:.0f} s; machine load average at "
                      f"the end (1/5/15 min): {result.load_average}"),
        ]),
    ]), out / REPORT_FILE)
    return report


__all__ = ["VARIANTS", "ExperimentResult", "Variant", "backbone_overrides", "format_tables", "run_experiment", "write_report"]
