"""BEiT and ViT/DeiT image towers with the parameter names of transformers 4.x `BeitModel` / `ViTModel`.

Why not `transformers.BeitModel` itself: transformers 5 renamed BEiT's parameters (`layers.N.attention.q_proj`
instead of `encoder.layer.N.attention.attention.query`), so a model built from the installed library would
give checkpoints names that change with the library version. The released Singularity checkpoints (and the
hub BEiT/DeiT files) use the 4.x names; this tower keeps them, whatever transformers is installed.

One tower covers both layouts (Singularity's `vit_type`):
- `beit`: relative position bias per layer (a ((2S-1)^2 + 3, heads) table: patch offsets plus
  cls->token, token->cls, cls->cls), layer scale `lambda_1/lambda_2`, no key bias, no absolute position
  embedding, and mean pooling: `pooler.layernorm(mean(patch tokens))` (the final norm is then identity).
- `vit` (DeiT is loaded in the ViT layout): absolute position embeddings, biased keys, no layer scale, a
  final `layernorm`, and the [CLS] token as the pooled feature.

Blocks are pre-LN: x += DropPath(lambda_1 * attn(LN_before(x))); x += DropPath(lambda_2 * mlp(LN_after(x))),
with the relative bias added to the attention logits after the 1/sqrt(head_dim) scaling (SDPA's attn_mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.attention import attend, merge_heads, split_heads
from vidlab.models.errors import ModelInputError
from vidlab.models.evl import relative_offset_index
from vidlab.models.layers import DropPath, check_drop_rates

VISION_ARCHS = ("beit", "vit")
VISION_STEMS = ("patch", "conv")
NUM_SPECIAL_OFFSETS = 3  # cls->token, token->cls, cls->cls rows at the end of a relative bias table


@dataclass
class VisionTowerConfig:
    """Sizes of a BEiT/ViT tower; the names follow the transformers BeitConfig/ViTConfig arguments."""

    arch: str = "beit"
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.1
    layer_scale_init_value: float = 0.1  # 0: no lambda_1/lambda_2
    use_relative_position_bias: bool = True
    use_absolute_position_embeddings: bool = False
    use_mean_pooling: bool = True
    qkv_bias: bool = True  # query/value bias; the key has one only in the ViT layout
    initializer_range: float = 0.02
    stem: str = "patch"  # "conv": Xiao et al.'s convolutional stem (BeitPatchEmbeddings), not in any release


def beit_relative_position_index(grid_size: int) -> Tensor:
    """(P+1, P+1) index into a BEiT relative bias table for a square grid of P = grid_size^2 patches.

    Patch pairs use the 2-D offset index ((2S-1)^2 entries); then cls->token, token->cls, cls->cls.
    """
    num_offsets = (2 * grid_size - 1) ** 2
    num_tokens = grid_size * grid_size + 1
    index = torch.empty(num_tokens, num_tokens, dtype=torch.long)
    index[1:, 1:] = relative_offset_index(grid_size)
    index[0, :] = num_offsets  # cls -> token
    index[:, 0] = num_offsets + 1  # token -> cls
    index[0, 0] = num_offsets + 2  # cls -> cls
    return index


def relative_bias_table_size(grid_size: int) -> int:
    return (2 * grid_size - 1) ** 2 + NUM_SPECIAL_OFFSETS


class BeitRelativePositionBias(nn.Module):
    """The learned table and the (non-persistent) index that spreads it over token pairs."""

    def __init__(self, grid_size: int, num_heads: int):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(relative_bias_table_size(grid_size), num_heads))
        self.register_buffer("relative_position_index", beit_relative_position_index(grid_size), persistent=False)

    def forward(self) -> Tensor:
        """(heads, N, N) additive attention bias."""
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N, N, heads)
        return bias.permute(2, 0, 1).contiguous()


class BeitPatchEmbeddings(nn.Module):
    """Pixels to one token per patch.

    `stem="patch"` (BEiT, ViT, every released checkpoint): one `patch_size`-strided convolution.
    `stem="conv"`: the convolutional stem of Xiao et al. 2021 ("Early convolutions help transformers see
    better"): log2(patch_size) 3x3 stride-2 convolutions with BatchNorm and ReLU, widths doubling up to
    `hidden_size`, then a 1x1 `projection`; same token grid. For towers trained from scratch on little data: on
    ShapesBench frames a 4-layer tower classifying shapes reached 51 % after 400 steps with it, 28-31 % without.
    """

    def __init__(self, cfg: VisionTowerConfig):
        super().__init__()
        if cfg.stem == "patch":
            self.stem = None
            self.projection = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
            return
        depth = cfg.patch_size.bit_length() - 1
        widths = [cfg.hidden_size >> (depth - 1 - i) for i in range(depth)]
        layers: list[nn.Module] = []
        channels = cfg.num_channels
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.stem = nn.Sequential(*layers)
        self.projection = nn.Conv2d(cfg.hidden_size, cfg.hidden_size, 1)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, P, D)."""
        if self.stem is not None:
            pixels = self.stem(pixels)
        return self.projection(pixels).flatten(2).transpose(1, 2)


class BeitEmbeddings(nn.Module):
    def __init__(self, cfg: VisionTowerConfig, num_patches: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.patch_embeddings = BeitPatchEmbeddings(cfg)
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, num_patches + 1, cfg.hidden_size))
            if cfg.use_absolute_position_embeddings
            else None
        )
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, pixels: Tensor) -> Tensor:
        patches = self.patch_embeddings(pixels)
        tokens = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        if self.position_embeddings is not None:
            tokens = tokens + self.position_embeddings
        return self.dropout(tokens)


