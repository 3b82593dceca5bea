"""Frozen in Time's SpaceTimeTransformer: a ViT with divided space-time attention over (B, T, 3, H, W) frames.

Semantics follow the official model exactly, so that its checkpoints load and reproduce its outputs:

- tokens are frame-major `[cls, f0p0 .. f0p(N-1), f1p0, ...]`; the CLS token gets `spatial_pos_embed[0]`
  only, patch tokens get the spatial embedding of their position plus the temporal embedding of their
  frame. Clips may have fewer frames than the temporal table (images are 1-frame clips): the first T
  temporal embeddings are used.
- each block runs time attention FIRST, and its output only feeds the space attention input; it is not
  on the residual path: `x = x + space_attn(space_norm(x + time_attn(time_norm(x))))`, then the MLP.
- in both attentions the CLS token attends to every token; patch tokens attend to their group (same
  frame for space, same patch position for time) plus the CLS token.
- `time_init='zeros'` starts the time attention as an exact no-op (qkv = 0, proj weight = 1, proj bias = 0),
  so a model initialised from image ViT weights starts as that ViT applied per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidlab.errors import ConfigError
from vidlab.models.attention import MultiHeadSelfAttention
from vidlab.models.errors import ModelInputError
from vidlab.models.layers import DropPath, Mlp, check_drop_rates

Axis = Literal["space", "time"]


@dataclass
class SpaceTimeConfig:
    """Constructor arguments of `SpaceTimeTransformer` (defaults: ViT-B/16 at 224 px, 4 frames)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    num_frames: int = 4
    layer_norm_eps: float = 1e-6
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    time_init: str = "zeros"


class DividedAttention(MultiHeadSelfAttention):
    """Attention within frames (`axis='space'`) or within patch positions across frames (`axis='time'`).

    The CLS token attends to all tokens; each group of patch tokens attends to itself plus the CLS
    token. Groups are folded into the head axis, so each attention is a single 4-D SDPA call.
    """

    def forward(self, tokens: Tensor, num_frames: int, axis: Axis) -> Tensor:  # type: ignore[override]
        query, key, value = self.project_qkv(tokens)
        batch, heads, length, head_dim = query.shape
        patches_per_frame = (length - 1) // num_frames

        cls_out = self.attend(query[:, :, :1], key, value)

        def grouped(patch_heads: Tensor) -> Tensor:
            """(B, H, T*N, d) -> (B, H, groups, group_len, d)."""
            frames = patch_heads.view(batch, heads, num_frames, patches_per_frame, head_dim)
            return frames if axis == "space" else frames.transpose(2, 3)

        patch_query = grouped(query[:, :, 1:])
        num_groups, group_len = patch_query.shape[2], patch_query.shape[3]
        cls_key = key[:, :, None, :1].expand(batch, heads, num_groups, 1, head_dim)
        cls_value = value[:, :, None, :1].expand(batch, heads, num_groups, 1, head_dim)
        group_key = torch.cat([cls_key, grouped(key[:, :, 1:])], dim=3)
        group_value = torch.cat([cls_value, grouped(value[:, :, 1:])], dim=3)

        patch_out = self.attend(
            patch_query.reshape(batch, heads * num_groups, group_len, head_dim),
            group_key.reshape(batch, heads * num_groups, group_len + 1, head_dim),
            group_value.reshape(batch, heads * num_groups, group_len + 1, head_dim),
        ).view(batch, heads, num_groups, group_len, head_dim)
        if axis == "time":
            patch_out = patch_out.transpose(2, 3)
        patch_out = patch_out.reshape(batch, heads, length - 1, head_dim)
        return self.project_out(torch.cat([cls_out, patch_out], dim=2))


