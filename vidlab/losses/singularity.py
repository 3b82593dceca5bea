"""Singularity's training losses, computed with a `vidlab.models.singularity.Singularity` (which keeps its
encoders, fusion and heads): ITC + ITM (+ MLM for pre-training) as the official `forward` of the retrieval
model, and the weighted answer loss of the QA model. What the recipe's `training_loss` calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from vidlab.errors import ConfigError
from vidlab.losses.matching import (
    itc_loss,
    itm_loss,
    mask_tokens,
    mlm_loss,
    sample_itm_negatives,
)
from vidlab.models.singularity import Singularity, VideoFeatures, frame_mean_similarity

Gather = Callable[[Tensor], Tensor]  # local rows -> the rows of every process


def matching_losses(
    model: Singularity, batch: Mapping[str, Tensor], gather: Gather | None = None, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Weighted losses of one batch: `loss_itc`, `loss_itm`, and `loss_mlm` for task 'pretrain'.

    batch: `video` (B, T, 3, H, W), `input_ids` / `attention_mask` (B, L), optional `idx` (B,) naming
    each sample's source (same idx = extra ITC positives, never an ITM negative). `gather` (local ->
    all processes) widens the negatives to the global batch when `losses.gather_negatives` is set.
    """
    return losses_of_features(model, model.video_features(batch["video"]), batch, gather, generator)

def losses_of_features(
    model: Singularity, video: VideoFeatures, batch: Mapping[str, Tensor], gather: Gather | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """`matching_losses` from already encoded video features (`encode_video`); `batch` without `video`."""
    if model.cfg.task == "qa":
        raise ConfigError("a QA model trains with qa_loss")
    if video.pooled is None:
        raise ConfigError("ITC needs pooled per-frame features (a pooler, or temporal_vision_encoder.update_pooler_embed)")
    losses_cfg = model.cfg.losses
    model.clamp_temperature()
    text = model.text_features(batch["input_ids"], batch["attention_mask"])
    idx = batch.get("idx")
    gathering = losses_cfg.gather_negatives and gather is not None
    if gathering and idx is None:
        raise ConfigError(
            "losses.gather_negatives needs batch['idx'] to find each row's positives in the global batch"
        )
    widen = gather if gathering else (lambda local: local)

    video_feat, text_feat = model.video_feat(video.pooled), model.text_feat(text.pooled)
    all_video_feat, all_text_feat = widen(video_feat), widen(text_feat)
    all_idx = widen(idx) if idx is not None else None
    sim_v2t = frame_mean_similarity(video_feat, all_text_feat, model.temp)
    sim_t2v = frame_mean_similarity(all_video_feat, text_feat, model.temp).T
    losses = {"loss_itc": losses_cfg.itc_weight * itc_loss(sim_v2t, sim_t2v, idx, idx, all_idx, all_idx)}

    memory = video.memory
    negatives = sample_itm_negatives(
        sim_v2t.detach(), sim_t2v.detach(), idx, idx, all_idx, all_idx, losses_cfg.itm_hard_negatives, generator
    )
    states, mask = text.states, text.mask
    if gathering:  # each process pads its captions to its longest: gather them at the longest of all
        length = int(widen(torch.tensor([mask.shape[1]], device=mask.device)).max())
        states, mask = F.pad(states, (0, 0, 0, length - mask.shape[1])), F.pad(mask, (0, length - mask.shape[1]))
    negative_memory = widen(memory)[negatives.video_for_text]
    negative_text = widen(states)[negatives.text_for_video]
    negative_mask = widen(mask)[negatives.text_for_video]
    logits = model.itm_logits(
        torch.cat([states, states, negative_text]),
        torch.cat([mask, mask, negative_mask]),
        torch.cat([memory, negative_memory, memory]),
    )
    losses["loss_itm"] = losses_cfg.itm_weight * itm_loss(logits)

    if model.cfg.task == "pretrain":
        special = (model.cfg.text.pad_token_id, model.cfg.text.cls_token_id)
        masked = mask_tokens(
            batch["input_ids"],
            model.cfg.text.vocab_size,
            model.cfg.text.mask_token_id,
            special,
            losses_cfg.mlm_prob,
            generator,
        )
        masked_states = model.text_encoder.encode_text(masked.input_ids, text.mask)
        fused = model.fuse(masked_states, text.mask, memory)
        losses["loss_mlm"] = losses_cfg.mlm_weight * mlm_loss(model.text_encoder.lm_logits(fused), masked.labels)
    return losses


def qa_loss(model: Singularity, batch: Mapping[str, Tensor]) -> Tensor:
    """The official QA training loss: sum over answers of weight * answer NLL, / number of questions.

    batch: `video`, `question_ids` / `question_mask` (B, Lq), `answer_ids` / `answer_mask` (A, La) with
    the answers of question b consecutive, `answers_per_question` (B,), `answer_weights` (A,).
    """
    memory = model.video_features(batch["video"]).memory
    states = model.question_states(memory, batch["question_ids"], batch["question_mask"])
    counts = torch.as_tensor(batch["answers_per_question"], device=states.device)
    nll = model.answer_nll(
        states.repeat_interleave(counts, dim=0),
        batch["question_mask"].repeat_interleave(counts, dim=0),
        batch["answer_ids"],
        batch["answer_mask"],
    )
    return (batch["answer_weights"] * nll).sum() / states.shape[0]
