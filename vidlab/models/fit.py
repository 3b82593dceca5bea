"""Frozen in Time (Bain et al., 2021): SpaceTimeTransformer video tower, HF text tower, linear projections.

Besides the model this module holds everything FiT-specific about weights:
- `OFFICIAL_FIT_KEY_MAP`: official checkpoint names -> vidlab names (applied after stripping 'module.');
- `fit_config_from_official`: the official `FrozenInTime(**kwargs)` arguments -> a vidlab model config;
- curriculum loading: a checkpoint with a shorter temporal embedding (e.g. 1-frame pre-training) is
  inflated to the model's frame count (`zeros` / `interp` (nearest) / `bilinear`), a longer one truncated.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.checkpoint import ForeignObject, KeyMap, MappedStateDict, find_foreign, strip_prefix
from vidlab.models.errors import CheckpointError
from vidlab.models.factory import ModelFamily, register_checkpoint_format, register_family, typed_model_config
from vidlab.models.space_time import SpaceTimeConfig, SpaceTimeTransformer
from vidlab.models.text import HUB_TEXT_CONFIGS, HFTextTower, TextTowerConfig
from vidlab.models.vit_weights import TIMM_VIT_TO_SPACE_TIME, load_image_vit_weights

logger = logging.getLogger(__name__)

FAMILY = "frozen_in_time"
PROJECTIONS = ("minimal", "none")
TEMPORAL_INFLATIONS = ("zeros", "interp", "bilinear")


@dataclass
class FitInitConfig:
    """Where initial weights come from when no checkpoint is given, and how checkpoints are adapted."""

    vit_weights: str | None = None  # local image ViT file (timm .pth/.safetensors, Google/big_vision .npz)
    temporal_inflation: str = "zeros"  # fills a checkpoint's missing temporal embeddings (FiT load_temporal_fix)


@dataclass
class FrozenInTimeConfig:
    family: str = FAMILY
    video: SpaceTimeConfig = field(default_factory=SpaceTimeConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    projection: str = "minimal"  # minimal: text ReLU -> Linear, video Linear; none: identity
    projection_dim: int = 256
    init: FitInitConfig = field(default_factory=FitInitConfig)


class FrozenInTime(nn.Module):
    """Dual encoder: `encode_video(frames)` and `encode_text(input_ids, attention_mask)` into one space, compared by
    cosine (a `vidlab.models.interface.VideoTextModel`)."""

    def __init__(
        self,
        video_encoder: SpaceTimeTransformer,
        text_encoder: HFTextTower,
        projection_dim: int = 256,
        projection: str = "minimal",
    ):
        super().__init__()
        if projection not in PROJECTIONS:
            raise ConfigError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if projection_dim < 1:
            raise ConfigError(f"projection_dim must be >= 1, got {projection_dim}")
        self.video_encoder = video_encoder
        self.text_encoder = text_encoder
        self.projection = projection
        if projection == "minimal":
            self.text_proj: nn.Module = nn.Linear(text_encoder.hidden_size, projection_dim)
            self.video_proj: nn.Module = nn.Linear(video_encoder.num_features, projection_dim)
        else:
            self.text_proj = nn.Identity()
            self.video_proj = nn.Identity()

    def encode_video(self, frames: Tensor, normalize: bool = False) -> Tensor:
        """(B, T, 3, H, W) normalised frames, T <= num_frames -> (B, projection_dim)."""
        embeds = self.video_proj(self.video_encoder(frames))
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None, normalize: bool = False) -> Tensor:
        """(B, L) token ids and mask -> (B, projection_dim). FiT applies a ReLU before the text projection."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pooled_text = self.text_encoder(input_ids, mask)
        embeds = self.text_proj(F.relu(pooled_text)) if self.projection == "minimal" else pooled_text
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def forward(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(text_embeds, video_embeds), unnormalised (the loss takes their cosine similarity)."""
        return self.encode_text(input_ids, attention_mask), self.encode_video(frames)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.video_encoder.set_grad_checkpointing(enable)


def build_frozen_in_time(cfg: DictConfig, init_weights: bool = True) -> FrozenInTime:
    """Build from a typed FiT config; `init_weights` loads `init.vit_weights` (skipped when a checkpoint follows)."""
    video_encoder = SpaceTimeTransformer(**OmegaConf.to_container(cfg.video))  # type: ignore[arg-type]
    if init_weights and cfg.init.vit_weights:
        logger.info("%s", load_image_vit_weights(video_encoder, cfg.init.vit_weights).format())
    text_encoder = HFTextTower(**OmegaConf.to_container(cfg.text))  # type: ignore[arg-type]
    return FrozenInTime(video_encoder, text_encoder, cfg.projection_dim, cfg.projection)


# ---------------------------------------------------------------------------------------------------------
# Curriculum: temporal embedding inflation


def inflate_temporal_embed(temporal_embed: Tensor, num_frames: int, mode: str) -> Tensor:
    """(1, F_ckpt, D) -> (1, num_frames, D): truncate when longer, else fill per `mode` (official semantics)."""
    if mode not in TEMPORAL_INFLATIONS:
        raise ConfigError(f"init.temporal_inflation must be one of {TEMPORAL_INFLATIONS}, got {mode!r}")
    ckpt_frames = temporal_embed.shape[1]
    if ckpt_frames >= num_frames:
        return temporal_embed[:, :num_frames]
    if mode == "zeros":
        inflated = temporal_embed.new_zeros(temporal_embed.shape[0], num_frames, temporal_embed.shape[2])
        inflated[:, :ckpt_frames] = temporal_embed
        return inflated
    # The (F, D) table is treated as a one-channel image and resized along F only.
    size = (num_frames, temporal_embed.shape[2])
    return F.interpolate(temporal_embed[None], size=size, mode="nearest" if mode == "interp" else "bilinear")[0]


def adapt_fit_state_dict(cfg: DictConfig, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Fit a vidlab-named FiT state dict to `cfg`: temporal inflation / truncation; other shapes untouched."""
    notes = []
    key = "video_encoder.temporal_embed"
    if key in tensors and tensors[key].dim() == 3 and tensors[key].shape[1] != cfg.video.num_frames:
        old = tensors[key]
        tensors = dict(tensors)
        tensors[key] = inflate_temporal_embed(old, cfg.video.num_frames, cfg.init.temporal_inflation)
        how = "truncated" if old.shape[1] > cfg.video.num_frames else f"inflated ({cfg.init.temporal_inflation})"
        notes.append(f"{key} {tuple(old.shape)} -> {tuple(tensors[key].shape)}, {how}")
    pos_key = "video_encoder.spatial_pos_embed"
    num_tokens = 1 + (cfg.video.img_size // cfg.video.patch_size) ** 2
    if pos_key in tensors and tensors[pos_key].dim() == 3 and tensors[pos_key].shape[1] != num_tokens:
        raise CheckpointError(
            pos_key,
            f"checkpoint has {tensors[pos_key].shape[1]} spatial positions, the model {num_tokens}: "
            "loading a different resolution / patch count is not supported (as in the official code)",
        )
    return tensors, notes


# ---------------------------------------------------------------------------------------------------------
# The official checkpoint format

_VB = r"video_model\.blocks\.(\d+)\."
_P = r"(weight|bias)"
# The spatial part of FiT's video model is a timm ViT under `video_model.`; the rest is FiT's own.
OFFICIAL_FIT_KEY_MAP = KeyMap(
    rules=TIMM_VIT_TO_SPACE_TIME.nested("video_model.", "video_encoder.")
    + (
        (r"video_model\.temporal_embed", "video_encoder.temporal_embed"),
        (rf"{_VB}norm3\.{_P}", r"video_encoder.blocks.\1.time_norm.\2"),
        (rf"{_VB}timeattn\.(qkv|proj)\.{_P}", r"video_encoder.blocks.\1.time_attn.\2.\3"),
        (r"text_model\.(.+)", r"text_encoder.backbone.\1"),
        (rf"txt_proj\.1\.{_P}", r"text_proj.\1"),
        (rf"vid_proj\.0\.{_P}", r"video_proj.\1"),
    ),
    # Buffers transformers <= 4.x saved persistently; today they are rebuilt, not loaded.
    ignore=(r"text_model\.embeddings\.(position_ids|token_type_ids)",),
)
_OFFICIAL_VIT_KWARGS = (
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "qk_scale",
    "drop_rate",
    "drop_path_rate",
)


def fit_config_from_official(
    kwargs: Mapping[str, Any],
    vit_kwargs: Mapping[str, Any] | None = None,
    text_config: Mapping[str, Any] | None = None,
    text_attn_implementation: str | None = None,
) -> DictConfig:
    """Translate the official `FrozenInTime(video_params, text_params, projection_dim, projection,
    load_temporal_fix, ...)` arguments into a vidlab config.

    The official class hard-codes ViT-B/16 (`arch_config='base_patch16_224'`) and downloads the hub text
    model named in `text_params['model']`; `vit_kwargs` (SpaceTimeTransformer constructor arguments) and
    `text_config` (transformers config arguments) replace those for other sizes.
    `load_checkpoint` is not translated: pass the checkpoint to `create_model`.
    """
    video_params = dict(kwargs.get("video_params") or {})
    text_params = dict(kwargs.get("text_params") or {})
    if video_params.get("model", "SpaceTimeTransformer") != "SpaceTimeTransformer":
        raise ConfigError(
            f"official video model {video_params['model']!r} is not supported (SpaceTimeTransformer only)"
        )
    if video_params.get("arch_config", "base_patch16_224") != "base_patch16_224":
        raise ConfigError(f"official arch_config {video_params['arch_config']!r} is not supported")
    if video_params.get("attention_style", "frozen-in-time") != "frozen-in-time":
        raise ConfigError(f"official attention_style {video_params['attention_style']!r} is not supported")
    if video_params.get("pretrained"):
        logger.warning("official video_params.pretrained (ImageNet ViT download): set init.vit_weights to a local file")
    video: dict[str, Any] = dict(
        num_frames=video_params.get("num_frames", 4), time_init=video_params.get("time_init", "zeros")
    )
    for name, value in (vit_kwargs or {}).items():
        if name not in _OFFICIAL_VIT_KWARGS:
            raise ConfigError(
                f"unknown SpaceTimeTransformer argument {name!r} (known: {', '.join(_OFFICIAL_VIT_KWARGS)})"
            )
        video[name] = value

    text_model = str(text_params.get("model", "distilbert-base-uncased"))
    if text_model.startswith("bert"):
        arch, pooling = "bert", "pooler"
    elif text_model.startswith("distilbert"):
        arch, pooling = "distilbert", "cls"
    else:
        raise ConfigError(f"official text model {text_model!r}: FiT only defines pooling for bert* / distilbert*")
    if text_config is None:
        if text_model not in HUB_TEXT_CONFIGS:
            raise ConfigError(f"no built-in architecture for {text_model!r}: pass its transformers config")
        text_config = HUB_TEXT_CONFIGS[text_model]
    text: dict[str, Any] = dict(arch=arch, pooling=pooling, hf_config=dict(text_config))
    if text_attn_implementation:
        text["attn_implementation"] = text_attn_implementation

    projection = kwargs.get("projection", "minimal")
    return typed_model_config(
        dict(
            family=FAMILY,
            video=video,
            text=text,
            projection={"minimal": "minimal", "": "none"}.get(projection, projection),
            projection_dim=kwargs.get("projection_dim", 256),
            init=dict(temporal_inflation=kwargs.get("load_temporal_fix", "zeros")),
        )
    )


def official_arch_args(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """`config['arch']['args']` of the pickled official ConfigParser, when the checkpoint holds one."""
    config = checkpoint.get("config")
    if isinstance(config, ForeignObject):
        config = find_foreign(config, "parse_config.ConfigParser")
        state = config.state if config is not None else None
        config = state.get("_config") if isinstance(state, Mapping) else None
    arch = config.get("arch") if isinstance(config, Mapping) else None
    if not isinstance(arch, Mapping) or arch.get("type") != "FrozenInTime":
        return None
    return dict(arch.get("args") or {})


def _block_count(tensors: Mapping[str, Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for k in tensors if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def infer_fit_config_from_state_dict(cfg: DictConfig, tensors: Mapping[str, Tensor]) -> DictConfig:
    """Correct `cfg`'s sizes to those of a vidlab-named FiT state dict.

    Widths, depths, patch size, resolution, frame count and projection follow the tensors. Head counts
    cannot be read from shapes: they are kept when the width is unchanged, else set to width // 64 (the
    ViT/BERT convention) with a warning; pass a config to be exact.
    """
    cfg = copy.deepcopy(cfg)
    v = "video_encoder."
    if v + "patch_embed.weight" in tensors:
        embed_dim, in_chans, patch_size, _ = tensors[v + "patch_embed.weight"].shape
        num_patches = tensors[v + "spatial_pos_embed"].shape[1] - 1
        if embed_dim != cfg.video.embed_dim:
            cfg.video.num_heads = max(1, embed_dim // 64)
            logger.warning("video width %d differs from the config: assuming %d heads", embed_dim, cfg.video.num_heads)
        cfg.video.embed_dim, cfg.video.in_chans, cfg.video.patch_size = int(embed_dim), int(in_chans), int(patch_size)
        cfg.video.img_size = round(num_patches**0.5) * int(patch_size)
        cfg.video.num_frames = int(tensors[v + "temporal_embed"].shape[1])
        cfg.video.depth = _block_count(tensors, r"video_encoder\.blocks\.(\d+)\.")
        cfg.video.mlp_ratio = tensors[v + "blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
        cfg.video.qkv_bias = v + "blocks.0.space_attn.qkv.bias" in tensors
    if "video_proj.weight" in tensors:
        cfg.projection, cfg.projection_dim = "minimal", int(tensors["video_proj.weight"].shape[0])
    elif "text_proj.weight" not in tensors:
        cfg.projection = "none"

    t = "text_encoder.backbone."
    if t + "transformer.layer.0.ffn.lin1.weight" in tensors:
        arch, names = "distilbert", dict(width="dim", layers="n_layers", heads="n_heads", ffn="hidden_dim")
        layers = _block_count(tensors, r"text_encoder\.backbone\.transformer\.layer\.(\d+)\.")
        ffn = tensors[t + "transformer.layer.0.ffn.lin1.weight"].shape[0]
    elif t + "encoder.layer.0.intermediate.dense.weight" in tensors:
        arch, names = (
            "bert",
            dict(width="hidden_size", layers="num_hidden_layers", heads="num_attention_heads", ffn="intermediate_size"),
        )
        layers = _block_count(tensors, r"text_encoder\.backbone\.encoder\.layer\.(\d+)\.")
        ffn = tensors[t + "encoder.layer.0.intermediate.dense.weight"].shape[0]
    else:
        return cfg
    if arch != cfg.text.arch:
        base = "bert-base-uncased" if arch == "bert" else "distilbert-base-uncased"
        cfg.text.arch, cfg.text.pooling = arch, "pooler" if arch == "bert" else "cls"
        cfg.text.hf_config = dict(HUB_TEXT_CONFIGS[base])
    vocab_size, width = tensors[t + "embeddings.word_embeddings.weight"].shape
    hf = cfg.text.hf_config
    if width != hf.get(names["width"]):
        hf[names["heads"]] = max(1, width // 64)
        logger.warning("text width %d differs from the config: assuming %d heads", width, hf[names["heads"]])
    hf[names["width"]], hf[names["layers"]], hf[names["ffn"]] = int(width), layers, int(ffn)
    hf["vocab_size"] = int(vocab_size)
    hf["max_position_embeddings"] = int(tensors[t + "embeddings.position_embeddings.weight"].shape[0])
    if arch == "bert" and t + "embeddings.token_type_embeddings.weight" in tensors:
        hf["type_vocab_size"] = int(tensors[t + "embeddings.token_type_embeddings.weight"].shape[0])
    return cfg


def is_official_fit_checkpoint(obj: Any) -> bool:
    """A FiT trainer checkpoint ({'state_dict': ..., 'config': ...}) or its bare state dict."""
    state_dict = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    return isinstance(state_dict, Mapping) and any(
        isinstance(k, str) and k.removeprefix("module.").startswith("video_model.") for k in state_dict
    )


def convert_official_fit_checkpoint(
    obj: Mapping[str, Any], cfg: DictConfig | None
) -> tuple[DictConfig, MappedStateDict]:
    """Official FiT checkpoint -> (config, vidlab-named weights).

    The config is `cfg` when given; otherwise the pickled official config's `arch.args` translated by
    `fit_config_from_official` (ViT-B/16 + DistilBERT defaults without one), corrected to the tensor shapes.
    """
    state_dict = obj.get("state_dict", obj)
    mapped = OFFICIAL_FIT_KEY_MAP.apply(strip_prefix(state_dict, "module."))
    if cfg is None:
        arch_args = official_arch_args(obj)
        if arch_args is None:
            logger.warning("checkpoint holds no official arch config: architecture from the tensor shapes")
        cfg = infer_fit_config_from_state_dict(fit_config_from_official(arch_args or {}), mapped.tensors)
    return cfg, mapped


register_family(
    ModelFamily(
        name=FAMILY,
        config_class=FrozenInTimeConfig,
        build=build_frozen_in_time,
        adapt_state_dict=adapt_fit_state_dict,
        size_keys=(
            *(f"video.{key}" for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")),
            *("video.qkv_bias", "video.layer_norm_eps", "text.arch", "text.pooling", "text.hf_config"),
            *("projection", "projection_dim"),
        ),
    )
)
register_checkpoint_format("frozen-in-time (official)", is_official_fit_checkpoint, convert_official_fit_checkpoint)

__all__ = [
    "FrozenInTime",
    "FrozenInTimeConfig",
    "FitInitConfig",
    "build_frozen_in_time",
    "inflate_temporal_embed",
    "adapt_fit_state_dict",
    "OFFICIAL_FIT_KEY_MAP",
    "fit_config_from_official",
    "official_arch_args",
    "infer_fit_config_from_state_dict",
    "convert_official_fit_checkpoint",
    "is_official_fit_checkpoint",
]
