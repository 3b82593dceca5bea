"""Singularity's official checkpoints: recognition, renaming, the official config, and fitting to a model.

Official files are `torch.save({'model': state_dict, 'optimizer', ..., 'config': <pickled OmegaConf>})`
(read without running code by `load_pickled_checkpoint`). vidlab's Singularity uses the official
downstream names, so the renaming is small (`OFFICIAL_SINGULARITY_KEY_MAP`): `bert.` is stripped from
`text_encoder.bert.*` (pre-training) and `text_decoder.bert.*` (QA); the persistent buffers older
transformers saved (`position_ids`, `relative_position_index`) are ignored on purpose.

Everything that depends on the target model happens in `adapt_singularity_state_dict`, each change
written into the load report:
- a pre-training MLM head (`text_encoder.cls.*`) is dropped by a retrieval/QA model;
- a QA model initialised from a pre-training or retrieval checkpoint gets its answer decoder from the
  fusion layers (`text_encoder` layers fusion_layer.. -> decoder layers 0..), the embeddings and the MLM
  head, as the official `setup_model(has_decoder=True)` does with its hard-coded 9 (a retrieval
  checkpoint has no MLM head: the decoder's LM head transform and bias keep their init, listed in the
  report; when the frames are narrower or wider than the text, the fusion layers' cross-attention key/value
  projections cannot read the question states and the decoder keeps its own); the retrieval heads and the
  BEiT pooler, which a QA model does not have, are dropped;
- `temporal_embeddings` are zero-padded or truncated to the model's frame count;
- BEiT relative-position-bias tables are interpolated to a new patch grid (BEiT's geometric-progression
  resampling with an interpolating bicubic spline, what the official `scipy.interpolate.interp2d(kind=
  'cubic')` computes), ViT position embeddings bicubically.
Unlike the official `load_state_dict(strict=False)`, anything else that does not fit is an error listing
the keys (e.g. a temporal checkpoint loaded without the temporal encoder, official issue #17).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.beit import (
    NUM_SPECIAL_OFFSETS,
    VisionTowerConfig,
    relative_bias_table_size,
)
from vidlab.models.checkpoint import (
    ForeignObject,
    KeyMap,
    LoadReport,
    MappedStateDict,
    load_pickled_checkpoint,
    load_state_dict_strict,
    read_safetensors,
    summarize_keys,
)
from vidlab.models.errors import CheckpointError
from vidlab.models.factory import register_checkpoint_format, typed_model_config
from vidlab.models.text import HUB_TEXT_CONFIGS

logger = logging.getLogger(__name__)

FAMILY = "singularity"

# configs/config_bert.json of the official repo: bert-base-uncased + fusion_layer 9.
OFFICIAL_BERT_BASE: dict[str, Any] = {**HUB_TEXT_CONFIGS["bert-base-uncased"], "initializer_range": 0.02, "fusion_layer": 9}
# microsoft/beit-base-patch16-224-pt22k-ft22k (configs/beit-base-patch16-224-pt22k-ft22k.json).
OFFICIAL_BEIT_BASE: dict[str, Any] = {
    "arch": "beit",
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.1,
    "layer_scale_init_value": 0.1,
    "use_relative_position_bias": True,
    "use_absolute_position_embeddings": False,
    "use_mean_pooling": True,
}
# facebook/deit-base-patch16-224 as transformers' ViTModel loads it (the official `vit_type: deit`).
OFFICIAL_DEIT_BASE: dict[str, Any] = {
    "arch": "vit",
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "drop_path_rate": 0.0,
    "layer_scale_init_value": 0.0,
    "use_relative_position_bias": False,
    "use_absolute_position_embeddings": True,
    "use_mean_pooling": False,
    "qkv_bias": True,
}
_VISION_FIELDS = {f.name for f in fields(VisionTowerConfig)}
_TEXT_FIELDS = set(OFFICIAL_BERT_BASE)

# ---------------------------------------------------------------------------------------------------------
# The official config (a pickled OmegaConf DictConfig, recorded as inert ForeignObjects)


def official_config_to_container(obj: Any) -> Any:
    """Plain dicts/lists/values from a restricted-unpickled OmegaConf config (or a plain mapping)."""
    if isinstance(obj, ForeignObject):
        state = obj.state if isinstance(obj.state, Mapping) else {}
        if "_content" in state:
            return official_config_to_container(state["_content"])
        if "_val" in state:
            return official_config_to_container(state["_val"])
        return None
    if isinstance(obj, Mapping):
        return {str(k): official_config_to_container(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [official_config_to_container(v) for v in obj]
    return obj


def _frames_of(video_input: Mapping[str, Any], key: str, default: int) -> int:
    value = video_input.get(key, default)
    return int(value) if isinstance(value, (int, float)) else default


def _max_text_length(value: Any, default: int) -> int:
    """`max_txt_l` is an int, or a {image: n, video: m} mapping in pre-training: the longest applies."""
    if isinstance(value, Mapping):
        lengths = [int(v) for v in value.values() if isinstance(v, (int, float))]
        return max(lengths) if lengths else default
    return int(value) if isinstance(value, (int, float)) else default


def _vision_fields(vision_config: Mapping[str, Any]) -> dict[str, Any]:
    """The `model.vision` fields of a transformers BEiT/ViT config.json's content, refusing what the tower lacks."""
    if vision_config.get("use_shared_relative_position_bias"):
        raise ConfigError("a BEiT with a shared relative position bias is not supported (Singularity uses per-layer)")
    if vision_config.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"vision hidden_act {vision_config['hidden_act']!r} is not supported (gelu)")
    return {k: v for k, v in vision_config.items() if k in _VISION_FIELDS and k != "arch"}


