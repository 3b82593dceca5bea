"""Golden checks of Singularity against outputs of the official code: retrieval models (frame-level and
temporal, like `singularity_model` / `singularity_temporal`), QA (`singularity_qa`) and re-ranking on stub
inputs (`singularity_ensemble`), told apart by the case's inputs; sizes, frame counts and temperatures come
from the case's tensors and json.

The model cases build the model from the official constructor arguments recorded in the case json
(`singularity_config_from_official`), load the case's `state_dict.*` tensors through `create_model` as an
official `{'model': state_dict}` checkpoint (plus the legacy `relative_position_index` buffers older
transformers saved, which must be ignored), and compare every `output.*` / `debug.*` tensor, collecting
all differences before failing. `singularity_ensemble` runs vidlab's re-ranking (`rerank_topk`) and
frame-mean similarity on the stub inputs the official `evaluation()` was run with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vidlab.golden import GoldenCase, GoldenMismatch, Mismatches, Outputs, compare_outputs, suggested_tolerance
from vidlab.models import create_model
from vidlab.models.beit import beit_relative_position_index
from vidlab.models.factory import apply_overrides
from vidlab.models.singularity import Singularity, frame_mean_similarity
from vidlab.models.singularity_weights import singularity_config_from_official
from vidlab.tasks.ensemble import FRAME_ENSEMBLES
from vidlab.tasks.qa import rank_answers
from vidlab.tasks.rerank import extract_features, model_pair_scorer, rerank_topk

_FRAMES = re.compile(r"(?:output|debug)\.frames(\d+)\.(\w+)$")
_UPDATED_POOLER = "output.update_pooler_embed_true."
_TEMPERATURE = re.compile(r"output\.get_sim\.t(\d+(?:p\d+)?)\.sim_(i2t|t2i)$")  # t0p05: temperature 0.05
LEGACY_INDEX = "debug.legacy_relative_position_index"



def _load_model(spec: Mapping[str, Any], tensors: Mapping[str, Tensor], **overrides: Any) -> Singularity:
    """The case's model from its official constructor config, loaded from an official in-memory checkpoint."""
    constructor = spec["constructor"]
    cfg = singularity_config_from_official(
        constructor["config"], constructor["bert_config"], constructor["beit_config"]
    )
    state = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    if LEGACY_INDEX in tensors:
        for layer in range(cfg.vision.num_hidden_layers):
            state[
                f"vision_encoder.encoder.layer.{layer}.attention.attention.relative_position_bias.relative_position_index"
            ] = tensors[LEGACY_INDEX]
    return create_model(apply_overrides(cfg, overrides), checkpoint={"model": state})  # type: ignore[return-value]


def _retrieval_outputs(model: Singularity, tensors: Mapping[str, Tensor], modes: list[str]) -> Outputs:
    video, ids, mask = tensors["input.video"], tensors["input.text_input_ids"], tensors["input.text_attention_mask"]
    frames = model.frame_features(video)
    features = model.video_features(video)
    text = model.text_features(ids, mask)
    num_videos, num_texts = video.shape[0], ids.shape[0]

    def itm_pairs() -> tuple[Tensor, Tensor]:
        memory = features.memory.repeat_interleave(num_texts, dim=0)
        fused = model.fuse(text.states.repeat(num_videos, 1, 1), text.mask.repeat(num_videos, 1), memory)
        return fused[:, 0].view(num_videos, num_texts, -1), model.itm_head(fused[:, 0]).view(num_videos, num_texts, 2)

    outputs: Outputs = {
        "output.pooled_vision_embeds": lambda: features.pooled,
        "output.vision_proj": lambda: model.vision_proj(features.pooled),
        "output.vision_feat": lambda: model.video_feat(features.pooled),
        "output.pooled_text_embeds": lambda: text.pooled,
        "output.text_proj": lambda: model.text_proj(text.pooled),
        "output.text_feat": lambda: model.text_feat(text.pooled),
        "output.itc_sim_i2t": lambda: model.similarity(features.pooled, text.pooled),
        "output.itc_sim_i2t_temp": lambda: model.similarity(features.pooled, text.pooled, model.temp),
        "output.itm_logits": lambda: itm_pairs()[1],
        "debug.itm_fused_cls": lambda: itm_pairs()[0],
        "debug.image_embeds": lambda: features.memory,
        "debug.text_embeds": lambda: text.states,
        "debug.beit_last_hidden_state_before_vision_layernorm": lambda: model.vision_encoder(video.flatten(0, 1))[
            0
        ].view(*video.shape[:2], -1, model.vision_width),
        "debug.per_frame_embeds_before_temporal": lambda: frames.tokens,
        LEGACY_INDEX: lambda: beit_relative_position_index(model.vision_encoder.grid_size),
    }
    for mode in modes:
        retrieval = extract_features(model, [video], ids, mask, ensemble=mode)
        itc = model.similarity(retrieval.pooled_video, retrieval.text_states[:, 0])
        scores = rerank_topk(itc, model_pair_scorer(model, retrieval), model.cfg.eval.k_test, mode)
        prefix = f"output.evaluation.{mode}."
        outputs[prefix + "i2t_scores_x"] = lambda s=scores: s.v2t_itm
        outputs[prefix + "t2i_scores_x"] = lambda s=scores: s.t2v_itm
        outputs[prefix + "i2t_scores_emb"] = lambda s=scores: s.v2t_itc
        outputs[prefix + "t2i_scores_emb"] = lambda s=scores: s.t2v_itc
    return outputs


