"""Video QA by ranking an answer list, and multiple choice by ITM score (Singularity's protocols).

Answer ranking (`rank_answer_list`): the decoder's distribution over the first answer token (after the
start token [CLS]) keeps the k answers whose first token is most probable; those k are re-scored with
the whole answer sequence (tokens after [CLS], [SEP] included, no length normalisation) and returned
best first with softmax-normalised probabilities over the k.

`scoring="faithful"` reproduces the official numbers, quirks included:
- the first token's log-probability is counted twice: once from the start pass and once inside the
  sequence NLL (which also predicts the first token from [CLS]);
- with a per-frame ensemble (mean/max/lse), the first-token stage combines the frames' softmax
  probabilities and applies a softmax AGAIN, and that doubly-normalised value enters the sequence score.
`scoring="corrected"` scores an answer by its log-likelihood, each token once: the sequence score is
-NLL (combined over frames by the ensemble), and the frames' first-token probabilities are combined
without the second softmax. The first-token preselection picks the same k answers in both modes (the
softmax is monotonic); only the final order and probabilities change.

Accuracy is exact match of the predicted answer string. Multiple choice (MSR-VTT MC) picks the option
whose (video, option) pair has the highest ITM match logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from vidlab.errors import ConfigError
from vidlab.models.singularity import QA_SCORINGS, Singularity
from vidlab.tasks.ensemble import aggregate_clips, check_ensemble


class AnswerDecoder(Protocol):
    """What answer ranking needs from a model (Singularity implements it)."""

    def answer_start_logits(self, question_states: Tensor, question_mask: Tensor, start_ids: Tensor) -> Tensor:
        """(Q, vocab) logits of the first answer token."""
        ...

    def answer_nll(
        self, question_states: Tensor, question_mask: Tensor, answer_ids: Tensor, answer_mask: Tensor
    ) -> Tensor:
        """(n,) summed next-token NLL of aligned (question, answer) pairs."""
        ...


@torch.no_grad()
def rank_answer_list(
    decoder: AnswerDecoder,
    clip_states: Sequence[Tensor],
    question_mask: Tensor,
    answer_ids: Tensor,
    answer_mask: Tensor,
    k: int,
    ensemble: str = "concat",
    scoring: str = "faithful",
) -> tuple[Tensor, Tensor]:
    """(Q, k) answer indices into the list (A, La) and their probabilities, best first.

    clip_states: the question states (Q, Lq, D) under each clip (one for 'concat', one per frame else).
    Answers start with [CLS] (the start token) and end with [SEP]; pads are ignored by the decoder NLL.
    """
    if scoring not in QA_SCORINGS:
        raise ConfigError(f"QA scoring must be one of {QA_SCORINGS}, got {scoring!r}")
    check_ensemble(ensemble)
    if not 1 <= k <= answer_ids.shape[0]:
        raise ConfigError(f"k must lie in [1, {answer_ids.shape[0]}] (the answer list), got {k}")
    faithful = scoring == "faithful"
    num_questions = clip_states[0].shape[0]
    start_ids = answer_ids[:1, :1].expand(num_questions, 1)
    vocab_probs = torch.stack(
        [F.softmax(decoder.answer_start_logits(states, question_mask, start_ids), dim=1) for states in clip_states]
    )
    first_token_probs = aggregate_clips(vocab_probs, ensemble)
    if ensemble != "concat" and faithful:
        first_token_probs = F.softmax(first_token_probs, dim=1)
    topk_probs, topk_ids = first_token_probs.index_select(1, answer_ids[:, 1]).topk(k, dim=1)

    candidates = topk_ids.flatten()
    repeated_mask = question_mask.repeat_interleave(k, dim=0)
    sequence_scores = []
    for states in clip_states:
        nll = decoder.answer_nll(
            states.repeat_interleave(k, dim=0), repeated_mask, answer_ids[candidates], answer_mask[candidates]
        )
        nll = nll.view(num_questions, k)
        sequence_scores.append(topk_probs.log() - nll if faithful else -nll)
    probs = F.softmax(aggregate_clips(torch.stack(sequence_scores), ensemble), dim=1)
    probs, order = probs.topk(k, dim=1)
    return topk_ids.gather(1, order), probs


def rank_answers(
    model: Singularity,
    video: Tensor,
    question_ids: Tensor,
    question_mask: Tensor,
    answer_ids: Tensor,
    answer_mask: Tensor,
    k: int | None = None,
    ensemble: str | None = None,
    scoring: str | None = None,
) -> tuple[Tensor, Tensor]:
    """A Singularity QA model ranks the answer list (A, La) for each question of its video: (Q, k) answer
    indices and probabilities, best first (`rank_answer_list` over the frame ensemble's clips). k, ensemble
    and scoring default to the model's config."""
    ensemble = ensemble or model.cfg.eval.frame_ensemble
    memories, _ = model.encode_clips(video, ensemble)
    clip_states = [model.question_states(memories[:, c], question_ids, question_mask) for c in range(memories.shape[1])]
    k = min(k or model.cfg.qa.k_test, answer_ids.shape[0])
    return rank_answer_list(model, clip_states, question_mask, answer_ids, answer_mask, k, ensemble, scoring or model.cfg.qa.scoring)


def exact_match_accuracy(predicted: Sequence[str], gold: Sequence[str]) -> float:
    """Percentage of predictions equal to the ground-truth answer string."""
    if len(predicted) != len(gold):
        raise ConfigError(f"{len(predicted)} predictions for {len(gold)} questions")
    if not gold:
        return 0.0
    return 100.0 * sum(p == g for p, g in zip(predicted, gold)) / len(gold)


@torch.no_grad()
def multiple_choice_scores(
    model: Singularity, video: Tensor, option_ids: Tensor, option_mask: Tensor, ensemble: str | None = None
) -> Tensor:
    """(B, O) ITM match logits of each video with each of its O options (B, O, L), frame ensemble applied."""
    ensemble = ensemble or model.cfg.eval.frame_ensemble
    batch, num_options, length = option_ids.shape
    memories, _ = model.encode_clips(video, ensemble)  # (B, C, M, D)
    text = model.text_features(option_ids.reshape(-1, length), option_mask.reshape(-1, length))
    per_clip = [
        model.itm_logits(text.states, text.mask, memories[:, c].repeat_interleave(num_options, dim=0))[:, 1]
        for c in range(memories.shape[1])
    ]
    return aggregate_clips(torch.stack(per_clip), ensemble).view(batch, num_options)


def multiple_choice_accuracy(scores: Tensor, answers: Tensor) -> float:
    """Percentage of rows whose highest-scoring option is the answer."""
    return 100.0 * float((scores.argmax(dim=1) == answers.to(scores.device)).float().mean())



def answer_texts(answers: Sequence[str], eos: str) -> list[str]:
    """Answers as the decoder sees them (official: "answer [SEP]")."""
    return [f"{a} {eos}" for a in answers]


def answer_weights(answers: Sequence[str]) -> tuple[list[str], list[float]]:
    """The distinct answers of a question, each weighted by its share of the annotations (official)."""
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return list(counts), [n / len(answers) for n in counts.values()]


__all__ = [
    "QA_SCORINGS",
    "AnswerDecoder",
    "rank_answer_list",
    "rank_answers",
    "exact_match_accuracy",
    "multiple_choice_scores",
    "multiple_choice_accuracy",
    "answer_texts",
    "answer_weights",
]
