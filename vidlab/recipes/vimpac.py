"""VIMPAC (Tan et al., 2021): mask-then-predict + contrastive pre-training on video tokens, and fine-tuning, on the
shared engine. `task: pretrain | finetune` picks the half; a run may chain them as stages (`init_from:
stage:pretrain`), after a `vqvae` stage that trains the tokenizer (configs/vimpac/shapes_tiny.yaml).

- Model: `vidlab.models.vimpac` (`model.base`: vimpac-small / vimpac-large-half / vimpac-tiny, other keys over
  it). Pre-training builds it with the MLM and NCE heads and no classifier; fine-tuning with the classifier
  (`model.num_classes: auto` counts the training store's labels) and without the pre-training heads, whose
  weights are dropped when it starts from a pre-trained model.
- Data: token stores in the official LMDB layout under `data.tokens` (`vidlab.data.token_store`), named from
  `data.model_type`, `data.dset`, each split's `split` name, `data.fps` and `data.frame_size`. A split's
  `annotations` (a labelled list under `data.root`) restricts it to those videos and, with `data.tokenizer`
  set (a tokenizer file or folder, e.g. `stage:tokenizer`), makes the missing stores first (`vidlab tokenize`).
  Clips: `model.num_frames` token frames `stride` = max(int(fps / frame_rate), 1) apart (official
  `--frame-rate`), short clips end in [PAD] frames.
- Pre-training (official pretrain.py): 2 random clips per video from the centre-crop store; the 2B clips
  (first clips, then second clips) are block-masked (`vidlab.losses.block_masking`, `mask.blocks` cubes per
  clip, `mask.rand_replace` for 80/10/10) and go through the model ONCE: the MLM loss (cross-entropy over the
  masked tokens, labels the original codes) and the NCE loss (NT-Xent, tau 0.2, both directions summed and
  scaled by tau, negatives gathered from every process with gradients) both come from the masked inputs.
  Loss = mlm_weight x L_mask + nce_weight x L_cl, logged as `mlm` and `nce`.
- Fine-tuning (official finetune.py): cross-entropy of the zero-initialised classifier on [CLS]; each training
  sample reads one store drawn at random from the crop/flip sets (2 short sides x 3 crops x 2 flips, no flips
  with `data.flip: false`) and one random clip. Test: 3 spatial crops (top / center / bottom stores; 1: centre)
  x `eval.temporal_views` evenly spaced clips, mean softmax (`vidlab.tasks.classification`); `eval.more_clips`
  scores the same model again with other clip counts in the same evaluation (the official
  `--last-test-clips 2,5,10`), reported as `top1_clipsN`.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vidlab.data.formats import MediaRecord
from vidlab.data.token_store import ClipSampling, TokenClipDataset, TokenStore, collate_tokens
from vidlab.data.tokenize import record_key, split_stores, tokenize_videos
from vidlab.engine import distributed
from vidlab.engine.config import DataConfig, EvalConfig, TrainConfig
from vidlab.engine.data import TrainSet
from vidlab.engine.recipe import EvalContext, EvalSet, Gather, Recipe, register_recipe
from vidlab.errors import ConfigError
from vidlab.losses.block_masking import IGNORE_INDEX, mask_token_grid
from vidlab.losses.contrastive import nt_xent_loss
from vidlab.models.factory import Decided, build_with_report, read_checkpoint, resolve_model_config
from vidlab.models.vimpac import FAMILY, ResidualAttentionBlock, pad_token_id
from vidlab.tasks.classification import check_views, classification_metrics, multiview_scores

log = logging.getLogger(__name__)

TASKS = ("pretrain", "finetune")
NCE_TEMPERATURE = 0.2  # hard-coded in the official pretrain.py
PRETRAIN_HEADS = ("mlm_head.", "nce_head.")


@dataclass
class TokenSplitConfig:
    split: str = "train"  # the split's name in the store folder names (train, val, train_test, ...)
    annotations: str | None = None  # labelled list under data.root: which videos (and what to tokenize)
    format: str = "evl"
    media_root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # reader options
    fraction: float = 1.0  # keep this fraction of the videos of each class (label-efficiency runs)


@dataclass
class MaskConfig:
    blocks: int = 5  # cubes per clip (official --mask-blocks; < 0: i.i.d. at -blocks / 1000)
    rand_replace: bool = False  # official --mask-rand-replace (80/10/10 per block)


@dataclass
class VimpacDataConfig(DataConfig):
    tokens: str = "tokens"  # token root, relative to data.root unless absolute
    model_type: str = "dalle"  # store name prefix (official: dalle; vidlab's VQ tokenizer: vq)
    dset: str = "data"  # dataset name in the store names
    fps: float = 2.0  # fps the stores were made at (official: 2 pre-training, 16 fine-tuning)
    frame_rate: float | None = None  # clip frame rate: stride max(int(fps / frame_rate), 1); None: every frame
    frame_size: int = 128  # crop size (short side of the main stores)
    flip: bool = True  # fine-tuning reads the flipped stores too (false: SSv2, direction labels)
    train: TokenSplitConfig | None = None
    val: TokenSplitConfig | None = None
    test: TokenSplitConfig | None = None
    batch_size: int = 32  # global
    tokenizer: str | None = None  # make missing stores from the splits' annotations with this tokenizer
    tokenize_workers: int = 2
    tokenize_device: str = "cpu"


@dataclass
class VimpacEvalConfig(EvalConfig):
    batch_size: int = 16
    spatial_views: int = 3  # 3: top / center / bottom stores; 1: centre
    temporal_views: int = 1  # evenly spaced clips per crop
    more_clips: list[int] = field(default_factory=list)  # also score with these clip counts (official 2,5,10)


@dataclass
class VimpacTrainConfig(TrainConfig):
    recipe: str = "vimpac"
    task: str = "pretrain"  # pretrain | finetune
    model: dict[str, Any] = field(default_factory=lambda: {"base": "vimpac-small"})
    data: VimpacDataConfig = field(default_factory=VimpacDataConfig)
    eval: VimpacEvalConfig = field(default_factory=VimpacEvalConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    mlm_weight: float = 1.0
    nce_weight: float = 1.0


@register_recipe
class VimpacRecipe(Recipe):
    name = "vimpac"
    config_class = VimpacTrainConfig
    default_monitor = None
    minimums = {"data.batch_size": 1, "data.frame_size": 1, "eval.batch_size": 1, "data.tokenize_workers": 0}
    ddp_find_unused_parameters = False

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        if cfg.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
        if cfg.task == "pretrain" and cfg.data.batch_size < 2:
            raise ConfigError("task=pretrain needs data.batch_size >= 2 (the contrastive loss needs negatives)")
        self.pretrain = cfg.task == "pretrain"
        self._model_cfg: DictConfig | None = None
        self._keys: dict[str, list[str] | None] = {}
        self._tokenized = False

    # -- stores -----------------------------------------------------------------------------------------

    def _root(self) -> Path:
        tokens = Path(self.cfg.data.tokens)
        return tokens if tokens.is_absolute() else Path(self.cfg.data.root) / tokens

    def _views(self, split: str) -> str:
        return "pretrain" if self.pretrain else ("train" if split == "train" else "test")

    def stores(self, split: str) -> dict[Path, Any]:
        """The store folders (-> frame settings) `split` reads, in the official order."""
        data = self.cfg.data
        stores = split_stores(self._root(), data.model_type, data.dset, data[split].split, self._views(split), data.fps, data.frame_size, data.flip)
        if split != "train" and not self.pretrain and check_views(self.cfg.eval.spatial_views, 1)[0] == 1:
            stores = {path: spec for path, spec in stores.items() if spec.crop == "center"}
        return stores

    def _splits(self) -> list[str]:
        return ["train"] + ([] if self.pretrain else [s for s in ("val", "test") if self.cfg.data[s] is not None])

    def _split_records(self, split: str) -> list[MediaRecord] | None:
        source = self.cfg.data[split]
        return None if source.annotations is None else self.read_records(source, f"data.{split}")

    def prepare_data(self) -> None:
        """ShapesBench first (when configured), then the missing stores of every split (rank 0; resumable)."""
        super().prepare_data()
        data = self.cfg.data
        if self._tokenized or data.tokenizer is None:
            return
        self._tokenized = True
        if distributed.world()[0] == 0:
            from vidlab.models.vq_tokenizer import load_tokenizer

            tokenizer = load_tokenizer(data.tokenizer, data.tokenize_device)
            for split in self._splits():
                records = self._split_records(split)
                if records is None:
                    raise ConfigError(f"data.tokenizer is set but data.{split}.annotations is not: which videos to tokenize?")
                source = self.cfg.data[split]
                media = Path(data.root) / (source.media_root or "")
                summary = tokenize_videos(
                    [(r.path, r.label if r.label is not None else -1) for r in records], media, self.stores(split),
                    tokenizer.tokenize, workers=data.tokenize_workers, progress=False,
                    settings={"tokenizer": str(data.tokenizer)},
                )
                log.info("data.%s: %d token entries written, %d already there, %d unreadable videos", split,
                         summary.written, summary.skipped, len(summary.failed))
        distributed.barrier()

    def keys(self, split: str) -> list[str] | None:
        """The videos of a split: its annotations' keys that the stores hold (None: every stored video), the
        `fraction` of them kept per class (seeded by `seed`: the same subset in every stage of a run)."""
        if split not in self._keys:
            self.prepare_data()
            source, records = self.cfg.data[split], self._split_records(split)
            keys: list[str] | None = None
            if records is not None:
                stored = set(self._first_store(split).keys())
                media = Path(self.cfg.data.root) / (source.media_root or "")
                wanted = list(dict.fromkeys(record_key(r.path, media) for r in records))
                keys = [k for k in wanted if k in stored]
                if len(keys) < len(wanted):
                    log.warning("data.%s: %d of %d videos are not in the token stores (unreadable?)", split, len(wanted) - len(keys), len(wanted))
                if not keys:
                    raise ConfigError(f"data.{split}: none of its videos is in {self._first_store(split).path}")
            if source.fraction < 1.0:
                keys = self._per_class_fraction(split, keys if keys is not None else self._first_store(split).keys(), source.fraction)
            self._keys[split] = keys
        return self._keys[split]

    def _per_class_fraction(self, split: str, keys: list[str], fraction: float) -> list[str]:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"data.{split}.fraction must be in (0, 1], got {fraction}")
        store, by_class = self._first_store(split), defaultdict(list)
        for key in keys:
            by_class[store.get(key)[1]].append(key)
        rng, kept = random.Random(self.cfg.seed), set()
        for label in sorted(by_class):
            members = sorted(by_class[label])
            kept.update(rng.sample(members, max(1, math.ceil(fraction * len(members)))))
        return [k for k in keys if k in kept]

    def _first_store(self, split: str) -> TokenStore:
        return TokenStore(next(iter(self.stores(split))))

    def _dataset(self, split: str, train: bool, test_clips: int | None = None) -> TokenClipDataset:
        data, mc = self.cfg.data, self.model_config()
        stride = max(int(data.fps / data.frame_rate), 1) if data.frame_rate else 1
        sampling = ClipSampling(
            int(mc.num_frames), stride, train_clips=2 if self.pretrain else 1, test_clips=test_clips or self.cfg.eval.temporal_views
        )
        keys = self.keys(split)
        return TokenClipDataset(list(self.stores(split)), sampling, pad_token_id(int(mc.vocab_size)), train, keys, self.cfg.seed)

    def train_sets(self) -> list[TrainSet]:
        if self.cfg.data.train is None:
            raise ConfigError("data.train is not set")
        return [TrainSet("train", self._dataset("train", True), self.cfg.data.batch_size, collate_tokens)]

    def eval_set(self, split: str) -> EvalSet | None:
        if self.pretrain or self.eval_source(split) is None:
            return None
        return EvalSet(split, self._dataset(split, False), self.cfg.eval.batch_size, collate_tokens)

    # -- model ------------------------------------------------------------------------------------------

    def _num_classes(self) -> int:
        labels = [label for _, _, label in self._first_store("train")] if self.keys("train") is None else [
            self._first_store("train").get(key)[1] for key in self.keys("train")  # type: ignore[union-attr]
        ]
        if not labels or min(labels) < 0:
            raise ConfigError("model.num_classes 'auto': the training store has unlabelled (-1) or no videos; set it")
        return max(labels) + 1

    def model_config(self) -> DictConfig:
        if self._model_cfg is not None:
            return self._model_cfg
        section = dict(OmegaConf.to_container(OmegaConf.create(dict(self.cfg.model)), resolve=True))  # type: ignore[arg-type]
        num_classes = section.pop("num_classes", "auto" if not self.pretrain else 0)
        if self.pretrain:
            decided = {
                "num_classes": Decided(0, "pre-training has no classifier"),
                "mlm_head": Decided(True, "pre-training predicts masked tokens"),
                "nce.enabled": Decided(self.cfg.nce_weight > 0, "the NCE head exists when nce_weight > 0"),
            }
        else:
            if num_classes == "auto":
                num_classes = self._num_classes()
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
                raise ConfigError(f"model.num_classes must be a positive integer or 'auto', got {num_classes!r}")
            decided = {
                "num_classes": Decided(num_classes, "the classes of the data"),
                "mlm_head": Decided(False, "fine-tuning has no MLM head"),
                "nce.enabled": Decided(False, "fine-tuning has no NCE head"),
            }
        self._model_cfg = resolve_model_config(section, FAMILY, start=self._start_folder(), decided=decided)
        return self._model_cfg

    def _start_folder(self) -> str | None:
        start = self.start_weights()
        return start if start is not None and Path(start).is_dir() and (Path(start) / "config.yaml").is_file() else None

    def build_model(self, init_from: str | Path | Mapping[str, Tensor] | None) -> tuple[nn.Module, DictConfig]:
        """The model; from a pre-trained one, the heads this task has no use for are dropped (official finetune.py
        loads the backbone; the classifier starts at zero)."""
        cfg = self.model_config()
        if init_from is None:
            return build_with_report(cfg).model, cfg
        _, mapped, source = read_checkpoint(init_from, cfg)
        if not self.pretrain:
            mapped.tensors = {k: v for k, v in mapped.tensors.items() if not k.startswith(PRETRAIN_HEADS)}
        return build_with_report(cfg, mapped, source).model, cfg

    def wrap_modules(self) -> set[type[nn.Module]]:
        return {ResidualAttentionBlock}

    # -- steps ------------------------------------------------------------------------------------------

    def _check_codes(self, codes: Tensor) -> None:
        mc = self.model_config()
        vocab, grid = int(mc.vocab_size), (int(mc.num_frames), int(mc.height), int(mc.width))
        if tuple(codes.shape[-3:]) != grid:
            raise ConfigError(f"token clips are {tuple(codes.shape[-3:])} (T, h, w) but the model takes {grid}: check model.height/width/num_frames")
        real = codes[codes != pad_token_id(vocab)]
        if len(real) and int(real.max()) >= vocab:
            raise ConfigError(f"the stores hold token id {int(real.max())} but model.vocab_size={vocab}: set it to the tokenizer's vocabulary")

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor | dict[str, Tensor]:
        codes = batch["tokens"]
        self._check_codes(codes)
        if not self.pretrain:
            return F.cross_entropy(model(codes).float(), batch["label"])
        return self.pretrain_losses(model, codes, gather)

    def pretrain_losses(self, model: nn.Module, codes: Tensor, gather: Gather | None = None) -> dict[str, Tensor]:
        """(B, 2, T, H, W) two clips per video -> {'mlm', 'nce'} (weighted) from ONE forward of the masked 2B clips."""
        codes = codes.transpose(0, 1).flatten(0, 1)  # first clips, then second clips (official order)
        vocab = int(self.model_config().vocab_size)
        masked = mask_token_grid(
            codes, self.cfg.mask.blocks, pad_token_id(vocab), vocab + 4, vocab, self.cfg.mask.rand_replace,
            rng=random._inst,  # type: ignore[attr-defined]  # the global Python RNG: seeded and restored by the engine
        )
        cls, hidden = model.encode(masked.codes)
        losses: dict[str, Tensor] = {}
        if self.cfg.mlm_weight > 0:
            chosen = masked.labels != IGNORE_INDEX
            if chosen.any():
                logits = model.mlm_logits(hidden[chosen]).float()
                losses["mlm"] = self.cfg.mlm_weight * F.cross_entropy(logits, masked.labels[chosen])
            else:  # every token is [PAD]: nothing to predict
                losses["mlm"] = hidden.sum() * 0.0
        if self.cfg.nce_weight > 0:
            rank = distributed.world()[0]
            projected = model.nce_projection(cls).float()
            losses["nce"] = self.cfg.nce_weight * nt_xent_loss(projected, NCE_TEMPERATURE, gather=gather, rank=rank if gather else 0)
        if not losses:
            raise ConfigError("mlm_weight and nce_weight are both 0: nothing to train")
        return losses

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"scores": multiview_scores(model, batch["tokens"]), "label": batch["label"], "index": batch["index"]}

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        metrics = classification_metrics(outputs["scores"], outputs["label"])
        for clips in self.cfg.eval.more_clips:
            if context.model is None:
                break
            scores, labels = self._score(context, clips)
            metrics[f"top1_clips{clips}"] = classification_metrics(scores, labels)["top1"]
        return metrics

    @torch.no_grad()
    def _score(self, context: EvalContext, clips: int) -> tuple[Tensor, Tensor]:
        """The whole split scored again with `clips` clips per crop (one process)."""
        loader = DataLoader(self._dataset(context.split, False, clips), batch_size=self.cfg.eval.batch_size, collate_fn=collate_tokens)
        model, rows = context.model.eval(), []  # type: ignore[union-attr]
        for batch in loader:
            rows.append((multiview_scores(model, batch["tokens"].to(context.device)).cpu(), batch["label"]))
        return torch.cat([s for s, _ in rows]), torch.cat([l for _, l in rows])

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        spatial, temporal = check_views(self.cfg.eval.spatial_views, self.cfg.eval.temporal_views)
        crops = "top / center / bottom crop stores" if spatial == 3 else "the centre-crop store"
        mc = self.model_config()
        return "\n".join([
            f"protocol: VIMPAC classification, split '{context.split}': {len(outputs['index'])} videos, {mc.num_classes} classes",
            f"  views: {spatial} spatial x {temporal} temporal = {spatial * temporal} per video: {crops}, x {temporal} evenly "
            f"spaced clips of {mc.num_frames} token frames ({mc.height}x{mc.width} tokens; short clips end in [PAD])",
            "  score: mean over a video's views of softmax(logits)"
            + (f"; top1_clipsN: the same with N clips per crop ({', '.join(map(str, self.cfg.eval.more_clips))})" if self.cfg.eval.more_clips else ""),
            "  metrics: top-1, top-5 (capped at the class count), mean per-class top-1 accuracy, in %",
        ])


__all__ = ["MaskConfig", "TokenSplitConfig", "VimpacDataConfig", "VimpacEvalConfig", "VimpacRecipe", "VimpacTrainConfig"]