class BeitSelfAttention(nn.Module):
    """query/key/value projections (key without bias in BEiT) and the layer's relative position bias."""

    def __init__(self, cfg: VisionTowerConfig, grid_size: int):
        super().__init__()
        width = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.attn_drop = cfg.attention_probs_dropout_prob
        self.query = nn.Linear(width, width, bias=cfg.qkv_bias)
        self.key = nn.Linear(width, width, bias=cfg.arch == "vit" and cfg.qkv_bias)
        self.value = nn.Linear(width, width, bias=cfg.qkv_bias)
        self.relative_position_bias = (
            BeitRelativePositionBias(grid_size, cfg.num_attention_heads) if cfg.use_relative_position_bias else None
        )

    def forward(self, tokens: Tensor) -> Tensor:
        query, key, value = (split_heads(proj(tokens), self.num_heads) for proj in (self.query, self.key, self.value))
        bias = self.relative_position_bias()[None].to(tokens.dtype) if self.relative_position_bias is not None else None
        dropout_p = self.attn_drop if self.training else 0.0
        return merge_heads(attend(query, key, value, attn_mask=bias, dropout_p=dropout_p))


class BeitSelfOutput(nn.Module):
    def __init__(self, cfg: VisionTowerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.dropout(self.dense(hidden))


class BeitAttention(nn.Module):
    def __init__(self, cfg: VisionTowerConfig, grid_size: int):
        super().__init__()
        self.attention = BeitSelfAttention(cfg, grid_size)
        self.output = BeitSelfOutput(cfg)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.output(self.attention(tokens))


class BeitIntermediate(nn.Module):
    def __init__(self, cfg: VisionTowerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return F.gelu(self.dense(hidden))


class BeitOutput(nn.Module):
    """The MLP's second Linear (named `output.dense` as in transformers)."""

    def __init__(self, cfg: VisionTowerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.dropout(self.dense(hidden))


class BeitLayer(nn.Module):
    """Pre-LN block with optional layer scale."""

    def __init__(self, cfg: VisionTowerConfig, grid_size: int, drop_path: float):
        super().__init__()
        self.attention = BeitAttention(cfg, grid_size)
        self.intermediate = BeitIntermediate(cfg)
        self.output = BeitOutput(cfg)
        self.layernorm_before = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        scale = cfg.layer_scale_init_value
        self.lambda_1 = nn.Parameter(torch.full((cfg.hidden_size,), scale)) if scale > 0 else None
        self.lambda_2 = nn.Parameter(torch.full((cfg.hidden_size,), scale)) if scale > 0 else None
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: Tensor) -> Tensor:
        attended = self.attention(self.layernorm_before(tokens))
        if self.lambda_1 is not None:
            attended = self.lambda_1 * attended
        tokens = tokens + self.drop_path(attended)
        mlp_out = self.output(self.intermediate(self.layernorm_after(tokens)))
        if self.lambda_2 is not None:
            mlp_out = self.lambda_2 * mlp_out
        return tokens + self.drop_path(mlp_out)


class BeitEncoder(nn.Module):
    def __init__(self, cfg: VisionTowerConfig, grid_size: int):
        super().__init__()
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.num_hidden_layers).tolist()
        self.layer = nn.ModuleList(BeitLayer(cfg, grid_size, rate) for rate in rates)


class BeitPooler(nn.Module):
    """BEiT's mean pooling: LayerNorm over the mean of the patch tokens ([CLS] excluded)."""

    def __init__(self, cfg: VisionTowerConfig):
        super().__init__()
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.layernorm(tokens[:, 1:].mean(dim=1))


class VisionTower(nn.Module):
    """Images (B, C, H, W) at exactly `image_size` -> (tokens (B, 1+P, D), pooled (B, D) or None).

    `with_pooler=False` drops BEiT's pooler (Singularity's QA model has none); the pooled output is then None.
    """

    def __init__(self, cfg: VisionTowerConfig, with_pooler: bool = True):
        super().__init__()
        if cfg.arch not in VISION_ARCHS:
            raise ConfigError(f"vision.arch must be one of {VISION_ARCHS}, got {cfg.arch!r}")
        if cfg.image_size % cfg.patch_size:
            raise ConfigError(f"vision.image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.stem not in VISION_STEMS:
            raise ConfigError(f"vision.stem must be one of {VISION_STEMS}, got {cfg.stem!r}")
        if cfg.stem == "conv":
            halvings = cfg.patch_size.bit_length() - 1
            if cfg.patch_size < 2 or cfg.patch_size != 1 << halvings or cfg.hidden_size % (1 << (halvings - 1)):
                raise ConfigError(
                    "vision.stem 'conv' halves the image log2(patch_size) times, doubling its width up to hidden_size: "
                    f"patch_size must be a power of two >= 2 and hidden_size a multiple of {max(1, cfg.patch_size // 2)}, "
                    f"got patch_size {cfg.patch_size}, hidden_size {cfg.hidden_size}"
                )
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ConfigError(
                f"vision.hidden_size {cfg.hidden_size} is not divisible by num_attention_heads {cfg.num_attention_heads}"
            )
        check_drop_rates(
            {f"vision.{name}": getattr(cfg, name) for name in ("drop_path_rate", "hidden_dropout_prob", "attention_probs_dropout_prob")}
        )
        self.image_size = cfg.image_size
        self.grid_size = cfg.image_size // cfg.patch_size
        self.hidden_size = cfg.hidden_size
        self.embeddings = BeitEmbeddings(cfg, self.grid_size**2)
        self.encoder = BeitEncoder(cfg, self.grid_size)
        self.mean_pooling = cfg.use_mean_pooling
        self.layernorm = None if cfg.use_mean_pooling else nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.pooler = BeitPooler(cfg) if cfg.use_mean_pooling and with_pooler else None
        self.init_std = cfg.initializer_range

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ModelInputError(
                f"vision tower expects {self.image_size}x{self.image_size} images, got {tuple(pixels.shape[-2:])}"
            )
        tokens = self.embeddings(pixels)
        for layer in self.encoder.layer:
            tokens = layer(tokens)
        if self.layernorm is not None:
            tokens = self.layernorm(tokens)
        if self.mean_pooling:
            pooled = self.pooler(tokens) if self.pooler is not None else None
        else:
            pooled = tokens[:, 0]
        return tokens, pooled

    @torch.no_grad()
    def init_weights(self) -> None:
        """transformers' BEiT/ViT init: N(0, std) Linear/Conv weights, zero biases, tokens and bias tables;
        layer scales keep `layer_scale_init_value`."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=self.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, BeitRelativePositionBias):
                nn.init.zeros_(module.relative_position_bias_table)
        stem = self.embeddings.patch_embeddings.stem
        if stem is not None:  # ReLU convolutions: He init, as Xiao et al.
            for module in stem:
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.embeddings.cls_token, std=self.init_std)
        if self.embeddings.position_embeddings is not None:
            nn.init.trunc_normal_(self.embeddings.position_embeddings, std=self.init_std)


__all__ = [
    "VISION_ARCHS",
    "VISION_STEMS",
    "VisionTowerConfig",
    "VisionTower",
    "beit_relative_position_index",
    "relative_bias_table_size",
]