def _frames_outputs(model: Singularity, tensors: Mapping[str, Tensor]) -> Outputs:
    """`output.frames<N>.*` / `debug.frames<N>.*`: the model on N frames, the first N of `input.video` or
    `input.video_<N>frames` where the case gives one (more frames than the temporal embedding holds)."""
    outputs: Outputs = {}
    for name in tensors:
        match = _FRAMES.match(name)
        if not match:
            continue
        count, what = int(match.group(1)), match.group(2)
        video = tensors.get(f"input.video_{count}frames", tensors["input.video"][:, :count])
        if what == "image_embeds":
            outputs[name] = lambda v=video: model.video_features(v).memory
        elif what == "pooled_vision_embeds":
            outputs[name] = lambda v=video: model.video_features(v).pooled
        elif what == "temporal_embeddings_interpolated":
            outputs[name] = lambda n=count: model.temporal_embedding(n)
    return outputs


def check_singularity_retrieval(case: GoldenCase) -> None:
    """A retrieval model (frame-level or temporal): every output the case holds, from the case's own sizes."""
    tensors, found = case.tensors(), Mismatches(case.name)
    modes = sorted({k.split(".")[2] for k in tensors if k.startswith("output.evaluation.")})
    with torch.no_grad():
        model = _load_model(case.spec, tensors)
        outputs = {**_retrieval_outputs(model, tensors, modes), **_frames_outputs(model, tensors)}
        if any(k.startswith(_UPDATED_POOLER) for k in tensors):
            updated = _load_model(case.spec, tensors, **{"temporal_vision_encoder.update_pooler_embed": True})
            video = tensors["input.video"]
            text = updated.text_features(tensors["input.text_input_ids"], tensors["input.text_attention_mask"])
            outputs[_UPDATED_POOLER + "pooled_vision_embeds"] = lambda: updated.video_features(video).pooled
            outputs[_UPDATED_POOLER + "itc_sim_i2t"] = lambda: updated.similarity(
                updated.video_features(video).pooled, text.pooled
            )
        compare_outputs(found, tensors, outputs, tolerance=suggested_tolerance(case.spec))
    found.raise_if_any()


