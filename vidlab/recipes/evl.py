"""EVL (Lin et al., 2022, "Frozen CLIP Models are Efficient Video Learners"): action recognition on the shared
engine, with the official data pipeline, loss and multi-view test protocol.

- Model: `vidlab.models.evl` (a CLIP image backbone, frozen by default, read by a light temporal decoder).
  `model.base` names a registered config (`evl-vit-b16-8x16`, `evl-tiny`, ...), the other `model` keys
  override it; `model.num_classes: auto` (default) takes the class count of the data. The backbone's
  weights come from `model.backbone.weights` (any CLIP file `vidlab.models.clip_weights` reads, including
  the model folder of a vidlab `clip` run); a frozen backbone is out of the optimizer and of checkpoints,
  `model.backbone.freeze=false` fine-tunes it with the decoder at the same learning rate (the official
  `--finetune_backbone` has no separate backbone rate either).
- Data: one training set and optional val / test sets, each an EVL list file (`<relpath> <label>`,
  `format: evl`) or class folders (`format: class_folders`, `options: {split: train}`) under `data.root`;
  class names from `data.class_names` (a JSON list or one name per line) or from the folder names.
  Training clips: `evl_train` (num_frames frames `sampling_rate` apart from a random start; `evl_tsn` for
  TSN sampling), the `evl` transform (RandAugment rand-m7-n4-mstd0.5-inc1, random resized crop, CLIP
  normalisation, no flip) at the backbone's resolution. `data.dummy` replaces every file by random
  tensors of the same shapes (the official `--dummy_dataset`, to time the model alone).
- Loss: plain cross-entropy (no label smoothing, no mixup), as the official trainer.
- Test: every video is seen as `eval.spatial_views` crops (1: centre; 3: left / centre / right along the
  long side of the short-side-resized frames) x `eval.temporal_views` evenly spaced clips (`evl_eval`);
  the score of a video is the mean over its views of the softmax of the logits. Metrics: top-1, top-5
  (capped at the number of classes) and mean per-class top-1 accuracy, in percent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset

from vidlab.data.datasets import VideoLabelDataset
from vidlab.data.formats import MediaRecord
from vidlab.data.labelled import LabelledSourceConfig, collate_clips, collate_views, read_class_names
from vidlab.data.transforms import build_transform, resolve_transform_config
from vidlab.engine.config import DataConfig, EvalConfig, TrainConfig
from vidlab.engine.data import TrainSet
from vidlab.engine.recipe import EvalContext, EvalSet, Gather, Recipe, register_recipe
from vidlab.errors import ConfigError
from vidlab.io.sampling import make_sampler
from vidlab.models.clip import ResidualAttentionBlock
from vidlab.models.clip_weights import recorded_vision_sizes
from vidlab.models.evl import FAMILY, EVLDecoderLayer
from vidlab.models.factory import Decided, create_model_with_report, resolve_model_config
from vidlab.report import Figure, Paragraph, Preformatted, Report, Section, Table, write_report
from vidlab.tasks.classification import check_views, classification_metrics, confusion_matrix, multiview_rows

log = logging.getLogger(__name__)

TRAIN_SAMPLERS = ("evl_train", "evl_tsn")
SPLITS = ("train", "val", "test")
CONFUSION_FILE = "confusion_{split}.png"
REPORT_FILE = "report.html"


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class EvlDataConfig(DataConfig):
    train: LabelledSourceConfig | None = None
    val: LabelledSourceConfig | None = None
    test: LabelledSourceConfig | None = None
    class_names: str | None = None  # JSON list or one name per line, index = label; relative to root
    batch_size: int = 256  # global: summed over all processes
    num_frames: int | None = None  # None: the model's num_frames; else the model is built for this many
    sampling_rate: int = 16  # frames between sampled frames (8x16: 8 frames at stride 16)
    train_sampler: str = "evl_train"  # evl_train | evl_tsn
    transform: Any = "evl"  # a preset name or {preset: evl, ...}; size follows the backbone's image_size
    backend: str | None = None  # video decoding backend
    dummy: bool = False  # random frames and labels instead of files (model speed alone)
    dummy_samples: int = 256  # length of each synthetic split


@dataclass
class EvlEvalConfig(EvalConfig):
    batch_size: int = 8  # videos per process per step (each with spatial_views x temporal_views clips)
    spatial_views: int = 1  # 1: centre crop | 3: left, centre, right crops (official 16- and 32-frame tests)
    temporal_views: int = 3  # evenly spaced clips (official 8-frame test: 3)


@dataclass
class EvlTrainConfig(TrainConfig):
    recipe: str = "evl"
    model: dict[str, Any] = field(default_factory=lambda: {"base": "evl-vit-b16-8x16"})
    data: EvlDataConfig = field(default_factory=EvlDataConfig)
    eval: EvlEvalConfig = field(default_factory=EvlEvalConfig)


# ---------------------------------------------------------------------------------------------------------
# Data


class SyntheticClips(Dataset):
    """Random normalised frames of a fixed shape and random labels, a pure function of (seed, index):
    what the data pipeline would deliver, without decoding, to time the model alone."""

    def __init__(self, num_samples: int, clip_shape: Sequence[int], num_classes: int, seed: int):
        if num_samples < 1:
            raise ConfigError(f"data.dummy_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.clip_shape = tuple(clip_shape)
        self.num_classes = num_classes
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(torch.randint(self.num_classes, (), generator=generator))
        return {"video": torch.randn(self.clip_shape, generator=generator), "label": label, "index": index}


# ---------------------------------------------------------------------------------------------------------
# The recipe


@register_recipe
class EvlRecipe(Recipe):
    name = "evl"
    config_class = EvlTrainConfig
    default_monitor = "val/top1"
    minimums = {"data.batch_size": 1, "data.num_frames": 1, "data.sampling_rate": 1, "eval.spatial_views": 1, "eval.temporal_views": 1}

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self._records: dict[str, list[MediaRecord]] = {}
        self._model_cfg: DictConfig | None = None
        self._class_names: list[str] | None = None

    # -- model ------------------------------------------------------------------------------------------

    def model_config(self) -> DictConfig:
        """The typed EVL config (`resolve_model_config`): the backbone takes the sizes a vidlab CLIP run records
        beside `backbone.weights`, `num_frames` is `data.num_frames` when set, `num_classes: auto` counts the data's."""
        if self._model_cfg is not None:
            return self._model_cfg
        section: dict[str, Any] = dict(OmegaConf.to_container(OmegaConf.create(dict(self.cfg.model)), resolve=True))  # type: ignore[arg-type]
        num_classes = section.pop("num_classes", "auto")
        if num_classes not in (None, "auto"):
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
                raise ConfigError(f"model.num_classes must be a positive integer or 'auto', got {num_classes!r}")
            section["num_classes"] = num_classes

        def derived(requested: DictConfig) -> list[tuple[str, dict[str, Any]]]:
            sizes = []
            if requested.backbone.weights:
                vision = recorded_vision_sizes(requested.backbone.weights)
                sizes.append((str(requested.backbone.weights), {f"backbone.{k}": v for k, v in vision.items()}))
            if "num_classes" not in section and not self.cfg.data.dummy:
                sizes.append(("the data's classes", {"num_classes": self._data_num_classes()}))
            return sizes

        frames = self.cfg.data.num_frames
        decided = {"num_frames": Decided(frames, "the temporal modules are built for data.num_frames")} if frames is not None else {}
        self._model_cfg = resolve_model_config(section, FAMILY, derived=derived, decided=decided)
        self._check_labels(int(self._model_cfg.num_classes))
        return self._model_cfg

    def build_model(self, init_from: str | Path | Mapping[str, Tensor] | None) -> tuple[nn.Module, DictConfig]:
        created = create_model_with_report(self.model_config(), checkpoint=init_from)
        return created.model, created.config

    def wrap_modules(self) -> set[type[nn.Module]]:
        return {ResidualAttentionBlock, EVLDecoderLayer}

    # -- classes ----------------------------------------------------------------------------------------

    def _data_num_classes(self) -> int:
        """`auto`: the class-name count, else the largest label of the configured splits + 1."""
        names = self.class_names()
        if names is not None:
            return len(names)
        labels = [r.label for split in self._configured_splits() for r in self.records(split)]
        if not labels:
            raise ConfigError("model.num_classes 'auto' counts the classes of data.class_names or of the labelled splits: set one")
        return max(labels) + 1  # type: ignore[type-var, operator]

    def _configured_splits(self) -> list[str]:
        return [split for split in SPLITS if self.cfg.data[split] is not None]

    def class_names(self) -> list[str] | None:
        """From `data.class_names`, else from class folders (checked to agree across splits), else None."""
        if self._class_names is not None or self.cfg.data.dummy:
            return self._class_names
        data = self.cfg.data
        if data.class_names:
            self.prepare_data()
            path = Path(data.class_names)
            self._class_names = read_class_names(path if path.is_absolute() else Path(data.root) / path)
            return self._class_names
        folder_names: dict[int, str] = {}
        for split in self._configured_splits():
            for record in self.records(split):
                name = record.extra.get("class_name")
                if name is None:
                    return None
                if folder_names.setdefault(record.label, name) != name:  # type: ignore[arg-type]
                    raise ConfigError(
                        f"data.{split}: label {record.label} is class {name!r} there but {folder_names[record.label]!r} "  # type: ignore[index]
                        "in an earlier split (class folders must be the same in every split)"
                    )
        if folder_names:
            self._class_names = [folder_names.get(i, str(i)) for i in range(max(folder_names) + 1)]
        return self._class_names

    def _check_labels(self, num_classes: int) -> None:
        names = self.class_names()
        if names is not None and len(names) != num_classes:
            raise ConfigError(
                f"{len(names)} class names (data.class_names or class folders) but model.num_classes={num_classes}"
            )
        if self.cfg.data.dummy:
            return
        for split in self._configured_splits():
            for record in self.records(split):
                if record.label >= num_classes:  # type: ignore[operator]
                    raise ConfigError(
                        f"data.{split}: {record.path} has label {record.label}, but there are {num_classes} classes "
                        "(labels are 0-based; check model.num_classes / data.class_names)"
                    )

    # -- data -------------------------------------------------------------------------------------------

    def records(self, split: str) -> list[MediaRecord]:
        """The records of a configured split (read once)."""
        if split not in self._records:
            source = self.cfg.data[split]
            records = self.read_records(source, f"data.{split}")
            unlabelled = next((r for r in records if r.label is None), None)
            if unlabelled is not None:
                raise ConfigError(f"data.{split}: {unlabelled.path} has no label (format {source.format!r} is not a labelled format)")
            self._records[split] = records
        return self._records[split]

    def _transform_spec(self, mc: DictConfig, **fixed: Any) -> dict[str, Any]:
        """`data.transform` at the backbone's resolution (a different explicit size is an error)."""
        setting = self.cfg.data.transform
        spec: dict[str, Any] = {"preset": setting} if isinstance(setting, str) else dict(OmegaConf.to_container(setting, resolve=True))  # type: ignore[arg-type]
        size = int(mc.backbone.image_size)
        if spec.get("size", size) != size:
            raise ConfigError(f"data.transform.size={spec['size']} but the backbone takes {size}x{size} frames")
        spec = {**spec, "size": size, **fixed}
        resolve_transform_config(spec)  # a bad option fails now, not in a loader worker
        return spec

    def _train_sampler(self, num_frames: int) -> Any:
        data = self.cfg.data
        if data.train_sampler not in TRAIN_SAMPLERS:
            raise ConfigError(f"data.train_sampler must be one of {', '.join(TRAIN_SAMPLERS)}, got {data.train_sampler!r}")
        if data.train_sampler == "evl_tsn":
            return make_sampler("evl_tsn", num_frames=num_frames)
        return make_sampler("evl_train", num_frames=num_frames, sampling_rate=data.sampling_rate)

    def _views(self) -> tuple[int, int]:
        return check_views(self.cfg.eval.spatial_views, self.cfg.eval.temporal_views)

    def train_sets(self) -> list[TrainSet]:
        mc, data = self.model_config(), self.cfg.data
        frames, size = int(mc.num_frames), int(mc.backbone.image_size)
        if data.dummy:
            dataset: Dataset = SyntheticClips(data.dummy_samples, (frames, 3, size, size), mc.num_classes, self.cfg.seed)
        elif data.train is None:
            raise ConfigError("data.train is not set (or set data.dummy=true for synthetic clips)")
        else:
            dataset = VideoLabelDataset(
                self.records("train"),
                self._train_sampler(frames),
                build_transform(self._transform_spec(mc), train=True),
                num_frames=frames,
                seed=self.cfg.seed,
                bad_samples="skip",
                backend=data.backend,
            )
        return [TrainSet("train", dataset, data.batch_size, collate_clips)]

    def eval_set(self, split: str) -> EvalSet | None:
        source, mc, data = self.eval_source(split), self.model_config(), self.cfg.data
        spatial, temporal = self._views()
        frames, size = int(mc.num_frames), int(mc.backbone.image_size)
        if data.dummy:
            if split != self.cfg.eval.split:
                return None
            shape = (spatial * temporal, frames, 3, size, size)
            dataset: Dataset = SyntheticClips(data.dummy_samples, shape, mc.num_classes, self.cfg.seed + 1)
        elif source is None:
            return None
        else:
            dataset = VideoLabelDataset(
                self.records(split),
                make_sampler("evl_eval", num_frames=frames, num_views=temporal, sampling_rate=data.sampling_rate),
                build_transform(self._transform_spec(mc, spatial_views=spatial), train=False),
                num_frames=frames,
                seed=self.cfg.seed,
                bad_samples="raise",
                backend=data.backend,
            )
        return EvalSet(split, dataset, self.cfg.eval.batch_size, collate_views, [] if data.dummy else self.records(split))

    # -- steps ------------------------------------------------------------------------------------------

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor:
        return F.cross_entropy(model(batch["video"]).float(), batch["label"])

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        return multiview_rows(model, batch)

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        return classification_metrics(outputs["scores"], outputs["label"])

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        split, mc, data = context.split, self.model_config(), self.cfg.data
        spatial, temporal = self._views()
        crops = "a centre crop" if spatial == 1 else "3 crops (left / centre / right along the long side)"
        clips = "a centred clip" if temporal == 1 else f"{temporal} evenly spaced clips"
        source = "synthetic clips (data.dummy)" if data.dummy else f"data.{split}"
        return "\n".join(
            [
                (
                    f"protocol: EVL action recognition, split '{split}' ({source}): {len(outputs['index'])} videos, "
                    f"{mc.num_classes} classes"
                ),
                (
                    f"  views: {spatial} spatial x {temporal} temporal = {spatial * temporal} per video: {crops} of the "
                    f"frames resized to short side {mc.backbone.image_size}, x {clips} of {mc.num_frames} frames "
                    f"{data.sampling_rate} apart (evl_eval; short videos repeat their last frame)"
                ),
                "  score: mean over a video's views of softmax(logits)",
                f"  metrics: top-1, top-5 (top-k capped at {mc.num_classes} classes), mean per-class top-1 accuracy, in %",
            ]
        )

    # -- figures ----------------------------------------------------------------------------------------

    def write_eval_artifacts(
        self, outputs: dict[str, Tensor], metrics: dict[str, float], context: EvalContext, out_dir: Path
    ) -> list[Path]:
        """The confusion matrix as a PNG (class names on the axes) and report.html (metrics, protocol, PNG)."""
        rows, split = outputs, context.split
        num_classes = int(self.model_config().num_classes)
        names = self.class_names() or [str(i) for i in range(num_classes)]
        counts = confusion_matrix(rows["scores"].argmax(1), rows["label"], num_classes)
        out_dir.mkdir(parents=True, exist_ok=True)
        png = plot_confusion(counts, names, out_dir / CONFUSION_FILE.format(split=split), f"confusion matrix, {split}")
        table = [["metric", "value (%)"]] + [[key, f"{value:.2f}"] for key, value in metrics.items()]
        report = write_report(Report(f"EVL action recognition: {split}", [
            Table(table),
            Preformatted(self.describe_eval(outputs, context)),
            Section("Confusion matrix", [
                Paragraph("rows: true class, columns: predicted class (top-1 of the view-averaged scores)"),
                Figure(png.name, "confusion matrix"),
            ]),
        ]), out_dir / REPORT_FILE)
        return [png, report]


def plot_confusion(counts: Tensor, class_names: Sequence[str], out_file: Path, title: str) -> Path:
    """A (K, K) count matrix as a heat map with the counts written in; names on the axes up to 60 classes."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    num_classes = counts.shape[0]
    side = min(20.0, max(4.0, 0.45 * num_classes + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(counts.numpy(), cmap="Blues")
    if num_classes <= 60:
        ax.set_xticks(range(num_classes), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(num_classes), class_names, fontsize=8)
    if num_classes <= 30:
        peak = max(int(counts.max()), 1)
        for true, pred in zip(*torch.nonzero(counts, as_tuple=True)):
            value = int(counts[true, pred])
            ax.text(int(pred), int(true), str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > peak / 2 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_file, dpi=90)
    plt.close(fig)
    return out_file


__all__ = [
    "EvlDataConfig",
    "EvlEvalConfig",
    "EvlRecipe",
    "LabelledSourceConfig",
    "EvlTrainConfig",
    "SyntheticClips",
    "collate_clips",
    "collate_views",
    "plot_confusion",
    "read_class_names",
]