def hub_vision_sizes(vision_config: Mapping[str, Any]) -> dict[str, Any]:
    """The `model.vision` config of a transformers BEiT or ViT/DeiT folder's config.json, but its image size:
    the official model builds its image tower from the hub folder's config with its own `image_res`, and
    resizes the position tables to it."""
    model_type = vision_config.get("model_type")
    if model_type not in ("beit", "vit"):
        raise ConfigError(f"model.init.vision_weights: a {model_type!r} model; Singularity's image tower is a BEiT or a ViT/DeiT")
    vision = dict(OFFICIAL_BEIT_BASE if model_type == "beit" else OFFICIAL_DEIT_BASE)
    vision.update(_vision_fields(vision_config))
    del vision["image_size"]
    return vision


def singularity_config_from_official(
    official: Mapping[str, Any],
    bert_config: Mapping[str, Any] | None = None,
    vision_config: Mapping[str, Any] | None = None,
    task: str | None = None,
) -> DictConfig:
    """Translate an official Singularity config (the YAML / the checkpoint's pickled config) into a vidlab one.

    The official config names its BERT and ViT by file/hub name; their sizes come from `bert_config`
    (config_bert.json's content) and `vision_config` (the BEiT/ViT config.json's content), defaulting to
    the official BERT-base + BEiT-base (or DeiT-base for `vit_type: deit|vit`). `task` (pretrain |
    retrieval | qa) defaults to what the config implies: `text_decoder` -> qa, `mlm_prob` -> pretrain.
    """
    vit_type = str(official.get("vit_type", "beit"))
    if vit_type not in ("beit", "deit", "vit"):
        raise ConfigError(f"official vit_type {vit_type!r} is not supported (beit, deit, vit)")
    vision = dict(OFFICIAL_BEIT_BASE if vit_type == "beit" else OFFICIAL_DEIT_BASE)
    if vision_config:
        vision.update(_vision_fields(vision_config))
    if "image_res" in official:
        vision["image_size"] = int(official["image_res"])
    text = dict(OFFICIAL_BERT_BASE)
    if bert_config:
        if bert_config.get("hidden_act", "gelu") != "gelu":
            raise ConfigError(f"text hidden_act {bert_config['hidden_act']!r} is not supported (gelu)")
        text.update({k: v for k, v in bert_config.items() if k in _TEXT_FIELDS})
    text["max_length"] = _max_text_length(official.get("max_txt_l"), 32)
    if task is None:
        task = "qa" if "text_decoder" in official else "pretrain" if "mlm_prob" in official else "retrieval"
    video_input = official.get("video_input") or {}
    temporal = official.get("temporal_vision_encoder") or {}
    weights = official.get("loss_weight") or {}
    raw: dict[str, Any] = {
        "family": FAMILY,
        "task": task,
        "vision": vision,
        "text": text,
        "embed_dim": int(official.get("embed_dim", 256)),
        "temp": float(official.get("temp", 0.07)),
        "num_frames": _frames_of(video_input, "num_frames", 1),
        "add_temporal_embed": bool(official.get("add_temporal_embed", False)),
        "temporal_vision_encoder": {
            "enable": bool(temporal.get("enable", False)),
            "num_layers": int(temporal.get("num_layers", 2)),
            "update_pooler_embed": bool(temporal.get("update_pooler_embed", False)),
        },
        "losses": {
            "itc_weight": float(weights.get("itc", 1.0)),
            "itm_weight": float(weights.get("itm", 1.0)),
            "mlm_weight": float(weights.get("mlm", 1.0)),
            "mlm_prob": float(official.get("mlm_prob", 0.5)),
            "itm_hard_negatives": bool(official.get("itm_hard_neg", True)),
        },
        "eval": {
            "num_frames_test": _frames_of(video_input, "num_frames_test", 4),
            "frame_ensemble": str(official.get("eval_frame_ensemble", "concat")),
            "k_test": int(official.get("k_test", 128)),
            "offload": bool(official.get("eval_offload", False)),
        },
    }
    if task == "qa":
        raw["qa"] = {
            "max_question_length": int(official.get("max_q_len", 25)),
            "max_answer_length": int(official.get("max_a_len", 5)),
        }
    return typed_model_config(raw)