def check_singularity_qa(case: GoldenCase) -> None:
    tensors, found = case.tensors(), Mismatches(case.name)
    video = tensors["input.video"]
    q_ids, q_mask = tensors["input.question_input_ids"], tensors["input.question_attention_mask"]
    a_ids, a_mask = tensors["input.answer_input_ids"], tensors["input.answer_attention_mask"]
    num_questions, num_answers = q_ids.shape[0], a_ids.shape[0]
    with torch.no_grad():
        model = _load_model(case.spec, tensors)
        memory = model.video_features(video).memory
        states = model.question_states(memory, q_ids, q_mask)
        start_logits = model.answer_start_logits(states, q_mask, a_ids[:1, :1].expand(num_questions, 1))
        pair_states = states.repeat_interleave(num_answers, dim=0)
        pair_mask = q_mask.repeat_interleave(num_answers, dim=0)
        first_logprob = F.log_softmax(start_logits, dim=1).index_select(1, a_ids[:, 1])
        neg_nll = -model.answer_nll(
            pair_states, pair_mask, a_ids.repeat(num_questions, 1), a_mask.repeat(num_questions, 1)
        )
        outputs: Outputs = {
            "debug.image_embeds": lambda: memory,
            "debug.question_states": lambda: states,
            "debug.start_logits": lambda: start_logits,
            "debug.answer_first_token_logprob": lambda: first_logprob,
            "debug.answer_neg_lm_loss": lambda: neg_nll.view(num_questions, num_answers),
            "output.answer_scores_all": lambda: first_logprob + neg_nll.view(num_questions, num_answers),
            "debug.decoder_logits": lambda: model.decoder_logits(
                pair_states, pair_mask, a_ids.repeat(num_questions, 1), a_mask.repeat(num_questions, 1)
            ).view(num_questions, num_answers, a_ids.shape[1], -1),
        }
        for name in (k for k in tensors if k.endswith(".topk_ids")):
            _, mode, k_name, _ = name.split(".")
            ranked = rank_answers(
                model, video, q_ids, q_mask, a_ids, a_mask, k=int(k_name[1:]), ensemble=mode, scoring="faithful"
            )
            outputs[name] = lambda r=ranked: r[0]
            outputs[name.replace("topk_ids", "topk_probs")] = lambda r=ranked: r[1]
        compare_outputs(found, tensors, outputs, tolerance=suggested_tolerance(case.spec))
    found.raise_if_any()


def check_singularity_ensemble(case: GoldenCase) -> None:
    tensors, found = case.tensors(), Mismatches(case.name)
    k = int(case.spec["setup"]["config"]["k_test"])
    table = tensors["input.itm_score_table"]  # (frames + 1, V, T): rows 0..F-1 one frame each, row F all frames
    num_frames = table.shape[0] - 1

    def features(t: float) -> Tensor:
        video = F.normalize(
            F.linear(
                tensors["input.pooled_image_embeds"],
                tensors["input.vision_proj.weight"],
                tensors["input.vision_proj.bias"],
            ),
            dim=-1,
        )
        text = F.normalize(
            F.linear(
                tensors["input.pooled_text_embeds"], tensors["input.text_proj.weight"], tensors["input.text_proj.bias"]
            ),
            dim=-1,
        )
        return frame_mean_similarity(video, text, t)

    outputs: Outputs = {}
    for name in tensors:
        match = _TEMPERATURE.match(name)
        if match:
            t = float(match.group(1).replace("p", "."))
            outputs[name] = (lambda t=t: features(t)) if match.group(2) == "i2t" else (lambda t=t: features(t).T)
    for mode in sorted({k.split(".")[2] for k in tensors if k.startswith("output.evaluation.")}):
        if mode not in FRAME_ENSEMBLES:
            found.expect(False, f"evaluation mode {mode!r} is not one vidlab knows ({', '.join(FRAME_ENSEMBLES)})")
            continue
        clips = slice(num_frames, num_frames + 1) if mode == "concat" else slice(0, num_frames)
        scores = rerank_topk(features(1.0), lambda v, t, c=clips: table[c, v, t], k, mode)
        prefix = f"output.evaluation.{mode}."
        outputs[prefix + "i2t_scores_x"] = lambda s=scores: s.v2t_itm
        outputs[prefix + "t2i_scores_x"] = lambda s=scores: s.t2v_itm
        outputs[prefix + "i2t_scores_emb"] = lambda s=scores: s.v2t_itc
        outputs[prefix + "t2i_scores_emb"] = lambda s=scores: s.t2v_itc
    compare_outputs(found, tensors, outputs, tolerance=suggested_tolerance(case.spec))
    found.raise_if_any()


def check_singularity(case: GoldenCase) -> None:
    """Golden-harness entry of the `singularity` family: what the case checks is read from its tensors (a
    re-ranking score table, QA questions, or a retrieval model's video and text), never from its name."""
    inputs = set(case.spec.get("inputs", {})) | set(case.spec.get("tensors", {}).get("inputs", {}))
    if not inputs:
        inputs = {k for k in case.tensors() if k.startswith("input.")}
    if "input.itm_score_table" in inputs:
        check_singularity_ensemble(case)
    elif "input.question_input_ids" in inputs:
        check_singularity_qa(case)
    elif {"input.video", "input.text_input_ids"} <= inputs:
        check_singularity_retrieval(case)
    else:
        raise GoldenMismatch(f"golden case {case.name!r}: its inputs {sorted(inputs)} match no Singularity check")
