"""GDT / STiCA downstream action recognition (the official `eval_video.py`): a pretrained GDT video encoder
fine-tuned, or linearly probed, on labelled clips (UCF101, HMDB51, ShapesBench's motion classes).

- Model: `vidlab.models.gdt_classifier` (family `gdt_classifier`): the R(2+1)D encoder, its map averaged (STiCA's
  transformer pooling with `pooling.num_layers` > 0), one orthogonally initialised Linear. `model.encoder` names
  the pretrained GDT model: the model folder of a `gdt` run (`stage:NAME` in a two-stage run), or an official
  GDT `checkpoint.pth` / STiCA `checkpoint.pth.tar`; its encoder sizes are the classifier's, its
  `video_encoder` / `video_pooling` weights are loaded strictly and its projection heads and audio tower left
  out (logged). Without `model.encoder` the encoder starts from random weights (the supervised-from-scratch
  baseline). `model.freeze_encoder: true` is the linear probe (official `--feature-extract`).
  `model.num_classes: auto` (default) takes the class count of the data.
- Data: `data.train` / `val` / `test` are labelled annotation sources: the official UCF101 split files
  (`format: ucf101`, `annotations: ucfTrainTestlist/trainlist01.txt`; testlist01.txt for the test; folds 1-3),
  the HMDB51 split folder (`format: hmdb51`, `options: {fold: 1, subset: train}` / `subset: test`), an EVL
  list (`format: evl`) or class folders. Class names from `data.class_names` or from the readers' class folders.
  Training: each video `data.train_clips_per_video` times per epoch (official 10), each time a random clip of
  `data.num_frames` frames at `data.target_fps`, the `gdt` augmentation.
- Loss: cross-entropy.
- Test (official): every video as `eval.spatial_views` crops (3: left / centre / right of the short-side-resized
  frames) x `eval.temporal_views` evenly spaced clips (10), the softmax of each view averaged per video
  (`vidlab.tasks.classification`); top-1, top-5 and mean per-class accuracy of the LAST epoch's weights. The
  official script reports the best test accuracy over epochs (model selection on the test set); vidlab does not.

Official settings (eval_video.py, scripts/eval.sh) the configs follow: 12 epochs, batch 32, weight decay 0.005,
the encoder at 1/10 of the head's rate (`optim.lr_groups`), 2 warm-up epochs; 30 frames at 30 fps for GDT.
The official optimizer is SGD (head 0.0025, encoder 0.00025, momentum 0.9, step decay x0.05 at epochs 6 and
10); the engine's is AdamW (see the `gdt` recipe).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from vidlab.data.datasets import VideoLabelDataset
from vidlab.data.formats import MediaRecord
from vidlab.data.labelled import LabelledSourceConfig, collate_clips, collate_views, read_class_names
from vidlab.data.transforms import build_transform, resolve_transform_config
from vidlab.engine.config import DataConfig, EvalConfig, TrainConfig
from vidlab.engine.data import TrainSet
from vidlab.engine.recipe import EvalContext, EvalSet, Gather, Recipe, register_recipe
from vidlab.errors import ConfigError
from vidlab.io.sampling import make_sampler
from vidlab.models.factory import create_model_with_report, resolve_model_config
from vidlab.models.gdt_classifier import FAMILY, encoder_sizes
from vidlab.tasks.classification import check_views, classification_metrics, multiview_rows

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class GdtFinetuneDataConfig(DataConfig):
    train: LabelledSourceConfig | None = None
    val: LabelledSourceConfig | None = None
    test: LabelledSourceConfig | None = None
    class_names: str | None = None  # JSON list or one name per line, index = label; relative to root
    batch_size: int = 32  # global
    num_frames: int = 30
    target_fps: float | None = 30.0  # null: the video's own frame rate
    sampling_rate: int = 1
    train_clips_per_video: int = 10  # official --train-clips-per-video
    transform: Any = "gdt"  # a preset name or {preset: gdt, ...}
    backend: str | None = None


@dataclass
class GdtFinetuneEvalConfig(EvalConfig):
    batch_size: int = 4  # videos per process per step, each spatial_views x temporal_views clips
    spatial_views: int = 3
    temporal_views: int = 10


@dataclass
class GdtFinetuneTrainConfig(TrainConfig):
    recipe: str = "gdt_finetune"
    model: dict[str, Any] = field(
        default_factory=lambda: {"base": "gdt-classifier-r2plus1d-18", "encoder": None, "num_classes": "auto"}
    )
    data: GdtFinetuneDataConfig = field(default_factory=GdtFinetuneDataConfig)
    eval: GdtFinetuneEvalConfig = field(default_factory=GdtFinetuneEvalConfig)


@register_recipe
class GdtFinetuneRecipe(Recipe):
    name = "gdt_finetune"
    config_class = GdtFinetuneTrainConfig
    default_monitor = "val/top1"
    minimums = {
        "data.batch_size": 1, "data.num_frames": 1, "data.sampling_rate": 1, "data.train_clips_per_video": 1,
        "eval.spatial_views": 1, "eval.temporal_views": 1,
    }

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self._records: dict[str, list[MediaRecord]] = {}
        self._class_names: list[str] | None = None
        section = dict(OmegaConf.to_container(OmegaConf.create(dict(cfg.model)), resolve=True))  # type: ignore[arg-type]
        self.encoder: str | None = section.pop("encoder", None)
        self.num_classes = section.pop("num_classes", "auto")
        self.section = section
        if self.num_classes != "auto" and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1
        ):
            raise ConfigError(f"model.num_classes must be a positive integer or 'auto', got {self.num_classes!r}")
        if self.encoder is not None and not Path(self.encoder).exists():
            raise ConfigError(f"model.encoder: {self.encoder} not found (a gdt run's model folder or an official checkpoint)")

    # -- model ------------------------------------------------------------------------------------------

    def model_config(self, init_from: str | Path | Mapping[str, Tensor] | None = None) -> DictConfig:
        """The classifier's typed config: the encoder's sizes from `model.encoder`, the class count from the data."""
        section = dict(self.section)
        if self.num_classes != "auto":
            section["num_classes"] = self.num_classes

        def derived(requested: DictConfig) -> list[tuple[str, Mapping[str, Any]]]:
            sizes: list[tuple[str, Mapping[str, Any]]] = []
            if self.encoder:
                sizes.append((self.encoder, encoder_sizes(self.encoder)))
            if self.num_classes == "auto":
                sizes.append(("the data's classes", {"num_classes": self._data_num_classes()}))
            return sizes

        mc = resolve_model_config(section, FAMILY, derived=derived, start=self.start_weights(init_from))
        self._check_labels(int(mc.num_classes))
        return mc

    def build_model(self, init_from: str | Path | Mapping[str, Tensor] | None) -> tuple[nn.Module, DictConfig]:
        created = create_model_with_report(self.model_config(init_from), checkpoint=init_from)
        if init_from is None and self.encoder:
            log.info("%s", created.model.load_encoder(self.encoder).format())
        elif init_from is None:
            log.warning("gdt_finetune without model.encoder: the video encoder starts from random weights")
        return created.model, created.config

    # -- classes ----------------------------------------------------------------------------------------

    def _configured_splits(self) -> list[str]:
        return [split for split in SPLITS if self.cfg.data[split] is not None]

    def class_names(self) -> list[str] | None:
        """From `data.class_names`, else the class folders the readers name (UCF101, HMDB51, class_folders)."""
        if self._class_names is None and self.cfg.data.class_names:
            self.prepare_data()
            path = Path(self.cfg.data.class_names)
            self._class_names = read_class_names(path if path.is_absolute() else Path(self.cfg.data.root) / path)
        elif self._class_names is None:
            named = {r.label: r.extra["class_name"] for s in self._configured_splits() for r in self.records(s) if "class_name" in r.extra}
            if named:
                self._class_names = [named.get(i, str(i)) for i in range(max(named) + 1)]  # type: ignore[arg-type]
        return self._class_names

    def _data_num_classes(self) -> int:
        names = self.class_names()
        if names is not None:
            return len(names)
        labels = [r.label for split in self._configured_splits() for r in self.records(split)]
        if not labels:
            raise ConfigError("model.num_classes 'auto' counts the classes of data.class_names or of the labelled splits: set one")
        return max(labels) + 1  # type: ignore[type-var, operator]

    def _check_labels(self, num_classes: int) -> None:
        for split in self._configured_splits():
            for record in self.records(split):
                if record.label >= num_classes:  # type: ignore[operator]
                    raise ConfigError(f"data.{split}: {record.path} has label {record.label}, but there are {num_classes} classes")

    # -- data -------------------------------------------------------------------------------------------

    def records(self, split: str) -> list[MediaRecord]:
        if split not in self._records:
            source = self.cfg.data[split]
            records = self.read_records(source, f"data.{split}")
            unlabelled = next((r for r in records if r.label is None), None)
            if unlabelled is not None:
                raise ConfigError(f"data.{split}: {unlabelled.path} has no label (format {source.format!r} is not a labelled format)")
            self._records[split] = records
        return self._records[split]

    def _transform(self, train: bool, **fixed: Any) -> Any:
        setting = self.cfg.data.transform
        spec = {"preset": setting} if isinstance(setting, str) else {**setting}
        spec.update(fixed)
        resolve_transform_config(spec)
        return build_transform(spec, train=train)

    def _views(self) -> tuple[int, int]:
        return check_views(self.cfg.eval.spatial_views, self.cfg.eval.temporal_views)

    def train_sets(self) -> list[TrainSet]:
        data = self.cfg.data
        if data.train is None:
            raise ConfigError("data.train is not set (the labelled training split)")
        clip = {"num_frames": data.num_frames, "sampling_rate": data.sampling_rate}
        sampler = make_sampler("fixed_fps", **clip, target_fps=data.target_fps) if data.target_fps else make_sampler("evl_train", **clip)
        dataset = VideoLabelDataset(
            self.records("train") * data.train_clips_per_video,
            sampler,
            self._transform(train=True),
            num_frames=data.num_frames,
            seed=self.cfg.seed,
            bad_samples="skip",
            backend=data.backend,
        )
        return [TrainSet("train", dataset, data.batch_size, collate_clips)]

    def eval_set(self, split: str) -> EvalSet | None:
        if self.eval_source(split) is None:
            return None
        data = self.cfg.data
        spatial, temporal = self._views()
        sampler = make_sampler(
            "uniform_views", num_frames=data.num_frames, num_views=temporal, sampling_rate=data.sampling_rate, target_fps=data.target_fps
        )
        dataset = VideoLabelDataset(
            self.records(split),
            sampler,
            self._transform(train=False, spatial_views=spatial),
            num_frames=data.num_frames,
            seed=self.cfg.seed,
            bad_samples="raise",
            backend=data.backend,
        )
        return EvalSet(split, dataset, self.cfg.eval.batch_size, collate_views, self.records(split))

    # -- steps ------------------------------------------------------------------------------------------

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor:
        return F.cross_entropy(model(batch["video"]).float(), batch["label"])

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        return multiview_rows(model, batch)

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        return classification_metrics(outputs["scores"], outputs["label"])

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        data, classes = self.cfg.data, int(outputs["scores"].shape[1])
        spatial, temporal = self._views()
        crops = "a centre crop" if spatial == 1 else "3 crops (left / centre / right along the long side)"
        rate = f"at {data.target_fps:g} fps" if data.target_fps else "at the video's frame rate"
        frozen = getattr(context.model, "freeze_encoder", self.section.get("freeze_encoder", False))
        probe = "linear probe (frozen encoder)" if frozen else "fine-tuned encoder"
        return "\n".join(
            [
                f"protocol: GDT action recognition ({probe}), split '{context.split}': {len(outputs['index'])} videos, {classes} classes",
                (
                    f"  views: {spatial} spatial x {temporal} temporal = {spatial * temporal} per video: {crops} x "
                    f"{temporal} evenly spaced clip(s) of {data.num_frames} frames {rate}"
                ),
                "  score: mean over a video's views of softmax(logits); the last epoch's weights",
                f"  metrics: top-1, top-5 (capped at {classes} classes), mean per-class top-1 accuracy, in %",
            ]
        )


__all__ = ["GdtFinetuneRecipe", "GdtFinetuneTrainConfig"]