# ---------------------------------------------------------------------------------------------------------
# Sizes from the tensors


def _layer_indices(tensors: Mapping[str, Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in tensors if (m := re.fullmatch(pattern, k))})


def infer_singularity_config(cfg: DictConfig, tensors: Mapping[str, Tensor]) -> DictConfig:
    """Correct `cfg`'s sizes to those of a vidlab-named Singularity state dict.

    Widths, depths, stem, patch size and resolution, fusion layer, vocabulary, frame count, projection size,
    temporal encoder and task follow the tensors. Head counts come from BEiT's bias tables; BERT's cannot be read from
    shapes and are kept when the width is unchanged, else set to width // 64 with a warning.
    """
    cfg = copy.deepcopy(cfg)
    v = "vision_encoder."
    patch = tensors.get(v + "embeddings.patch_embeddings.projection.weight")
    if patch is not None:
        stem = v + "embeddings.patch_embeddings.stem."
        stem_convs = [k for k in tensors if k.startswith(stem) and k.endswith(".weight") and tensors[k].dim() == 4]
        cfg.vision.hidden_size = int(patch.shape[0])
        if stem_convs:  # the convolutional stem: one stride-2 convolution per halving
            cfg.vision.stem, cfg.vision.patch_size = "conv", 2 ** len(stem_convs)
            cfg.vision.num_channels = int(tensors[stem + "0.weight"].shape[1])
        else:
            cfg.vision.stem, cfg.vision.patch_size = "patch", int(patch.shape[2])
            cfg.vision.num_channels = int(patch.shape[1])
        layers = _layer_indices(tensors, r"vision_encoder\.encoder\.layer\.(\d+)\..+")
        cfg.vision.num_hidden_layers = len(layers)
        cfg.vision.intermediate_size = int(tensors[v + "encoder.layer.0.intermediate.dense.weight"].shape[0])
        table = tensors.get(
            v + "encoder.layer.0.attention.attention.relative_position_bias.relative_position_bias_table"
        )
        cfg.vision.use_relative_position_bias = table is not None
        if table is not None:
            cfg.vision.num_attention_heads = int(table.shape[1])
            grid = (round((table.shape[0] - NUM_SPECIAL_OFFSETS) ** 0.5) + 1) // 2
            cfg.vision.image_size = grid * cfg.vision.patch_size
        elif v + "embeddings.position_embeddings" in tensors:
            grid = round((tensors[v + "embeddings.position_embeddings"].shape[1] - 1) ** 0.5)
            cfg.vision.image_size = grid * cfg.vision.patch_size
        if v + "encoder.layer.0.lambda_1" not in tensors:
            cfg.vision.layer_scale_init_value = 0.0
        elif cfg.vision.layer_scale_init_value <= 0:
            cfg.vision.layer_scale_init_value = 0.1  # any positive value creates the scales the tensors fill
        cfg.vision.use_absolute_position_embeddings = v + "embeddings.position_embeddings" in tensors
        cfg.vision.arch = "beit" if "vision_layernorm.weight" in tensors else "vit"
    t = "text_encoder."
    words = tensors.get(t + "embeddings.word_embeddings.weight")
    if words is not None:
        vocab, width = (int(n) for n in words.shape)
        if width != cfg.text.hidden_size:
            cfg.text.num_attention_heads = max(1, width // 64)
            logger.warning(
                "text width %d differs from the config: assuming %d heads", width, cfg.text.num_attention_heads
            )
        cfg.text.vocab_size, cfg.text.hidden_size = vocab, width
        cfg.text.max_position_embeddings = int(tensors[t + "embeddings.position_embeddings.weight"].shape[0])
        cfg.text.type_vocab_size = int(tensors[t + "embeddings.token_type_embeddings.weight"].shape[0])
        layers = _layer_indices(tensors, r"text_encoder\.encoder\.layer\.(\d+)\..+")
        fused = _layer_indices(tensors, r"text_encoder\.encoder\.layer\.(\d+)\.crossattention\..+")
        cfg.text.num_hidden_layers = len(layers)
        cfg.text.fusion_layer = fused[0] if fused else len(layers)
        cfg.text.intermediate_size = int(tensors[t + "encoder.layer.0.intermediate.dense.weight"].shape[0])
    if "temporal_embeddings" in tensors:
        cfg.num_frames = int(tensors["temporal_embeddings"].shape[1])
    temporal_layers = _layer_indices(tensors, r"temporal_vision_encoder\.layer\.(\d+)\..+")
    cfg.temporal_vision_encoder.enable = bool(temporal_layers)
    if temporal_layers:
        cfg.temporal_vision_encoder.num_layers = len(temporal_layers)
    if "vision_proj.weight" in tensors:
        cfg.embed_dim = int(tensors["vision_proj.weight"].shape[0])
    decoder_layers = _layer_indices(tensors, r"text_decoder\.encoder\.layer\.(\d+)\..+")
    if decoder_layers:
        cfg.task, cfg.qa.decoder_layers = "qa", len(decoder_layers)
    elif any(k.startswith("text_encoder.cls.") for k in tensors) and cfg.task != "qa":
        cfg.task = "pretrain"
    return cfg


# ---------------------------------------------------------------------------------------------------------
# The official checkpoint format

OFFICIAL_SINGULARITY_KEY_MAP = KeyMap(
    rules=(
        (r"text_(encoder|decoder)\.bert\.(.+)", r"text_\1.\2"),
        (r"(.+)", r"\1"),
    ),
    # Buffers that xbert / transformers 4.15 saved persistently; vidlab rebuilds them.
    ignore=(
        r"text_(encoder|decoder)\.(bert\.)?embeddings\.position_ids",
        r"vision_encoder\.encoder\.layer\.\d+\.attention\.attention\.relative_position_bias\.relative_position_index",
    ),
)
_OFFICIAL_MARKERS = re.compile(r"text_(encoder|decoder)\.(bert\.|embeddings\.position_ids)")


def _official_state(obj: Any) -> Mapping[str, Any] | None:
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    return state if isinstance(state, Mapping) else None


def is_official_singularity_checkpoint(obj: Any) -> bool:
    """An official trainer file ({'model': state_dict, ...}) or a bare official state dict.

    A bare dict needs an official-only key (`text_*.bert.*` or the old persistent `position_ids`), so a
    vidlab Singularity state dict (same names otherwise) is not taken for one.
    """
    state = _official_state(obj)
    if state is None or not any(isinstance(k, str) and k.startswith("vision_encoder.") for k in state):
        return False
    has_text = any(isinstance(k, str) and k.startswith(("text_encoder.", "text_decoder.")) for k in state)
    wrapped = isinstance(obj, Mapping) and "model" in obj
    return has_text and (wrapped or any(isinstance(k, str) and _OFFICIAL_MARKERS.match(k) for k in state))


def convert_official_singularity_checkpoint(obj: Any, cfg: DictConfig | None) -> tuple[DictConfig, MappedStateDict]:
    """Official checkpoint -> (config, vidlab-named weights). The config is `cfg` when given; otherwise the
    pickled official config translated by `singularity_config_from_official`, corrected to the tensors."""
    state = _official_state(obj)
    mapped = OFFICIAL_SINGULARITY_KEY_MAP.apply(state)  # type: ignore[arg-type]
    if cfg is None:
        official = official_config_to_container(obj.get("config")) if isinstance(obj, Mapping) else None
        if not isinstance(official, Mapping):
            logger.warning("checkpoint holds no official config: BEiT-base + BERT-base sizes corrected to the tensors")
            official = {}
        cfg = infer_singularity_config(singularity_config_from_official(official), mapped.tensors)
    return cfg, mapped


# ---------------------------------------------------------------------------------------------------------
# Resizing: temporal embeddings, BEiT relative position bias, ViT position embeddings


def resize_temporal_embeddings(table: Tensor, num_frames: int) -> Tensor:
    """(1, F, 1, D) -> (1, num_frames, 1, D): zero-padded when longer, truncated when shorter (official
    `load_temp_embed_with_mismatch`, add_zero=True)."""
    if table.shape[1] >= num_frames:
        return table[:, :num_frames].clone()
    padded = table.new_zeros(table.shape[0], num_frames, *table.shape[2:])
    padded[:, : table.shape[1]] = table
    return padded


def _geometric_offsets(src_size: int, dst_size: int) -> np.ndarray:
    """BEiT's source sample positions: offsets spaced by a geometric progression whose total reaches the
    target half-width, so that near offsets keep their spacing and far ones are stretched."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src_size // 2)) / (1.0 - q) > dst_size // 2:
            right = q
        else:
            left = q
    steps, position = [], 1.0
    for i in range(src_size // 2):
        steps.append(position)
        position += q ** (i + 1)
    return np.array([-s for s in reversed(steps)] + [0.0] + steps)


def not_a_knot_spline_matrix(x_src: np.ndarray, x_dst: np.ndarray) -> np.ndarray:
    """(len(x_dst), len(x_src)) matrix W with W @ y = the interpolating cubic spline through (x_src, y) with
    not-a-knot ends, evaluated at x_dst clamped to [x_src[0], x_src[-1]].

    This is FITPACK's s=0 interpolating spline (knots at the interior data points but the second and the
    second-to-last), which `scipy.interpolate.interp2d(kind='cubic')` fits per axis on a grid.
    """
    n = len(x_src)
    if n < 4:
        raise CheckpointError("relative position bias", f"a {n}-point grid is too small to interpolate (need 4)")
    h = np.diff(x_src)
    # A @ M = B @ y for the second derivatives M.
    a, b = np.zeros((n, n)), np.zeros((n, n))
    a[0, :3] = [-h[1], h[0] + h[1], -h[0]]
    a[-1, -3:] = [-h[-1], h[-2] + h[-1], -h[-2]]
    for i in range(1, n - 1):
        a[i, i - 1 : i + 2] = [h[i - 1], 2 * (h[i - 1] + h[i]), h[i]]
        b[i, i - 1 : i + 2] = [6 / h[i - 1], -6 / h[i - 1] - 6 / h[i], 6 / h[i]]
    second = np.linalg.solve(a, b)  # M = second @ y
    x = np.clip(x_dst, x_src[0], x_src[-1])
    seg = np.clip(np.searchsorted(x_src, x, side="right") - 1, 0, n - 2)
    x0, x1, hs = x_src[seg], x_src[seg + 1], h[seg]
    rows = np.arange(len(x))
    value = np.zeros((len(x), n))
    value[rows, seg] += (x1 - x) / hs
    value[rows, seg + 1] += (x - x0) / hs
    curvature = np.zeros((len(x), n))
    curvature[rows, seg] += ((x1 - x) ** 3 / hs - hs * (x1 - x)) / 6
    curvature[rows, seg + 1] += ((x - x0) ** 3 / hs - hs * (x - x0)) / 6
    return value + curvature @ second


def interpolate_relative_bias_table(table: Tensor, dst_grid: int) -> Tensor:
    """((2S-1)^2 + 3, H) BEiT table -> ((2*dst_grid-1)^2 + 3, H); the 3 [CLS] entries are kept as they are.

    Official `interpolate_pos_relative_bias_beit`: offsets resampled on BEiT's geometric progression with a
    bicubic interpolating spline per head.
    """
    src_size = round((table.shape[0] - NUM_SPECIAL_OFFSETS) ** 0.5)
    if src_size * src_size + NUM_SPECIAL_OFFSETS != table.shape[0]:
        raise CheckpointError("relative position bias", f"table of {table.shape[0]} rows is not (2S-1)^2 + 3")
    dst_size = 2 * dst_grid - 1
    if src_size == dst_size:
        return table
    half = dst_size // 2
    weights = torch.from_numpy(
        not_a_knot_spline_matrix(_geometric_offsets(src_size, dst_size), np.arange(-half, half + 0.1, 1.0))
    )
    offsets = table[:-NUM_SPECIAL_OFFSETS].double().T.reshape(-1, src_size, src_size)  # (H, rows=dy, cols=dx)
    resampled = weights @ offsets @ weights.T  # (H, dst, dst)
    resampled = resampled.reshape(table.shape[1], -1).T.to(table.dtype)
    return torch.cat([resampled, table[-NUM_SPECIAL_OFFSETS:]], dim=0)


def interpolate_position_embeddings(pos_embed: Tensor, dst_grid: int) -> Tensor:
    """(1, 1+S^2, D) ViT position embeddings -> (1, 1+dst_grid^2, D): bicubic over the grid, [CLS] kept
    (official `interpolate_pos_embed`)."""
    src_grid = round((pos_embed.shape[1] - 1) ** 0.5)
    if src_grid == dst_grid:
        return pos_embed
    grid = pos_embed[:, 1:].reshape(1, src_grid, src_grid, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(dst_grid, dst_grid), mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)], dim=1)


# ---------------------------------------------------------------------------------------------------------
# Fitting a vidlab-named state dict to a model config

_RETRIEVAL_HEADS = re.compile(r"temp|(vision_proj|text_proj|itm_head)\..+")
# a fusion layer's cross-attention key/value: their input width is the memory's
_DECODER_MEMORY_PROJECTION = re.compile(r"crossattention\.self\.(key|value)\.(weight|bias)")


def _drop(tensors: dict[str, Tensor], keys: list[str], why: str, notes: list[str]) -> None:
    for key in keys:
        del tensors[key]
    if keys:
        notes.append(f"dropped {len(keys)} tensors ({why}): " + "; ".join(summarize_keys(keys)))


def _decoder_from_fusion_layers(cfg: DictConfig, tensors: dict[str, Tensor], notes: list[str]) -> None:
    """QA init from a pre-training checkpoint: decoder layer j <- text_encoder layer fusion_layer + j, the
    decoder's embeddings and LM head <- the text encoder's (official setup_model, has_decoder=True)."""
    fusion, depth = cfg.text.fusion_layer, cfg.qa.decoder_layers
    if fusion + depth > cfg.text.num_hidden_layers:
        raise CheckpointError(
            "text_decoder",
            f"{depth} decoder layers cannot come from layers {fusion}.. of a {cfg.text.num_hidden_layers}-layer encoder",
        )
    layer = re.compile(r"text_encoder\.encoder\.layer\.(\d+)\.(.+)")
    frames_width, question_width = cfg.vision.hidden_size, cfg.text.hidden_size
    copied = 0
    for key in list(tensors):
        match = layer.fullmatch(key)
        if match and fusion <= int(match.group(1)) < fusion + depth:
            if frames_width != question_width and _DECODER_MEMORY_PROJECTION.fullmatch(match.group(2)):
                continue  # these read the frames; the decoder's read the question states
            tensors[f"text_decoder.encoder.layer.{int(match.group(1)) - fusion}.{match.group(2)}"] = tensors[key]
            copied += 1
        elif key.startswith(("text_encoder.embeddings.", "text_encoder.cls.")):
            tensors["text_decoder." + key.removeprefix("text_encoder.")] = tensors[key]
            copied += 1
    head = "text_decoder.cls.predictions.decoder.weight"
    if head not in tensors:  # no MLM head in the checkpoint: the LM head's decoder is tied to the embeddings
        tensors[head] = tensors["text_decoder.embeddings.word_embeddings.weight"]
        what = "embeddings copied; no MLM head in the checkpoint, the LM head transform keeps its init"
    else:
        what = "embeddings and MLM head copied"
    if frames_width != question_width:
        what += (
            f"; the cross-attention key/value projections keep their init (the fusion layers read {frames_width}-wide "
            f"frames, the decoder reads {question_width}-wide question states)"
        )
    notes.append(
        f"text_decoder initialised from the checkpoint's text encoder ({copied} tensors): layers "
        f"{fusion}..{fusion + depth - 1} -> decoder layers 0..{depth - 1}, {what}"
    )


def adapt_singularity_state_dict(cfg: DictConfig, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Fit a vidlab-named Singularity state dict to the model `cfg` describes (see the module docstring)."""
    tensors, notes = dict(tensors), []
    has_decoder = any(k.startswith("text_decoder.") for k in tensors)
    if cfg.task == "qa" and not has_decoder and "text_encoder.embeddings.word_embeddings.weight" in tensors:
        _decoder_from_fusion_layers(cfg, tensors, notes)
    if cfg.task != "pretrain":
        _drop(
            tensors, [k for k in tensors if k.startswith("text_encoder.cls.")], "MLM head; this model has none", notes
        )
    if cfg.task == "qa":
        _drop(
            tensors, [k for k in tensors if _RETRIEVAL_HEADS.fullmatch(k)], "ITC/ITM heads; a QA model has none", notes
        )
        _drop(
            tensors, [k for k in tensors if k.startswith("vision_encoder.pooler.")], "BEiT pooler; unused in QA", notes
        )

    key = "temporal_embeddings"
    if key in tensors and tensors[key].dim() == 4 and tensors[key].shape[1] != cfg.num_frames:
        old = tensors[key]
        tensors[key] = resize_temporal_embeddings(old, cfg.num_frames)
        how = "truncated" if old.shape[1] > cfg.num_frames else "zero-padded"
        notes.append(f"{key} {tuple(old.shape)} -> {tuple(tensors[key].shape)}, {how}")

    grid = cfg.vision.image_size // cfg.vision.patch_size
    table_rows = relative_bias_table_size(grid)
    resized = [k for k, t in tensors.items() if k.endswith("relative_position_bias_table") and t.shape[0] != table_rows]
    for name in resized:
        tensors[name] = interpolate_relative_bias_table(tensors[name], grid)
    if resized:
        notes.append(f"{len(resized)} relative position bias tables interpolated to a {grid}x{grid} patch grid")
    pos_key = "vision_encoder.embeddings.position_embeddings"
    if pos_key in tensors and tensors[pos_key].shape[1] != grid * grid + 1:
        old_shape = tuple(tensors[pos_key].shape)
        tensors[pos_key] = interpolate_position_embeddings(tensors[pos_key], grid)
        notes.append(f"{pos_key} {old_shape} -> {tuple(tensors[pos_key].shape)}, bicubic")
    return tensors, notes