class SpaceTimeBlock(nn.Module):
    """Time attention, then space attention (fed by the time-mixed tokens), then the MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        layer_norm_eps: float,
        drop_rate: float,
        drop_path: float,
    ):
        super().__init__()
        self.time_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.time_attn = DividedAttention(dim, num_heads, qkv_bias, qk_scale, proj_drop=drop_rate)
        self.space_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.space_attn = DividedAttention(dim, num_heads, qkv_bias, qk_scale, proj_drop=drop_rate)
        self.mlp_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop_rate)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: Tensor, num_frames: int) -> Tensor:
        time_mixed = tokens + self.time_attn(self.time_norm(tokens), num_frames, "time")
        tokens = tokens + self.drop_path(self.space_attn(self.space_norm(time_mixed), num_frames, "space"))
        return tokens + self.drop_path(self.mlp(self.mlp_norm(tokens)))


class SpaceTimeTransformer(nn.Module):
    """Video ViT with divided space-time attention; `forward` returns the normalised CLS feature (B, D)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        num_frames: int = 4,
        layer_norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        time_init: str = "zeros",
    ):
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(f"video.img_size {img_size} is not a multiple of patch_size {patch_size}")
        if time_init not in ("zeros", "rand"):
            raise ConfigError(f"video.time_init must be 'zeros' or 'rand', got {time_init!r}")
        check_drop_rates({"video.drop_rate": drop_rate, "video.drop_path_rate": drop_path_rate})
        if num_frames < 1:
            raise ConfigError(f"video.num_frames must be >= 1, got {num_frames}")
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_frames = num_frames
        self.embed_dim = self.num_features = embed_dim
        self.patches_per_frame = (img_size // patch_size) ** 2
        self.grad_checkpointing = False

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.spatial_pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patches_per_frame, embed_dim))
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(
                embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, layer_norm_eps, drop_rate, drop_path_rates[i]
            )
            for i in range(depth)
        )
        self.final_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.init_weights(time_init)

    @torch.no_grad()
    def init_weights(self, time_init: str = "zeros") -> None:
        """Random ViT-style init (truncated normal 0.02), temporal embedding 0, then the time-attention init."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.spatial_pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.zeros_(self.temporal_embed)
        if time_init == "zeros":
            self.zero_time_attention()

    @torch.no_grad()
    def zero_time_attention(self) -> None:
        """Make every time attention output exactly 0 while keeping a gradient path (official 'zeros' init)."""
        for block in self.blocks:
            nn.init.zeros_(block.time_attn.qkv.weight)
            if block.time_attn.qkv.bias is not None:
                nn.init.zeros_(block.time_attn.qkv.bias)
            nn.init.ones_(block.time_attn.proj.weight)
            nn.init.zeros_(block.time_attn.proj.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (less memory, more compute)."""
        self.grad_checkpointing = enable

    def embed_tokens(self, frames: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, 1 + T*N, D) tokens with CLS, spatial and temporal embeddings added."""
        if frames.dim() != 5:
            raise ModelInputError(f"frames must be (B, T, C, H, W), got shape {tuple(frames.shape)}")
        batch, num_frames, chans, height, width = frames.shape
        if num_frames > self.num_frames:
            raise ModelInputError(f"{num_frames} frames given, the model's temporal embedding holds {self.num_frames}")
        if (chans, height, width) != (self.in_chans, self.img_size, self.img_size):
            raise ModelInputError(
                f"frames must be {self.in_chans}x{self.img_size}x{self.img_size}, got {chans}x{height}x{width}"
            )
        patches = self.patch_embed(frames.reshape(batch * num_frames, chans, height, width))
        patches = patches.flatten(2).transpose(1, 2).reshape(batch, num_frames * self.patches_per_frame, -1)
        patch_pos = self.spatial_pos_embed[:, 1:].repeat(1, num_frames, 1)
        frame_pos = self.temporal_embed[:, :num_frames].repeat_interleave(self.patches_per_frame, dim=1)
        cls = (self.cls_token + self.spatial_pos_embed[:, :1]).expand(batch, -1, -1)
        return self.pos_drop(torch.cat([cls, patches + (patch_pos + frame_pos)], dim=1))

    def forward_features(self, frames: Tensor) -> Tensor:
        """(B, T, C, H, W) normalised frames -> (B, 1 + T*N, D) tokens after the final LayerNorm."""
        tokens = self.embed_tokens(frames)
        num_frames = frames.shape[1]
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, num_frames, use_reentrant=False)
            else:
                tokens = block(tokens, num_frames)
        return self.final_norm(tokens)

    def forward_head(self, tokens: Tensor) -> Tensor:
        """(B, 1 + T*N, D) -> (B, D): the CLS token (FiT has no pre-logits or classifier)."""
        return tokens[:, 0]

    def forward(self, frames: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(frames))
