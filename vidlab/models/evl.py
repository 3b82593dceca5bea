"""EVL (Lin et al., 2022, "Frozen CLIP Models are Efficient Video Learners"): a frozen CLIP image backbone and a
light temporal decoder, exactly as the official `EVLTransformer` computes it.

- The backbone is vidlab's `CLIPVisionTower` without `ln_post`/`proj`, with a patch-embedding bias (EVL's
  Linear patch embedding; zero when the weights come from a CLIP file). Frames run through it
  independently; the decoder reads the last `decoder.num_layers` blocks: each block's residual-stream
  output and its attention q/k.
- Decoder layer i, on block features F_i (B, T, L, C): F_i + depthwise temporal Conv1d (k=3, every token,
  CLS included) + temporal positional embedding (zero-initialised, one per frame) + temporal cross
  attention (frame t's queries against frames t-1 / t+1's keys, head-averaged softmax weights mixing a
  learned relative-position table; patch tokens only). Then one pre-LN decoder layer: the learned query
  token (shared by all layers, zero-initialised as in the official code) cross-attends to all T*L tokens,
  then an MLP (QuickGELU, dropout on the hidden units).
- Head: LayerNorm -> dropout -> Linear on the query token.
- `decoder.temporal_conv` / `temporal_pos_embed` / `temporal_cross_attention` switch each temporal module
  off (the official `--no_temporal_*` ablation flags); a switched-off module does not exist in the model.

The frozen backbone (`backbone.freeze`, default) is kept out of training and out of checkpoints, as the
official code does by hiding it in a Python list: here it stays a registered submodule (so `.to()` moves
it) but has `requires_grad=False`, stays in eval mode under `model.train()`, is left out of
`param_groups()` and of `state_dict()`, and `load_state_dict` does not expect it. Its weights always come
from `backbone.weights` (an OpenAI CLIP file in any format `vidlab.models.clip_weights` reads). It runs in
`backbone.dtype`: `auto` = float16 on CUDA (the official `freeze_fp16`) and float32 on CPU; LayerNorms
stay float32 and the features are cast to float32 for the decoder. `backbone.freeze=false` fine-tunes it
in float32 and puts it in `state_dict()` and the param groups.

Input: (B, T, 3, H, W) normalised frames (vidlab's layout; the official model takes (B, 3, T, H, W)) with
exactly `num_frames` frames at the backbone's resolution.

Deviations from the official code (no hard-coded CUDA device, float32 backbone on CPU, a `mirror` flag
that flips, backbone weights read without running TorchScript, strict loading) are listed with their
reasons in docs/deviations.md.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.attention import attend, merge_heads, split_heads
from vidlab.models.checkpoint import KeyMap, LoadReport, MappedStateDict, load_state_dict_strict, strip_prefix
from vidlab.models.clip import (
    BlockFeatures,
    CLIPVisionConfig,
    CLIPVisionTower,
    LayerNormFp32,
    unchanged_state_dict,
    vision_tower_kwargs,
)
from vidlab.models.clip_weights import fuse_qkv_parts, map_clip_state_dict, read_clip_state_dict, vision_tower_weights
from vidlab.models.errors import CheckpointError, ModelInputError
from vidlab.models.factory import ModelFamily, register_checkpoint_format, register_family, typed_model_config
from vidlab.models.layers import Mlp, QuickGELU, check_drop_rates

logger = logging.getLogger(__name__)

FAMILY = "evl"
BACKBONE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class EVLBackboneConfig(CLIPVisionConfig):
    """The CLIP image tower EVL reads features from (sizes as CLIP's vision config), and how it runs."""

    weights: str | None = None  # OpenAI CLIP file (ViT-B-16.pt, a state dict, open_clip or HF CLIPModel)
    freeze: bool = True
    dtype: str = "auto"  # frozen backbone: auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16


@dataclass
class EVLDecoderConfig:
    num_layers: int = 4  # reads the last num_layers backbone blocks
    qkv_dim: int = 768
    num_heads: int = 12
    mlp_factor: float = 4.0
    mlp_dropout: float = 0.5
    temporal_conv: bool = True
    temporal_pos_embed: bool = True
    temporal_cross_attention: bool = True


@dataclass
class EVLConfig:
    family: str = FAMILY
    num_frames: int = 8
    num_classes: int = 400
    cls_dropout: float = 0.5
    backbone: EVLBackboneConfig = field(default_factory=EVLBackboneConfig)
    decoder: EVLDecoderConfig = field(default_factory=EVLDecoderConfig)


def relative_offset_index(grid_size: int) -> Tensor:
    """(P, P) index of the 2-D offset between query patch q and key patch k into a ((2S-1)^2, C) table."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    row_offset = rows[:, None] - rows[None, :] + grid_size - 1
    col_offset = cols[:, None] - cols[None, :] + grid_size - 1
    return row_offset * (2 * grid_size - 1) + col_offset


class TemporalCrossAttention(nn.Module):
    """EVL's temporal cross attention between neighbouring frames, built from the backbone's own q/k.

    For frame t, A = mean over heads of softmax_k(q_t . k_{t-1} / sqrt(d)) over patch tokens (CLS removed);
    the output at query patch q is sum_k A[q, k] * prev_frame_table[offset(q, k)], plus the same with
    frame t+1 and `next_frame_table`. Frame 0 has no previous-frame term, the last frame no next-frame
    term; CLS tokens get zero. The backbone's value vectors are not used.
    """

    def __init__(self, grid_size: int, dim: int):
        super().__init__()
        num_offsets = (2 * grid_size - 1) ** 2
        self.prev_frame_table = nn.Parameter(torch.zeros(num_offsets, dim))
        self.next_frame_table = nn.Parameter(torch.zeros(num_offsets, dim))
        self.register_buffer("offset_index", relative_offset_index(grid_size), persistent=False)

    def _mix(self, query: Tensor, key: Tensor, table: Tensor) -> Tensor:
        """query/key (B, T', H, P, d) of paired frames -> (B, T', P, C)."""
        affinity = (query * query.shape[-1] ** -0.5) @ key.transpose(-1, -2)
        weights = affinity.softmax(dim=-1).mean(dim=2)
        return torch.einsum("ntqk,qkc->ntqc", weights, table[self.offset_index])

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        """query/key (B, T, H, L, d) with CLS first -> (B, T, L, C) to add to the frame features."""
        patch_query, patch_key = query[..., 1:, :], key[..., 1:, :]
        from_prev = self._mix(patch_query[:, 1:], patch_key[:, :-1], self.prev_frame_table)
        from_next = self._mix(patch_query[:, :-1], patch_key[:, 1:], self.next_frame_table)
        # Pad (B, T-1, P, C) back to T frames (dim 1), then add the zero CLS row (dim 2).
        patches = F.pad(from_prev, (0, 0, 0, 0, 1, 0)) + F.pad(from_next, (0, 0, 0, 0, 0, 1))
        return F.pad(patches, (0, 0, 1, 0))


class CrossAttention(nn.Module):
    """Multi-head attention of query tokens over memory tokens with separate q/k/v/out projections."""

    def __init__(self, dim: int, qkv_dim: int, num_heads: int):
        super().__init__()
        if qkv_dim % num_heads:
            raise ConfigError(f"decoder.qkv_dim {qkv_dim} is not divisible by decoder.num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, qkv_dim)
        self.k_proj = nn.Linear(dim, qkv_dim)
        self.v_proj = nn.Linear(dim, qkv_dim)
        self.out_proj = nn.Linear(qkv_dim, dim)

    def forward(self, queries: Tensor, memory: Tensor) -> Tensor:
        """queries (B, Lq, C), memory (B, Lm, C) -> (B, Lq, C)."""
        query = split_heads(self.q_proj(queries), self.num_heads)
        key = split_heads(self.k_proj(memory), self.num_heads)
        value = split_heads(self.v_proj(memory), self.num_heads)
        return self.out_proj(merge_heads(attend(query, key, value)))


class EVLDecoderLayer(nn.Module):
    """Pre-LN decoder layer: q + attn(query_norm(q), memory_norm(F)), then q + mlp(mlp_norm(q))."""

    def __init__(self, dim: int, qkv_dim: int, num_heads: int, mlp_factor: float, mlp_dropout: float):
        super().__init__()
        self.query_norm = LayerNormFp32(dim)
        self.memory_norm = LayerNormFp32(dim)
        self.attn = CrossAttention(dim, qkv_dim, num_heads)
        self.mlp_norm = LayerNormFp32(dim)
        self.mlp = Mlp(dim, round(mlp_factor * dim), drop=mlp_dropout, act_layer=QuickGELU, out_drop=0.0)

    def forward(self, query: Tensor, memory: Tensor) -> Tensor:
        query = query + self.attn(self.query_norm(query), self.memory_norm(memory))
        return query + self.mlp(self.mlp_norm(query))

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official init: xavier attention weights with zero biases, xavier MLP with ~0 biases."""
        for linear in (self.attn.q_proj, self.attn.k_proj, self.attn.v_proj, self.attn.out_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        for linear in (self.mlp.fc1, self.mlp.fc2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)


class EVLDecoder(nn.Module):
    """The query token, read through one decoder layer per backbone block, with the temporal modules."""

    def __init__(
        self,
        num_frames: int,
        grid_size: int,
        dim: int,
        num_layers: int = 4,
        qkv_dim: int = 768,
        num_heads: int = 12,
        mlp_factor: float = 4.0,
        mlp_dropout: float = 0.5,
        temporal_conv: bool = True,
        temporal_pos_embed: bool = True,
        temporal_cross_attention: bool = True,
    ):
        super().__init__()
        self.num_frames = num_frames
        self.num_layers = num_layers
        self.query_token = nn.Parameter(torch.zeros(dim))
        self.layers = nn.ModuleList(
            EVLDecoderLayer(dim, qkv_dim, num_heads, mlp_factor, mlp_dropout) for _ in range(num_layers)
        )
        self.temporal_conv = (
            nn.ModuleList(nn.Conv1d(dim, dim, kernel_size=3, padding=1, groups=dim) for _ in range(num_layers))
            if temporal_conv
            else None
        )
        self.temporal_pos_embed = (
            nn.ParameterList(nn.Parameter(torch.zeros(num_frames, dim)) for _ in range(num_layers))
            if temporal_pos_embed
            else None
        )
        self.cross_attention = (
            nn.ModuleList(TemporalCrossAttention(grid_size, dim) for _ in range(num_layers))
            if temporal_cross_attention
            else None
        )
        for layer in self.layers:
            layer.init_weights()

    def frame_features(self, index: int, features: BlockFeatures) -> Tensor:
        """Block features (B, T, L, C) with layer `index`'s temporal modules added."""
        tokens = features.tokens
        batch, num_frames, length, dim = tokens.shape
        out = tokens
        if self.temporal_conv is not None:
            along_time = tokens.permute(0, 2, 3, 1).reshape(batch * length, dim, num_frames)
            mixed = self.temporal_conv[index](along_time).view(batch, length, dim, num_frames)
            out = out + mixed.permute(0, 3, 1, 2)
        if self.temporal_pos_embed is not None:
            out = out + self.temporal_pos_embed[index][None, :, None, :]
        if self.cross_attention is not None:
            out = out + self.cross_attention[index](features.query, features.key)
        return out

    def forward(self, features: Sequence[BlockFeatures]) -> Tensor:
        """Per-block features, tokens (B, T, L, C) and q/k (B, T, H, L, d), float32 -> query token (B, C)."""
        if len(features) != self.num_layers:
            raise ModelInputError(f"the decoder reads {self.num_layers} blocks, got {len(features)}")
        batch = features[0].tokens.shape[0]
        query = self.query_token.view(1, 1, -1).expand(batch, 1, -1)
        for index, (layer, block) in enumerate(zip(self.layers, features)):
            query = layer(query, self.frame_features(index, block).flatten(1, 2))
        return query[:, 0]


class ClassifierHead(nn.Module):
    """LayerNorm -> dropout -> Linear (EVL's `proj`)."""

    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.norm = LayerNormFp32(dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(self.norm(features)))


def _backbone_state_prefix(prefix: str) -> str:
    return f"{prefix}backbone."


def _drop_frozen_backbone(module: EVL, state_dict: dict[str, Tensor], prefix: str, local_metadata: Any) -> None:
    """state_dict hook: a frozen backbone is not part of the model's state (official: unregistered)."""
    if module.freeze_backbone:
        for key in [k for k in state_dict if k.startswith(_backbone_state_prefix(prefix))]:
            del state_dict[key]


def _keep_frozen_backbone(module: EVL, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: a frozen backbone absent from the dict keeps its weights (no 'missing' keys)."""
    if module.freeze_backbone:
        for name, tensor in module.backbone.state_dict().items():
            state_dict.setdefault(_backbone_state_prefix(prefix) + name, tensor)


class EVL(nn.Module):
    """Video classifier: `forward(video (B, T, 3, H, W)) -> logits (B, num_classes)`."""

    def __init__(
        self,
        backbone: CLIPVisionTower,
        decoder: EVLDecoder,
        num_classes: int,
        cls_dropout: float = 0.5,
        freeze_backbone: bool = True,
        backbone_dtype: str = "auto",
    ):
        super().__init__()
        if backbone_dtype != "auto" and backbone_dtype not in BACKBONE_DTYPES:
            raise ConfigError(
                f"backbone.dtype must be auto or one of {sorted(BACKBONE_DTYPES)}, got {backbone_dtype!r}"
            )
        if not freeze_backbone and backbone_dtype not in ("auto", "float32"):
            raise ConfigError("a fine-tuned backbone (backbone.freeze=false) runs in float32: use autocast for AMP")
        self.backbone = backbone
        self.decoder = decoder
        self.head = ClassifierHead(backbone.width, num_classes, cls_dropout)
        self.freeze_backbone = freeze_backbone
        self.backbone_dtype = backbone_dtype
        if freeze_backbone:
            backbone.requires_grad_(False)
            backbone.eval()
        self.register_state_dict_post_hook(_drop_frozen_backbone)
        self.register_load_state_dict_pre_hook(_keep_frozen_backbone)

    def train(self, mode: bool = True) -> EVL:
        """Train mode for the decoder and head; a frozen backbone stays in eval mode."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def backbone_compute_dtype(self, device: torch.device) -> torch.dtype:
        if not self.freeze_backbone:
            return torch.float32
        if self.backbone_dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return BACKBONE_DTYPES[self.backbone_dtype]

    @torch.no_grad()
    def _cast_backbone(self, dtype: torch.dtype) -> None:
        """Cast the frozen backbone's weights to `dtype`, LayerNorms excepted (official `model_to_fp16`)."""
        if self.backbone.patch_embed.weight.dtype == dtype:
            return
        for module in self.backbone.modules():
            if isinstance(module, LayerNormFp32):
                continue
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)

    def backbone_features(self, video: Tensor) -> list[BlockFeatures]:
        """The last `decoder.num_layers` blocks' features, float32, tokens (B, T, L, C) and q/k (B, T, H, L, d)."""
        if video.dim() != 5:
            raise ModelInputError(f"video must be (B, T, 3, H, W), got shape {tuple(video.shape)}")
        batch, num_frames = video.shape[:2]
        if num_frames != self.decoder.num_frames:
            raise ModelInputError(
                f"{num_frames} frames given, the model's temporal modules are built for {self.decoder.num_frames}"
            )
        dtype = self.backbone_compute_dtype(video.device)
        if self.freeze_backbone:
            self._cast_backbone(dtype)
        with torch.no_grad() if self.freeze_backbone else nullcontext():
            blocks = self.backbone.block_features(video.flatten(0, 1), last=self.decoder.num_layers)
        return [
            BlockFeatures(
                *(t.float().reshape(batch, num_frames, *t.shape[1:]) for t in (block.tokens, block.query, block.key))
            )
            for block in blocks
        ]

    def forward_features(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> the decoder's query token (B, C), before the head."""
        return self.decoder(self.backbone_features(video))

    def forward_head(self, features: Tensor) -> Tensor:
        """(B, C) query features -> (B, num_classes) logits."""
        return self.head(features)

    def forward(self, video: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(video))

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: decoder + head, and the backbone only when it is fine-tuned."""
        groups = [{"name": "decoder", "params": [*self.decoder.parameters(), *self.head.parameters()]}]
        if not self.freeze_backbone:
            groups.append({"name": "backbone", "params": list(self.backbone.parameters())})
        return groups

    def load_backbone_weights(self, source: str | Path | Mapping[str, Any]) -> LoadReport:
        """Load CLIP image-tower weights (file or in-memory state dict, any CLIP format) strictly."""
        state_dict, name = read_clip_state_dict(source)
        mapped = vision_tower_weights(map_clip_state_dict(state_dict, name), with_head=False)
        notes = []
        bias = self.backbone.patch_embed.bias
        if bias is not None and "patch_embed.bias" not in mapped.tensors:
            mapped.tensors["patch_embed.bias"] = torch.zeros(bias.shape)
            notes.append("patch_embed.bias set to zeros (CLIP's patch convolution has no bias)")
        return load_state_dict_strict(self.backbone, mapped, name, adapted=notes)


def build_evl(cfg: DictConfig, init_weights: bool = True) -> EVL:
    """Build from a typed EVL config. A frozen backbone always loads `backbone.weights` (checkpoints never
    hold it); a fine-tuned one only when no checkpoint follows (`init_weights`)."""
    backbone_cfg = cfg.backbone
    backbone = CLIPVisionTower(**vision_tower_kwargs(backbone_cfg), embed_dim=None, patch_bias=True)
    if not 1 <= cfg.decoder.num_layers <= backbone_cfg.layers:
        raise ConfigError(f"decoder.num_layers must be in [1, {backbone_cfg.layers}], got {cfg.decoder.num_layers}")
    if cfg.decoder.qkv_dim < 1:
        raise ConfigError(f"decoder.qkv_dim must be >= 1, got {cfg.decoder.qkv_dim}")
    check_drop_rates({"decoder.mlp_dropout": cfg.decoder.mlp_dropout, "cls_dropout": cfg.cls_dropout})
    decoder = EVLDecoder(
        num_frames=cfg.num_frames,
        grid_size=backbone.grid_size,
        dim=backbone_cfg.width,
        num_layers=cfg.decoder.num_layers,
        qkv_dim=cfg.decoder.qkv_dim,
        num_heads=cfg.decoder.num_heads,
        mlp_factor=cfg.decoder.mlp_factor,
        mlp_dropout=cfg.decoder.mlp_dropout,
        temporal_conv=cfg.decoder.temporal_conv,
        temporal_pos_embed=cfg.decoder.temporal_pos_embed,
        temporal_cross_attention=cfg.decoder.temporal_cross_attention,
    )
    model = EVL(backbone, decoder, cfg.num_classes, cfg.cls_dropout, backbone_cfg.freeze, backbone_cfg.dtype)
    if backbone_cfg.weights and (backbone_cfg.freeze or init_weights):
        logger.info("%s", model.load_backbone_weights(backbone_cfg.weights).format())
    elif backbone_cfg.freeze:
        logger.warning("EVL backbone is frozen with random weights: set backbone.weights to a CLIP file")
    return model


# ---------------------------------------------------------------------------------------------------------
# The official checkpoint format (checkpoint-N.pth of the EVL trainer)

_P = r"(weight|bias)"
_DL = r"decoder\.decoder_layers\.(\d+)\."
_BB = r"backbone\.blocks\.(\d+)\."
OFFICIAL_EVL_KEY_MAP = KeyMap(
    rules=(
        (r"decoder\.cls_token", "decoder.query_token"),
        (rf"{_DL}attn\.(q|k|v|out)_proj\.{_P}", r"decoder.layers.\1.attn.\2_proj.\3"),
        (rf"{_DL}mlp\.(fc1|fc2)\.{_P}", r"decoder.layers.\1.mlp.\2.\3"),
        (rf"{_DL}norm1\.{_P}", r"decoder.layers.\1.query_norm.\2"),
        (rf"{_DL}norm2\.{_P}", r"decoder.layers.\1.mlp_norm.\2"),
        (rf"{_DL}norm3\.{_P}", r"decoder.layers.\1.memory_norm.\2"),
        (rf"decoder\.temporal_conv\.(\d+)\.{_P}", r"decoder.temporal_conv.\1.\2"),
        (r"decoder\.temporal_pos_embed\.(\d+)", r"decoder.temporal_pos_embed.\1"),
        (r"decoder\.cross_attention\.(\d+)\.w1", r"decoder.cross_attention.\1.prev_frame_table"),
        (r"decoder\.cross_attention\.(\d+)\.w2", r"decoder.cross_attention.\1.next_frame_table"),
        (rf"proj\.0\.{_P}", r"head.norm.\1"),
        (rf"proj\.2\.{_P}", r"head.fc.\1"),
        # --finetune_backbone checkpoints: the backbone in EVL's VisionTransformer2D names.
        (r"backbone\.(cls_token|pos_embed)", r"backbone.\1"),
        (rf"backbone\.patch_embed\.proj\.{_P}", r"backbone.patch_embed.\1"),
        (rf"backbone\.ln_pre\.{_P}", r"backbone.ln_pre.\1"),
        (rf"{_BB}attn\.(q|k|v)_proj\.{_P}", r"backbone.blocks.\1.attn.qkv.\3:\2"),
        (rf"{_BB}attn\.out_proj\.{_P}", r"backbone.blocks.\1.attn.proj.\2"),
        (rf"{_BB}mlp\.(fc1|fc2)\.{_P}", r"backbone.blocks.\1.mlp.\2.\3"),
        (rf"{_BB}norm(1|2)\.{_P}", r"backbone.blocks.\1.norm\2.\3"),
    )
)
# EVL's vision_transformer presets, in its own argument names.
_PRESET_224 = dict(input_size=(224, 224), mlp_factor=4.0, ln_pre=True)
OFFICIAL_VIT_PRESETS: dict[str, dict[str, Any]] = {
    "ViT-B/16-lnpre": dict(feature_dim=768, patch_size=(16, 16), num_heads=12, num_layers=12, **_PRESET_224),
    "ViT-L/14-lnpre": dict(feature_dim=1024, patch_size=(14, 14), num_heads=16, num_layers=24, **_PRESET_224),
}
_BACKBONE_MODES = {"freeze_fp16": (True, "float16"), "freeze_fp32": (True, "float32"), "finetune": (False, "float32")}


def _official_model_state(obj: Any) -> Mapping[str, Any] | None:
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    return state if isinstance(state, Mapping) else None


def is_official_evl_checkpoint(obj: Any) -> bool:
    """An EVL trainer checkpoint ({'model': ..., 'optimizer': ...}) or its bare model state dict."""
    state = _official_model_state(obj)
    return state is not None and any(
        isinstance(k, str) and k.removeprefix("module.") in ("decoder.cls_token", "proj.0.weight") for k in state
    )


def _backbone_from_preset(preset: Mapping[str, Any]) -> dict[str, Any]:
    if not preset.get("ln_pre", False):
        raise ConfigError("EVL presets without ln_pre are not CLIP towers: vidlab's backbone always has ln_pre")
    (height, width), (patch_h, patch_w) = preset["input_size"], preset["patch_size"]
    if height != width or patch_h != patch_w:
        raise ConfigError(f"EVL preset {dict(preset)}: vidlab's CLIP backbone takes square images and patches")
    return dict(
        image_size=height,
        patch_size=patch_h,
        width=preset["feature_dim"],
        layers=preset["num_layers"],
        heads=preset["num_heads"],
        mlp_ratio=preset["mlp_factor"],
    )


def evl_config_from_official(
    kwargs: Mapping[str, Any], vit_presets: Mapping[str, Mapping[str, Any]] | None = None
) -> DictConfig:
    """The official `EVLTransformer(**kwargs)` arguments -> a vidlab EVL config.

    `backbone_name` names one of EVL's `vit_presets` (`OFFICIAL_VIT_PRESETS`, plus `vit_presets`);
    `backbone_mode` (freeze_fp16 / freeze_fp32 / finetune) sets `backbone.freeze` and `backbone.dtype`;
    `backbone_path` becomes `backbone.weights`.
    """
    presets = {**OFFICIAL_VIT_PRESETS, **(vit_presets or {})}
    name = kwargs.get("backbone_name", "ViT-B/16-lnpre")
    if name not in presets:
        raise ConfigError(f"unknown EVL backbone preset {name!r} (known: {', '.join(presets)})")
    if kwargs.get("backbone_type", "clip") != "clip":
        raise ConfigError(f"EVL backbone_type {kwargs['backbone_type']!r}: only 'clip' exists")
    mode = kwargs.get("backbone_mode", "freeze_fp16")
    if mode not in _BACKBONE_MODES:
        raise ConfigError(f"EVL backbone_mode must be one of {sorted(_BACKBONE_MODES)}, got {mode!r}")
    freeze, dtype = _BACKBONE_MODES[mode]
    return typed_model_config(
        dict(
            family=FAMILY,
            num_frames=kwargs.get("num_frames", 8),
            num_classes=kwargs.get("num_classes", 400),
            cls_dropout=kwargs.get("cls_dropout", 0.5),
            backbone=dict(
                **_backbone_from_preset(presets[name]),
                weights=kwargs.get("backbone_path") or None,
                freeze=freeze,
                dtype=dtype,
            ),
            decoder=dict(
                num_layers=kwargs.get("decoder_num_layers", 4),
                qkv_dim=kwargs.get("decoder_qkv_dim", 768),
                num_heads=kwargs.get("decoder_num_heads", 12),
                mlp_factor=kwargs.get("decoder_mlp_factor", 4.0),
                mlp_dropout=kwargs.get("decoder_mlp_dropout", 0.5),
                temporal_conv=kwargs.get("enable_temporal_conv", True),
                temporal_pos_embed=kwargs.get("enable_temporal_pos_embed", True),
                temporal_cross_attention=kwargs.get("enable_temporal_cross_attention", True),
            ),
        )
    )


def _count(tensors: Mapping[str, Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for key in tensors if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def infer_evl_config(tensors: Mapping[str, Tensor]) -> DictConfig:
    """An EVL config from a vidlab-named decoder state dict: decoder sizes, switches, frames and classes from
    the shapes; the backbone is the official preset of that width (768: ViT-B/16, 1024: ViT-L/14)."""
    required = ("decoder.query_token", "decoder.layers.0.attn.q_proj.weight", "decoder.layers.0.mlp.fc1.weight")
    missing = [key for key in (*required, "head.fc.weight") if key not in tensors]
    if missing:
        raise CheckpointError("EVL checkpoint", f"cannot infer the architecture: no {', '.join(missing)}")
    dim = int(tensors["decoder.query_token"].shape[0])
    preset = next((p for p in OFFICIAL_VIT_PRESETS.values() if p["feature_dim"] == dim), None)
    if preset is None:
        raise CheckpointError(
            "EVL checkpoint", f"decoder width {dim} matches no official backbone preset: pass the model config"
        )
    backbone = _backbone_from_preset(preset)
    tables = [k for k in tensors if k.endswith("prev_frame_table")]
    grid_size = backbone["image_size"] // backbone["patch_size"]
    if tables and tensors[tables[0]].shape[0] != (2 * grid_size - 1) ** 2:
        raise CheckpointError("EVL checkpoint", "relative-position tables do not fit the preset's patch grid")
    pos_embeds = [k for k in tensors if k.startswith("decoder.temporal_pos_embed.")]
    qkv_dim = int(tensors["decoder.layers.0.attn.q_proj.weight"].shape[0])
    num_frames = int(tensors[pos_embeds[0]].shape[0]) if pos_embeds else EVLConfig.num_frames
    if not pos_embeds:
        logger.warning("checkpoint has no temporal positional embedding: assuming %d frames", num_frames)
    return typed_model_config(
        dict(
            family=FAMILY,
            num_frames=num_frames,
            num_classes=int(tensors["head.fc.weight"].shape[0]),
            backbone=dict(**backbone, freeze=not any(k.startswith("backbone.") for k in tensors)),
            decoder=dict(
                num_layers=_count(tensors, r"decoder\.layers\.(\d+)\."),
                qkv_dim=qkv_dim,
                num_heads=max(1, qkv_dim // 64),
                mlp_factor=tensors["decoder.layers.0.mlp.fc1.weight"].shape[0] / dim,
                temporal_conv=any(k.startswith("decoder.temporal_conv.") for k in tensors),
                temporal_pos_embed=bool(pos_embeds),
                temporal_cross_attention=bool(tables),
            ),
        )
    )


def convert_official_evl_checkpoint(obj: Any, cfg: DictConfig | None) -> tuple[DictConfig, MappedStateDict]:
    """Official EVL checkpoint -> (config, vidlab-named weights); `cfg`, else inferred from the shapes.

    Only the model entry is read; optimizer, scheduler and loss-scaler states are training state.
    """
    state = strip_prefix(_official_model_state(obj) or {}, "module.")
    mapped = OFFICIAL_EVL_KEY_MAP.apply(state)
    patch = mapped.tensors.get("backbone.patch_embed.weight")
    if patch is not None and patch.dim() == 2:  # EVL's Linear over (C, ph, pw)-ordered patch pixels
        patch_size = round(math.sqrt(patch.shape[1] / 3))
        mapped.tensors["backbone.patch_embed.weight"] = patch.reshape(patch.shape[0], 3, patch_size, patch_size)
    fuse_qkv_parts(mapped)
    if cfg is None:
        cfg = infer_evl_config(mapped.tensors)
    return cfg, mapped


register_family(
    ModelFamily(name=FAMILY, config_class=EVLConfig, build=build_evl, adapt_state_dict=unchanged_state_dict)
)
register_checkpoint_format(
    "evl (official checkpoint-N.pth)", is_official_evl_checkpoint, convert_official_evl_checkpoint
)

__all__ = [
    "EVL",
    "EVLConfig",
    "EVLBackboneConfig",
    "EVLDecoderConfig",
    "EVLDecoder",
    "EVLDecoderLayer",
    "TemporalCrossAttention",
    "CrossAttention",
    "ClassifierHead",
    "relative_offset_index",
    "build_evl",
    "OFFICIAL_EVL_KEY_MAP",
    "OFFICIAL_VIT_PRESETS",
    "evl_config_from_official",
    "infer_evl_config",
    "is_official_evl_checkpoint",
    "convert_official_evl_checkpoint",
]