# ---------------------------------------------------------------------------------------------------------
# Initial weights from the towers the official code downloads (BEiT / DeiT image models, bert-base-uncased)

HUB_VISION_KEY_MAP = KeyMap(
    rules=((r"(?:beit\.|vit\.)?(embeddings|encoder|pooler\.layernorm|layernorm)\.(.+)", r"\1.\2"),),
    ignore=(
        r".*relative_position_index",
        r"(beit\.|vit\.)?embeddings\.mask_token",
        r"(beit\.|vit\.)?pooler\.dense\..+",
        r"(classifier|lm_head)\..+",
    ),
)
_HUB_TEXT_IGNORED = (r".*position_ids", r"(bert\.)?pooler\..+", r"cls\.seq_relationship\..+")
# The LM head parts that keep their init when a source has no MLM head (the decoder weight is tied to the
# word embeddings, which every source has).
_LM_HEAD_OWN_INIT = (r"cls\.predictions\.(transform\..+|bias|decoder\.bias)",)
# The LM head's decoder is tied to the word embeddings and the head bias; files often omit the tied copies.
_TIED_HEAD = (
    ("cls.predictions.decoder.weight", "embeddings.word_embeddings.weight"),
    ("cls.predictions.decoder.bias", "cls.predictions.bias"),
)


