"""Singularity's tasks as objects the recipe delegates to, so that no recipe method branches on the task:
pre-training and retrieval (ITC + ITM re-ranked retrieval), video QA (answer-list ranking) and multiple choice
(ITM over the options). Each holds its batches, its loss, its evaluation rows, metrics and protocol text; the
recipe (`vidlab.recipes.singularity`) holds the config, the model and the records they share.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import Dataset

from vidlab.data.datasets import CaptionPairDataset, MediaDataset, VideoTextDataset, collate_samples
from vidlab.data.formats import MediaRecord, caption_flags
from vidlab.data.quality import BAD_SAMPLES_KEY
from vidlab.engine.recipe import EvalContext, Gather
from vidlab.errors import ConfigError
from vidlab.losses.singularity import matching_losses, qa_loss
from vidlab.models.text import Tokenize
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

Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]


def clean_text(text: str) -> str:
    """The official `pre_text`: lowercase, drop ,.'!?"()*#:;~, '-' and '/' become spaces, single spaces."""
    text = re.sub(r"[,.'!?\"()*#:;~]", "", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    return re.sub(r"\s{2,}", " ", text).strip()


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


def _retrieval_rows(metrics: Mapping[str, float]) -> list[tuple[str, str, str]]:
    """(scoring, subset, direction) of every retrieval row present in `metrics`."""
    return [
        (scoring, subset, direction)
        for scoring in SCORINGS
        for subset in ("all", "temporal")
        for direction in ("t2v", "v2t")
        if f"{scoring}/{subset}/{direction}_R1" in metrics
    ]


class SingularityTask:
    """What one Singularity task does with the recipe's shared parts (`recipe`: config, model config,
    tokenizer, records). The model task it trains is `model_task`; validation monitors `monitor`."""

    model_task: ClassVar[str]
    monitor: ClassVar[str]

    def __init__(self, recipe: Any):
        self.recipe = recipe
        self.cfg: DictConfig = recipe.cfg

    def train_set(self, entry: DictConfig, where: str) -> tuple[Dataset, Collate]:
        raise NotImplementedError

    def eval_set(self, source: DictConfig, where: str, args: dict[str, Any]) -> tuple[list[MediaRecord], Dataset, Collate]:
        raise NotImplementedError

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor | dict[str, Tensor]:
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        raise NotImplementedError

    def format_metrics(self, metrics: dict[str, float], split: str) -> str | None:
        """The printed table; None: the recipe's default (one line per metric)."""
        return None

    def _tokenize(self, max_length: int, fixed_length: bool = False) -> Tokenize:
        return Tokenize(self.recipe.tokenizer, max_length, fixed_length)

    def _frames(self) -> str:
        data, ensemble = self.cfg.data, self.cfg.eval.frame_ensemble
        how = "one cross-attention memory" if ensemble == "concat" else f"each frame scored alone, {ensemble} over frames"
        return (
            f"  frames: train {data.num_frames} ({data.train_sampler}), test {data.num_frames_test} "
            f"({data.test_sampler}), frame ensemble '{ensemble}' ({how})"
        )


class RetrievalTask(SingularityTask):
    """Pre-training and retrieval: caption pairs with ITC + ITM (+ MLM) losses; ITC then ITM re-ranked recalls."""

    model_task = "retrieval"
    monitor = "val/itm/all/r_mean"

    def __init__(self, recipe: Any, pretrain: bool = False):
        super().__init__(recipe)
        if pretrain:
            self.model_task = "pretrain"  # type: ignore[misc]

    def train_set(self, entry: DictConfig, where: str) -> tuple[Dataset, Collate]:
        records = self.recipe.records(entry, where, captions=True)
        dataset = CaptionPairDataset(
            records, match_by_caption=self.cfg.data.has_multi_vision_gt, **self.recipe.dataset_args(True, entry.image_frames)
        )
        return dataset, PairCollate(self._tokenize(self.recipe.model_cfg().text.max_length))

    def eval_set(self, source: DictConfig, where: str, args: dict[str, Any]) -> tuple[list[MediaRecord], Dataset, Collate]:
        records = self.recipe.records(source, where, captions=True)
        tokenize = self._tokenize(self.recipe.model_cfg().text.max_length, fixed_length=True)
        return records, VideoTextDataset(records, caption_mode="all", **args), RetrievalEvalCollate(tokenize)

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor | dict[str, Tensor]:
        return matching_losses(model, batch, gather)  # loss_itc, loss_itm (and loss_mlm): logged apart

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        keep: Callable[[Tensor], Tensor] = (lambda t: t.cpu()) if self.cfg.eval.offload else (lambda t: t)
        memory, pooled = model.encode_clips(batch["video"], self.cfg.eval.frame_ensemble)
        text = model.text_features(batch["input_ids"], batch["attention_mask"])
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

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        if context.model is None:
            raise ConfigError("Singularity's retrieval metrics re-rank with the model: evaluate with it in the context")
        evaluation = self.cfg.eval
        tables = RetrievalTables.from_outputs(outputs, self._text_keys(outputs, context.records))
        return retrieval_metrics(
            context.model, tables, evaluation.k_test, evaluation.frame_ensemble, evaluation.pairs_per_call,
            context.device, evaluation.offload,
        )

    def _text_keys(self, outputs: Mapping[str, Tensor], records: Sequence[MediaRecord]) -> list[str] | None:
        """With `data.has_multi_vision_gt`, the raw caption of every output text row (identical captions are
        one text, as the official training `idx` groups them); None otherwise."""
        if not self.cfg.data.has_multi_vision_gt:
            return None
        return [records[int(i)].captions[int(j)] for i, j in zip(outputs["text_video_index"], outputs["text_slot"])]

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        split = context.split
        num_videos, num_frames = outputs["video_pooled"].shape[:2]
        num_rows = len(outputs["text_slot"])
        temporal_rows = outputs["text_temporal"].bool().tolist()
        keys = self._text_keys(outputs, context.records)
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
        temporal = (
            f"; temporal {num_temporal} captions (t2v against all videos, v2t among the temporal captions only, re-ranked "
            "within them)" if num_temporal else " (no caption is flagged temporal)"
        )
        return "\n".join([
            f"protocol: split '{split}'. "
            + describe_protocol(num_videos, num_texts, num_frames, self.cfg.eval.k_test, self.cfg.eval.frame_ensemble),
            *grouping,
            f"  subsets: all {num_texts} captions{paragraph}{temporal}",
            "  metrics: itm = re-ranked, itc = contrastive only; R@k in %, ranks as the official itm_eval (positions in a "
            f"descending argsort; pairs outside the top-k all score {NOT_RERANKED:g}); r_mean = mean of the six recalls",
            self._frames(),
        ])

    def format_metrics(self, metrics: dict[str, float], split: str) -> str | None:
        columns = [f"R{k}" for k in RECALL_AT] + ["Rmean"]
        lines = [f"  {split:<24}" + "".join(f"{c:>8}" for c in columns)]
        for scoring, subset, direction in _retrieval_rows(metrics):
            values = "".join(f"{metrics[f'{scoring}/{subset}/{direction}_{c}']:8.1f}" for c in columns)
            lines.append(f"  {f'{scoring} {subset} {direction}':<24}{values}")
        return "\n".join(lines)


class QATask(SingularityTask):
    """Video QA: the decoder trained on weighted answers; evaluation ranks the answer list, exact-match accuracy."""

    model_task = "qa"
    monitor = "val/qa/all_acc"

    def __init__(self, recipe: Any):
        super().__init__(recipe)
        self._answer_list: list[str] | None = None
        self._answer_tokens: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def records(self, source: DictConfig, where: str) -> list[MediaRecord]:
        records = self.recipe.records(source, where, captions=False)
        if not records or "question" not in records[0].extra:
            raise ConfigError(f"{where}: {source.annotations} holds no questions (task qa needs a QA file)")
        return records

    def answer_list(self) -> list[str]:
        if self._answer_list is None:
            if not self.cfg.data.answer_list:
                raise ConfigError("task qa evaluates by ranking an answer list: set data.answer_list (a json list of answers)")
            path = self.recipe.data_path(self.cfg.data.answer_list)
            if not path.is_file():
                raise ConfigError(f"data.answer_list: {path} not found")
            answers = json.loads(path.read_text())
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise ConfigError(f"data.answer_list: {path} must be a non-empty json list of strings")
            self._answer_list = answers
        return self._answer_list

    def train_set(self, entry: DictConfig, where: str) -> tuple[Dataset, Collate]:
        qa = self.recipe.model_cfg().qa
        dataset = MediaDataset(self.records(entry, where), **self.recipe.dataset_args(True, entry.image_frames))
        collate = QATrainCollate(
            self._tokenize(qa.max_question_length), self._tokenize(qa.max_answer_length), self.recipe.tokenizer.sep_token
        )
        return dataset, collate

    def eval_set(self, source: DictConfig, where: str, args: dict[str, Any]) -> tuple[list[MediaRecord], Dataset, Collate]:
        self.answer_list()
        records = self.records(source, where)
        collate = QAEvalCollate(self._tokenize(self.recipe.model_cfg().qa.max_question_length))
        return records, MediaDataset(records, **args), collate

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor | dict[str, Tensor]:
        return qa_loss(model, batch)

    def _answers_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The tokenized answer list on `device` (tokenized once)."""
        if device not in self._answer_tokens:
            tokenize = self._tokenize(self.recipe.model_cfg().qa.max_answer_length)
            ids, mask = tokenize(answer_texts(self.answer_list(), self.recipe.tokenizer.sep_token))
            self._answer_tokens[device] = (ids.to(device), mask.to(device))
        return self._answer_tokens[device]

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        answer_ids, answer_mask = self._answers_on(batch["video"].device)
        ranked, _ = rank_answers(
            model, batch["video"], batch["question_ids"], batch["question_mask"], answer_ids, answer_mask,
            k=self.cfg.eval.k_test, ensemble=self.cfg.eval.frame_ensemble,
        )
        return {"index": batch["index"], "predicted": ranked[:, 0]}

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        records, answers = context.records, self.answer_list()
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

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        split, records, model_cfg = context.split, context.records, self.recipe.model_cfg()
        subsets = item_subsets(records, outputs["index"])
        answers = self.answer_list()
        listed = set(answers)
        unlisted = sum(records[int(i)].extra["answers"][0] not in listed for i in outputs["index"])
        return "\n".join([
            f"protocol: Singularity video QA, split '{split}': {len(outputs['index'])} questions, "
            + ", ".join(f"{name} {int(mask.sum())}" for name, mask in subsets.items()),
            f"  answers: ranked from the {len(answers)}-answer list: top-{min(self.cfg.eval.k_test, len(answers))} "
            f"by first-token probability, re-scored by sequence likelihood (scoring '{model_cfg.qa.scoring}')",
            "  accuracy: exact match with the annotated answer; appearance = questions not flagged temporal"
            + (f"; annotated answers not in the answer list: {unlisted} (those questions count as wrong)" if unlisted else ""),
            self._frames(),
        ])


class MultipleChoiceTask(RetrievalTask):
    """Multiple choice (MSR-VTT MC) with a retrieval model, trained as retrieval: the option with the highest ITM
    match logit."""

    monitor = "val/mc/all_acc"

    def eval_set(self, source: DictConfig, where: str, args: dict[str, Any]) -> tuple[list[MediaRecord], Dataset, Collate]:
        records = self.recipe.records(source, where, captions=False)
        if any(r.label is None for r in records):
            raise ConfigError(f"{where}: {source.annotations} is not a multiple-choice file ({{video, caption: [options], answer}})")
        collate = MCEvalCollate(self._tokenize(self.recipe.model_cfg().text.max_length))
        return records, VideoTextDataset(records, caption_mode="all", **args), collate

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        scores = multiple_choice_scores(model, batch["video"], batch["option_ids"], batch["option_mask"], self.cfg.eval.frame_ensemble)
        return {"index": batch["index"], "option_scores": scores.float()}

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        records, index = context.records, outputs["index"]
        answers = torch.tensor([records[int(i)].label for i in index])
        return {
            f"mc/{subset}_acc": multiple_choice_accuracy(outputs["option_scores"][mask], answers[mask])
            for subset, mask in item_subsets(records, index).items()
        }

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        split, subsets = context.split, item_subsets(context.records, outputs["index"])
        num_options = outputs["option_scores"].shape[1]
        return "\n".join([
            f"protocol: Singularity multiple choice, split '{split}': {len(outputs['index'])} items of {num_options} options, "
            + ", ".join(f"{name} {int(mask.sum())}" for name, mask in subsets.items()),
            "  answer: the option whose (video, option) pair has the highest ITM match logit",
            self._frames(),
        ])

    def format_metrics(self, metrics: dict[str, float], split: str) -> str | None:
        return None


def make_task(name: str, recipe: Any) -> SingularityTask:
    """The task object of `task: NAME`."""
    if name == "pretrain":
        return RetrievalTask(recipe, pretrain=True)
    tasks: dict[str, Callable[[Any], SingularityTask]] = {"retrieval": RetrievalTask, "qa": QATask, "mc": MultipleChoiceTask}
    if name not in tasks:
        raise ConfigError(f"task must be one of pretrain, {', '.join(tasks)}, got {name!r}")
    return tasks[name](recipe)