def read_hub_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A transformers model folder (model.safetensors or pytorch_model.bin) or one weights file, read
    without running code; TF-era LayerNorm names (gamma/beta) become weight/bias."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("model.safetensors", "pytorch_model.bin") if (path / name).is_file()]
        if not found:
            raise CheckpointError(str(path), "no model.safetensors or pytorch_model.bin in this folder")
        path = found[0]
    state = read_safetensors(path) if path.suffix == ".safetensors" else load_pickled_checkpoint(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(str(path), "expected a transformers state dict of tensors")
    return {
        re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
        for k, v in state.items()
    }


def _text_key_map(num_layers: int, lm_head: bool) -> KeyMap:
    """bert-base-uncased -> a FusionBert with `num_layers` layers: the file's first `num_layers` layers (the
    official decoder takes layers 0..2 this way), the rest ignored; the MLM head when the tower has one."""
    wanted = "|".join(str(i) for i in range(num_layers))
    rules = [
        (r"(?:bert\.)?embeddings\.(.+)", r"embeddings.\1"),
        (rf"(?:bert\.)?encoder\.layer\.({wanted})\.(.+)", r"encoder.layer.\1.\2"),
    ]
    if lm_head:
        rules.append((r"cls\.predictions\.(.+)", r"cls.predictions.\1"))
    other_layers = rf"(bert\.)?encoder\.layer\.(?!({wanted})\.)\d+\..+"
    ignore = (*_HUB_TEXT_IGNORED, other_layers, *(() if lm_head else (r"cls\.predictions\..+",)))
    return KeyMap(rules=tuple(rules), ignore=ignore)


def load_tower_weights(
    model: nn.Module, vision: str | Path | None = None, text: str | Path | None = None
) -> list[LoadReport]:
    """Initialise a Singularity model from hub-format towers, as the official `from_pretrained` calls do:
    the image tower from a BEiT/ViT file (bias tables or position embeddings resized to the model's grid),
    the text encoder from a BERT file (the fusion layers' cross-attention keeps its init), and a QA
    decoder from the same file's first layers. Each load is strict otherwise; one report per tower."""
    reports = []
    if vision is not None:
        mapped = HUB_VISION_KEY_MAP.apply(read_hub_state_dict(vision))
        if model.vision_encoder.pooler is None:
            mapped.ignored += [k for k in mapped.tensors if k.startswith("pooler.")]
            mapped.tensors = {k: v for k, v in mapped.tensors.items() if not k.startswith("pooler.")}
        grid, notes = model.vision_encoder.grid_size, []
        for name, tensor in list(mapped.tensors.items()):
            if name.endswith("relative_position_bias_table") and tensor.shape[0] != relative_bias_table_size(grid):
                mapped.tensors[name] = interpolate_relative_bias_table(tensor, grid)
                notes.append(f"{name} interpolated to a {grid}x{grid} patch grid")
            elif name == "embeddings.position_embeddings" and tensor.shape[1] != grid * grid + 1:
                mapped.tensors[name] = interpolate_position_embeddings(tensor, grid)
                notes.append(f"{name} resized to a {grid}x{grid} patch grid")
        reports.append(load_state_dict_strict(model.vision_encoder, mapped, str(vision), adapted=notes))
    if text is not None:
        state = read_hub_state_dict(text)
        for tower in (t for t in (model.text_encoder, model.text_decoder) if t is not None):
            mapped = _text_key_map(tower.num_layers, tower.cls is not None).apply(state)
            for tied, source in _TIED_HEAD if tower.cls is not None else ():
                if tied not in mapped.tensors and source in mapped.tensors:
                    mapped.tensors[tied] = mapped.tensors[source]
            allowed = (r"encoder\.layer\.\d+\.crossattention\..+",)
            if tower.cls is not None and not any(k.startswith("cls.") for k in state):
                allowed += _LM_HEAD_OWN_INIT  # an encoder-only file (e.g. all-MiniLM-L6-v2): no MLM head
            reports.append(load_state_dict_strict(tower, mapped, str(text), allowed_missing=allowed))
    return reports


def singularity_allowed_missing(cfg: DictConfig) -> tuple[str, ...]:
    """The temporal encoder may be absent from a checkpoint: the official code initialises it randomly
    when a single-frame checkpoint starts a temporal model. A QA decoder made from a retrieval
    checkpoint's fusion layers has no LM head transform to copy, nor, when the vision and text widths differ,
    cross-attention key/value projections of the question's width (`_decoder_from_fusion_layers`)."""
    allowed = (r"temporal_vision_encoder\..+",) if cfg.temporal_vision_encoder.enable else ()
    if cfg.task == "qa":
        allowed += tuple(f"text_decoder\\.{pattern}" for pattern in _LM_HEAD_OWN_INIT)
        if cfg.vision.hidden_size != cfg.text.hidden_size:
            allowed += (r"text_decoder\.encoder\.layer\.\d+\." + _DECODER_MEMORY_PROJECTION.pattern,)
    return allowed


register_checkpoint_format(
    "singularity (official {'model': ..., 'config': ...})",
    is_official_singularity_checkpoint,
    convert_official_singularity_checkpoint,
)

__all__ = [
    "OFFICIAL_BERT_BASE",
    "OFFICIAL_BEIT_BASE",
    "OFFICIAL_DEIT_BASE",
    "OFFICIAL_SINGULARITY_KEY_MAP",
    "official_config_to_container",
    "singularity_config_from_official",
    "infer_singularity_config",
    "is_official_singularity_checkpoint",
    "convert_official_singularity_checkpoint",
    "resize_temporal_embeddings",
    "not_a_knot_spline_matrix",
    "interpolate_relative_bias_table",
    "interpolate_position_embeddings",
    "adapt_singularity_state_dict",
    "HUB_VISION_KEY_MAP",
    "read_hub_state_dict",
    "load_tower_weights",
    "singularity_allowed_missing",
]
