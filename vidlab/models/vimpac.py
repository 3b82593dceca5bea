"""VIMPAC (Tan et al., 2021, "VIMPAC: Video Pre-Training via Masked Token Prediction and Contrastive Learning"):
a transformer over a video's discrete tokens (B, T, H, W), exactly as the official `TransformerLayout` computes it.

- Input: token ids (VQ codes 0..vocab_size-1, then 5 special ids: [PAD] = vocab_size + 1, [MASK] = vocab_size + 4)
  -> embedding + positional table -> `ln_pre` -> dropout; a learned [CLS] vector takes the same path.
- `layout` ("T,H|W", "T,H,W", "T|H|W", "T", "T,H", "H|W,T"): each comma-separated group is one attention block
  run in sequence; `|` splits a block into parallel attentions over different axes, each with D/k channels and
  heads/k heads, concatenated into ONE shared output (dense + dropout + post-LN residual). `T` attends along time
  at a fixed (h, w), `H` along a column, `W` along a row. The [CLS] token is prepended to every 1-D sequence and
  its outputs are averaged over the sequences. [PAD] keys are masked (the [CLS] key never is).
- Each layer: the attention blocks, then LN(x + MLP(x)) with exact-erf GELU. Post-LN throughout (BERT style).
- `pos_emb`: `default` (one (1+THW, D) table), `temporal_separation` (T table + (HW) table), `hw_separation`
  (T + H + W tables), plus a [CLS] position. `halve_att` / `halve_mlp` halve the attention width / MLP (large).
- Heads: `mlm_head` (Linear -> GELU -> LN -> logits over the vocabulary with the INPUT EMBEDDING as weights, plus
  a bias), `nce` (the SimCLR projection of [CLS]: [Linear -> BatchNorm -> ReLU] x (layers-1) -> Linear without
  bias), and the fine-tuning classifier on [CLS] (`num_classes` > 0; zero-initialised).

Parameter names are the official ones (`backbone.*`, `mlm_head.*`), except the heads the official code names
`cls_head` (here `nce_head`) and `cls_fc` (here `head`) and the tied `mlm_head.decoder` (not stored twice):
`OFFICIAL_VIMPAC_KEY_MAP` converts official `classifier.pt` files; a whole `snap/.../last/` folder loads with
`create_model(checkpoint=folder)` (`args.pickle` gives the architecture, heads = hid_dim // 64 as the official
trainers derive them). Deviations are in docs/deviations.md.
"""

from __future__ import annotations

import math
import shlex
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidlab.errors import ConfigError
from vidlab.models.attention import attend, merge_heads, split_heads
from vidlab.models.checkpoint import (
    ForeignObject,
    KeyMap,
    MappedStateDict,
    load_pickled_checkpoint,
    load_restricted_pickle,
)
from vidlab.models.errors import CheckpointError, ModelInputError
from vidlab.models.factory import (
    ModelFamily,
    register_checkpoint_format,
    register_family,
    register_folder_reader,
    typed_model_config,
)
from vidlab.models.layers import check_drop_rates

FAMILY = "vimpac"
NUM_SPECIAL_TOKENS = 5  # ids vocab_size .. vocab_size + 4; the official code uses [PAD] = +1 and [MASK] = +4
AXES = {"T": 1, "H": 2, "W": 3}  # the axis of (B, T, H, W, D) each attention pattern runs along
POS_EMBS = ("default", "temporal_separation", "hw_separation")
LN_EPS = 1e-12
INIT_STD = 0.02


@dataclass
class VimpacNCEHeadConfig:
    """The contrastive projection of [CLS] (the official `CLSMLPHead`, `--nce-proj-*`)."""

    enabled: bool = True
    layers: int = 2
    hidden_dim: int = 2048
    output_dim: int = 256
    bn_after_proj: bool = False


@dataclass
class VimpacConfig:
    family: str = FAMILY
    vocab_size: int = 8192  # VQ codes; the embedding has vocab_size + 5 rows
    num_frames: int = 5  # token grid of one clip: frames x height x width (frame_size // 8 for the DALL-E dVAE)
    height: int = 16
    width: int = 16
    hid_dim: int = 512
    layers: int = 6
    heads: int = 8  # the official scripts use hid_dim // 64
    layout: str = "T,H|W"
    pos_emb: str = "hw_separation"
    halve_att: bool = False
    halve_mlp: bool = False
    dropout: float = 0.1
    grad_checkpoint: bool = False
    mlm_head: bool = True
    nce: VimpacNCEHeadConfig = field(default_factory=VimpacNCEHeadConfig)
    num_classes: int = 0  # > 0: the fine-tuning classifier on [CLS]
    cls_dropout: float = 0.0  # before the classifier (official --last-dropout)
    # a checkpoint whose positional tables have other lengths is interpolated (official load_model) only when set
    interpolate_pos_embed: bool = False


def pad_token_id(vocab_size: int) -> int:
    return vocab_size + 1


def mask_token_id(vocab_size: int) -> int:
    return vocab_size + 4


def parse_layout(layout: str) -> list[list[str]]:
    """'T,H|W' -> [['T'], ['H', 'W']]: blocks in sequence, the patterns of each in parallel."""
    blocks = [block.split("|") for block in layout.split(",")]
    if not layout or any(p not in AXES for block in blocks for p in block):
        raise ConfigError(f"layout {layout!r}: comma-separated blocks of '|'-separated axes T, H, W (e.g. 'T,H|W')")
    return blocks


# ---------------------------------------------------------------------------------------------------------
# The backbone


class SelfAttention(nn.Module):
    """BERT self-attention (separate query / key / value, no output projection) on (N, S, D) sequences."""

    def __init__(self, dim: int, out_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(dim, out_dim)
        self.key = nn.Linear(dim, out_dim)
        self.value = nn.Linear(dim, out_dim)

    def forward(self, tokens: Tensor, keep: Tensor | None) -> Tensor:
        """tokens (N, S, D), keep (N, S) True where a key may be attended (None: all) -> (N, S, out_dim)."""
        query, key, value = (split_heads(proj(tokens), self.num_heads) for proj in (self.query, self.key, self.value))
        mask = keep[:, None, None, :] if keep is not None else None
        out = attend(query, key, value, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return merge_heads(out)


class AxisAttention(nn.Module):
    """Attention along one axis of the token grid, [CLS] prepended to every 1-D sequence (official
    `SingleAttention`): the [CLS] output is the mean of its outputs over all sequences."""

    def __init__(self, dim: int, out_dim: int, num_heads: int, pattern: str, dropout: float):
        super().__init__()
        self.axis = AXES[pattern]
        self.attention = SelfAttention(dim, out_dim, num_heads, dropout)

    def forward(self, cls: Tensor, grid: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
        """cls (B, D), grid (B, T, H, W, D), pad (B, T, H, W) -> cls (B, D'), grid (B, T, H, W, D')."""
        lines = grid.movedim(self.axis, -2)  # (B, a, b, S, D): one sequence per (a, b)
        batch, rows_a, rows_b, length, dim = lines.shape
        lines = lines.reshape(batch, rows_a * rows_b, length, dim)
        tokens = torch.cat([cls[:, None, None, :].expand(-1, lines.shape[1], 1, -1), lines], dim=2)
        keep = None
        if pad is not None:
            keep = F.pad(~pad.movedim(self.axis, -1).reshape(-1, length), (1, 0), value=True)
        out = self.attention(tokens.flatten(0, 1), keep).view(batch, rows_a * rows_b, 1 + length, -1)
        lines_out = out[:, :, 1:].reshape(batch, rows_a, rows_b, length, -1)
        return out[:, :, 0].mean(1), lines_out.movedim(-2, self.axis)


class SelfOutput(nn.Module):
    """dense -> dropout -> LayerNorm(. + residual) (BERT's `BertSelfOutput`)."""

    def __init__(self, in_dim: int, dim: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_dim, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=LN_EPS)  # noqa: N815 (official name)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class MultiPatternAttention(nn.Module):
    """One attention block: parallel axis attentions on channel slices, one shared output."""

    def __init__(self, dim: int, num_heads: int, patterns: list[str], dropout: float, halve_att: bool):
        super().__init__()
        parts = len(patterns)
        att_dim = dim // 2 if halve_att else dim
        if att_dim % parts or num_heads % parts or (att_dim // parts) % (num_heads // parts):
            raise ConfigError(
                f"attention block {'|'.join(patterns)!r}: width {att_dim} and heads {num_heads} must split into "
                f"{parts} parallel attentions with a whole head size"
            )
        self.attentions = nn.ModuleList(
            AxisAttention(dim, att_dim // parts, num_heads // parts, pattern, dropout) for pattern in patterns
        )
        self.output = SelfOutput(att_dim, dim, dropout)

    def forward(self, cls: Tensor, grid: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
        outs = [attention(cls, grid, pad) for attention in self.attentions]
        att_cls, att_grid = (torch.cat(parts, dim=-1) for parts in zip(*outs))
        return self.output(att_cls, cls), self.output(att_grid, grid)


class ResidualAttentionBlock(nn.Module):
    """The layout's attention blocks in sequence, then LN(x + MLP(x)); [CLS] shares every weight."""

    def __init__(
        self, dim: int, num_heads: int, layout: list[list[str]], dropout: float, halve_att: bool, halve_mlp: bool
    ):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            MultiPatternAttention(dim, num_heads, patterns, dropout, halve_att) for patterns in layout
        )
        mlp_dim = dim * 2 if halve_mlp else dim * 4
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(dim, mlp_dim),
                gelu=nn.GELU(),
                c_proj=nn.Linear(mlp_dim, dim),
                dropout=nn.Dropout(dropout),
            )
        )
        self.ln = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, cls: Tensor, grid: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
        for block in self.attention_blocks:
            cls, grid = block(cls, grid, pad)
        return self.ln(cls + self.mlp(cls)), self.ln(grid + self.mlp(grid))


class Transformer(nn.Module):
    def __init__(self, blocks: list[ResidualAttentionBlock], grad_checkpoint: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)
        self.grad_checkpoint = grad_checkpoint

    def forward(self, cls: Tensor, grid: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
        for block in self.resblocks:
            if self.grad_checkpoint and self.training:
                cls, grid = checkpoint(block, cls, grid, pad, use_reentrant=False)
            else:
                cls, grid = block(cls, grid, pad)
        return cls, grid


class PositionalEmbedding(nn.Module):
    """The (1 + T*H*W, D) positional table: [CLS] first, then (t, h, w) in row-major order."""

    def __init__(self, mode: str, num_frames: int, height: int, width: int, dim: int):
        super().__init__()
        if mode not in POS_EMBS:
            raise ConfigError(f"pos_emb must be one of {', '.join(POS_EMBS)}, got {mode!r}")
        self.mode, self.grid = mode, (num_frames, height, width)

        def table(rows: int, std: float) -> nn.Parameter:
            return nn.Parameter(std * torch.randn(rows, dim))

        if mode == "default":
            self.positional_embedding = table(1 + num_frames * height * width, INIT_STD)
            return
        parts = 2 if mode == "temporal_separation" else 3  # the official init divides the std by sqrt(parts)
        self.cls_pos_embedding = table(1, INIT_STD)
        self.temporal_pos_embedding = table(num_frames, INIT_STD / math.sqrt(parts))
        if mode == "temporal_separation":
            self.spatial_pos_embedding = table(height * width, INIT_STD / math.sqrt(parts))
        else:
            self.height_pos_embedding = table(height, INIT_STD / math.sqrt(parts))
            self.width_pos_embedding = table(width, INIT_STD / math.sqrt(parts))

    def forward(self) -> Tensor:
        if self.mode == "default":
            return self.positional_embedding
        frames, height, width = self.grid
        if self.mode == "temporal_separation":
            grid = self.temporal_pos_embedding[:, None] + self.spatial_pos_embedding[None]
        else:
            grid = (
                self.temporal_pos_embedding[:, None, None]
                + self.height_pos_embedding[None, :, None]
                + self.width_pos_embedding[None, None, :]
            )
        return torch.cat([self.cls_pos_embedding, grid.reshape(frames * height * width, -1)])


class VimpacTransformer(nn.Module):
    """Token ids (B, T, H, W) -> ([CLS] (B, D), token states (B, T, H, W, D)); the official `TransformerLayout`."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.grid = (cfg.num_frames, cfg.height, cfg.width)
        self.pad_id = pad_token_id(cfg.vocab_size)
        self.embedding = nn.Embedding(cfg.vocab_size + NUM_SPECIAL_TOKENS, cfg.hid_dim)
        self.cls_param = nn.Parameter(INIT_STD * torch.randn(cfg.hid_dim))
        self.positional_embedding = PositionalEmbedding(cfg.pos_emb, *self.grid, cfg.hid_dim)
        self.ln_pre = nn.LayerNorm(cfg.hid_dim, eps=LN_EPS)
        self.drop = nn.Dropout(cfg.dropout)
        layout = parse_layout(cfg.layout)
        blocks = [
            ResidualAttentionBlock(cfg.hid_dim, cfg.heads, layout, cfg.dropout, cfg.halve_att, cfg.halve_mlp)
            for _ in range(cfg.layers)
        ]
        self.transformer = Transformer(blocks, cfg.grad_checkpoint)

    def forward(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        if codes.dim() != 4 or tuple(codes.shape[1:]) != self.grid:
            raise ModelInputError(
                f"token ids must be (B, {', '.join(map(str, self.grid))}) (frames, height, width), got {tuple(codes.shape)}"
            )
        pad = codes == self.pad_id
        pad = pad if bool(pad.any()) else None
        table = self.positional_embedding().to(self.embedding.weight.dtype)
        cls = self.drop(self.ln_pre(self.cls_param + table[0]).expand(codes.shape[0], -1))
        grid = self.drop(self.ln_pre(self.embedding(codes) + table[1:].view(*self.grid, -1)))
        return self.transformer(cls, grid, pad)


# ---------------------------------------------------------------------------------------------------------
# Heads and the model


class MLMHead(nn.Module):
    """Linear -> GELU -> LayerNorm -> logits with the token embedding as output weights, plus a bias."""

    def __init__(self, dim: int, num_tokens: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=LN_EPS))
        self.bias = nn.Parameter(torch.zeros(num_tokens))

    def forward(self, hidden: Tensor, embedding_weight: Tensor) -> Tensor:
        return F.linear(self.transform(hidden), embedding_weight, self.bias)


class NCEHead(nn.Module):
    """[Linear -> BatchNorm -> ReLU] x (layers - 1) -> Linear (no bias) [-> BatchNorm] (SimCLR's projection)."""

    def __init__(self, dim: int, cfg: DictConfig):
        super().__init__()
        if cfg.layers < 1:
            raise ConfigError(f"nce.layers must be >= 1, got {cfg.layers}")
        layers: list[tuple[str, nn.Module]] = []
        for i in range(cfg.layers - 1):
            fan_in = dim if i == 0 else cfg.hidden_dim
            layers += [(f"linear_{i}", nn.Linear(fan_in, cfg.hidden_dim)), (f"bn_{i}", nn.BatchNorm1d(cfg.hidden_dim))]
            layers.append((f"act_{i}", nn.ReLU()))
        last = cfg.layers - 1
        layers.append((f"linear_{last}", nn.Linear(dim if last == 0 else cfg.hidden_dim, cfg.output_dim, bias=False)))
        if cfg.bn_after_proj:
            layers.append((f"bn_{last}", nn.BatchNorm1d(cfg.output_dim)))
        self.mlp = nn.Sequential(OrderedDict(layers))

    def forward(self, cls: Tensor) -> Tensor:
        return self.mlp(cls)


class Vimpac(nn.Module):
    """The backbone with the heads its config enables. A classifier over token ids (the interface's
    `forward_features` / `forward_head` take (B, T, H, W) ids, not frames); pre-training uses `encode`,
    `mlm_logits` and `nce_projection`."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.vocab_size = cfg.vocab_size
        self.backbone = VimpacTransformer(cfg)
        num_tokens = cfg.vocab_size + NUM_SPECIAL_TOKENS
        self.mlm_head = MLMHead(cfg.hid_dim, num_tokens) if cfg.mlm_head else None
        self.nce_head = NCEHead(cfg.hid_dim, cfg.nce) if cfg.nce.enabled else None
        self.head_drop = nn.Dropout(cfg.cls_dropout)
        self.head = nn.Linear(cfg.hid_dim, cfg.num_classes) if cfg.num_classes > 0 else None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official init: Linear / Embedding N(0, 0.02) with zero biases, LayerNorm (1, 0); classifier zeros."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        if self.head is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.vocab_size)

    @property
    def mask_id(self) -> int:
        return mask_token_id(self.vocab_size)

    def encode(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, H, W) ids -> ([CLS] (B, D), token states (B, T, H, W, D))."""
        return self.backbone(codes)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Token states (..., D) -> (..., vocab_size + 5) logits."""
        if self.mlm_head is None:
            raise ModelInputError("this VIMPAC model has no MLM head (mlm_head: false)")
        return self.mlm_head(hidden, self.backbone.embedding.weight)

    def nce_projection(self, cls: Tensor) -> Tensor:
        """[CLS] (B, D) -> (B, nce.output_dim), not normalised (the contrastive loss normalises)."""
        if self.nce_head is None:
            raise ModelInputError("this VIMPAC model has no NCE head (nce.enabled: false)")
        return self.nce_head(cls)

    def forward_features(self, codes: Tensor, pooling: str = "cls") -> Tensor:
        """(B, T, H, W) ids -> (B, D): the [CLS] state, or with pooling='mean' the mean token state (PAD
        positions included, as the official 'pooling' output)."""
        cls, grid = self.encode(codes)
        if pooling == "cls":
            return cls
        if pooling == "mean":
            return grid.mean(dim=(1, 2, 3))
        raise ModelInputError(f"pooling must be 'cls' or 'mean', got {pooling!r}")

    def forward_head(self, features: Tensor) -> Tensor:
        if self.head is None:
            raise ModelInputError("this VIMPAC model has no classifier (num_classes: 0)")
        return self.head(self.head_drop(features))

    def forward(self, codes: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(codes))


def build_vimpac(cfg: DictConfig, init_weights: bool = True) -> Vimpac:
    for key in ("vocab_size", "num_frames", "height", "width", "hid_dim", "layers", "heads"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg.num_classes < 0:
        raise ConfigError(f"num_classes must be >= 0 (0: no classifier), got {cfg.num_classes}")
    check_drop_rates({"dropout": cfg.dropout, "cls_dropout": cfg.cls_dropout})
    return Vimpac(cfg)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints: interpolation / vocabulary truncation, and the official files


def interpolate_table(table: Tensor, rows: int) -> Tensor:
    """(N, D) -> (rows, D) by 1-D linear interpolation (align_corners=False), the official rule."""
    return F.interpolate(table.T[None].float(), size=rows, mode="linear", align_corners=False)[0].T.to(table.dtype)


def expected_pos_rows(cfg: DictConfig) -> dict[str, int]:
    """Rows of each positional table the config builds."""
    frames, height, width = cfg.num_frames, cfg.height, cfg.width
    prefix = "backbone.positional_embedding."
    if cfg.pos_emb == "default":
        return {prefix + "positional_embedding": 1 + frames * height * width}
    rows = {prefix + "cls_pos_embedding": 1, prefix + "temporal_pos_embedding": frames}
    if cfg.pos_emb == "temporal_separation":
        return {**rows, prefix + "spatial_pos_embedding": height * width}
    return {**rows, prefix + "height_pos_embedding": height, prefix + "width_pos_embedding": width}


def adapt_vimpac_state_dict(cfg: DictConfig, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Fit a vidlab-named state dict to `cfg` as the official loaders do: positional tables of another length
    interpolated (only with `interpolate_pos_embed`), a larger vocabulary's embedding truncated."""
    tensors, notes = dict(tensors), []
    for key, rows in expected_pos_rows(cfg).items():
        table = tensors.get(key)
        if table is None or table.dim() != 2 or table.shape[0] == rows:
            continue
        if not cfg.interpolate_pos_embed:
            raise CheckpointError(
                key,
                f"{table.shape[0]} positions, the model {rows} (grid {cfg.num_frames}x{cfg.height}x{cfg.width}): "
                "set interpolate_pos_embed=true to interpolate the tables (official --different-shape)",
            )
        tensors[key] = interpolate_table(table, rows)
        notes.append(f"{key} {tuple(table.shape)} -> {tuple(tensors[key].shape)}, linear interpolation")
    key, rows = "backbone.embedding.weight", cfg.vocab_size + NUM_SPECIAL_TOKENS
    embedding = tensors.get(key)
    if embedding is not None and embedding.dim() == 2 and embedding.shape[0] > rows:
        tensors[key] = embedding[:rows]
        notes.append(f"{key} truncated from {embedding.shape[0]} to {rows} tokens (official fine-tuning loader)")
    return tensors, notes


# Official names -> vidlab names; `mlm_head.decoder.*` are the tied aliases of the embedding and mlm_head.bias.
OFFICIAL_VIMPAC_KEY_MAP = KeyMap(
    rules=(
        (r"(backbone\..+)", r"\1"),
        (r"mlm_head\.(bias|transform\.[02]\.(?:weight|bias))", r"mlm_head.\1"),
        (r"cls_head\.mlp\.(.+)", r"nce_head.mlp.\1"),
        (r"cls_fc\.(weight|bias)", r"head.\1"),
    ),
    ignore=(r"mlm_head\.decoder\.(weight|bias)",),
)
_OFFICIAL_ONLY = ("cls_head.", "cls_fc.", "mlm_head.decoder.")
# param.py defaults of the arguments that shape the model
OFFICIAL_ARG_DEFAULTS: dict[str, Any] = dict(
    model="bert",
    pos_emb="default",
    layers=6,
    hid_dim=512,
    dropout=0.1,
    last_dropout=0.0,
    pre_activation=False,
    halve_mlp=False,
    halve_att=False,
    vocab_size=2048,
    frame_size=128,
    clip_len=10,
    mlm_weight=1.0,
    nce_weight=1.0,
    nce_proj_layers=2,
    nce_proj_hid_dim=4096,
    nce_bn_after_proj=False,
    grad_checkpoint=False,
)
_OFFICIAL_POS_EMB = {(False, False): "default", (True, False): "temporal_separation", (True, True): "hw_separation"}


def official_cli_args(command_line: str) -> dict[str, Any]:
    """'--hid-dim 64 --fp16 --model efflayoutT,H|W' -> {'hid_dim': '64', 'fp16': True, 'model': 'efflayoutT,H|W'}
    (values stay strings; `vimpac_config_from_official` converts them)."""
    args: dict[str, Any] = {}
    words = shlex.split(command_line)
    for i, word in enumerate(words):
        if word.startswith("--"):
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True
            args[word[2:].replace("-", "_")] = value
    return args


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def vimpac_config_from_official(
    args: Mapping[str, Any], layout_kwargs: Mapping[str, Any] | None = None, num_classes: int = 0
) -> DictConfig:
    """The official arguments (`param.py` names, e.g. a snapshot's `args.pickle`) -> a vidlab config, built as the
    official pre-training model (heads by mlm/nce weights) or, with `num_classes`, the fine-tuning classifier.

    `layout_kwargs` (the `TransformerLayout` arguments) override what the official trainers derive from the
    arguments: heads = hid_dim // 64, grid = clip_len x frame_size // 8, vocab_size + 5 embeddings.
    """
    a = {**OFFICIAL_ARG_DEFAULTS, **args}
    if _as_bool(a["pre_activation"]):
        raise ConfigError("pre-activation VIMPAC (official --pre-activation ablation) is not implemented: post-LN only")
    if not str(a["model"]).startswith("efflayout"):
        raise ConfigError(f"official model {a['model']!r}: only the 'efflayout<layout>' transformers exist in VIMPAC")
    kwargs = dict(layout_kwargs or {})
    hid_dim, size = int(kwargs.get("hid_dim", a["hid_dim"])), int(a["frame_size"]) // 8
    pos_args = kwargs.get("pos_emb_args")
    if pos_args is not None:  # TransformerLayout's form of the option
        flags = (bool(pos_args.get("temporal_separation")), bool(pos_args.get("hw_separation")))
        pos_emb = _OFFICIAL_POS_EMB.get(flags, f"pos_emb_args {dict(pos_args)}")
    else:
        pos_emb = str(a["pos_emb"])
    if pos_emb not in POS_EMBS:
        raise ConfigError(f"official pos_emb {pos_emb!r}: the official code implements only {', '.join(POS_EMBS)}")
    fine_tune = num_classes > 0
    return typed_model_config(
        dict(
            family=FAMILY,
            vocab_size=int(kwargs.get("vocab_size", int(a["vocab_size"]) + NUM_SPECIAL_TOKENS)) - NUM_SPECIAL_TOKENS,
            num_frames=int(kwargs.get("length", a["clip_len"])),
            height=int(kwargs.get("height", size)),
            width=int(kwargs.get("width", size)),
            hid_dim=hid_dim,
            layers=int(kwargs.get("layers", a["layers"])),
            heads=int(kwargs.get("heads", hid_dim // 64)),
            layout=str(kwargs.get("layout", str(a["model"])[len("efflayout") :])),
            pos_emb=pos_emb,
            halve_att=_as_bool(a["halve_att"]),
            halve_mlp=_as_bool(a["halve_mlp"]),
            dropout=float(kwargs.get("dropout", a["dropout"])),
            grad_checkpoint=_as_bool(kwargs.get("grad_checkpoint", a["grad_checkpoint"])),
            mlm_head=not fine_tune and float(a["mlm_weight"]) > 0,
            nce=dict(
                enabled=not fine_tune and float(a["nce_weight"]) > 0,
                layers=int(a["nce_proj_layers"]),
                hidden_dim=int(a["nce_proj_hid_dim"]),
                bn_after_proj=_as_bool(a["nce_bn_after_proj"]),
            ),
            num_classes=num_classes,
            cls_dropout=float(a["last_dropout"]),
        )
    )


def _official_state(obj: Any) -> Mapping[str, Any] | None:
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    return state if isinstance(state, Mapping) else None


def is_official_vimpac_checkpoint(obj: Any) -> bool:
    """An official `classifier.pt` (pre-training or fine-tuning state dict), bare or from `read_official_snapshot`."""
    state = _official_state(obj)
    return (
        state is not None
        and "backbone.cls_param" in state
        and any(isinstance(k, str) and k.startswith(_OFFICIAL_ONLY) for k in state)
    )


def convert_official_vimpac_checkpoint(obj: Any, cfg: DictConfig | None) -> tuple[DictConfig, MappedStateDict]:
    """Official `classifier.pt` -> (config, vidlab-named weights). The architecture is `cfg`, else the snapshot's
    `args.pickle` (read by `read_official_snapshot`); heads the model does not have are ignored and reported."""
    state = dict(_official_state(obj) or {})
    if cfg is None:
        args = obj.get("args") if isinstance(obj, Mapping) else None
        if not isinstance(args, Mapping):
            raise CheckpointError(
                "VIMPAC classifier.pt",
                "records no architecture: pass the snapshot folder (it holds args.pickle) or the model config",
            )
        fine_tuned = "cls_fc.weight" in state
        cfg = vimpac_config_from_official(args, num_classes=int(state["cls_fc.weight"].shape[0]) if fine_tuned else 0)
    ignore = list(OFFICIAL_VIMPAC_KEY_MAP.ignore)
    if not cfg.mlm_head:
        ignore.append(r"mlm_head\..*")
    if not cfg.nce.enabled:
        ignore.append(r"cls_head\..*")
    mapped = KeyMap(OFFICIAL_VIMPAC_KEY_MAP.rules, tuple(ignore)).apply(state)
    return cfg, mapped


def vimpac_allowed_missing(cfg: DictConfig) -> tuple[str, ...]:
    """A fine-tuning classifier starts at zero when its checkpoint is a pre-training one (official finetune.py)."""
    return (r"head\.(weight|bias)",) if cfg.num_classes > 0 else ()


def snapshot_folder_reader(folder: Path) -> dict[str, Any] | None:
    """`read_official_snapshot` for `create_model(checkpoint=folder)`; None for any other folder."""
    if (folder / "classifier.pt").is_file() and (folder / "args.pickle").is_file():
        return read_official_snapshot(folder)
    return None


def read_official_snapshot(folder: str | Path) -> dict[str, Any]:
    """An official `snap/<run>/<name>/` folder -> {'state_dict': classifier.pt, 'args': args.pickle attributes},
    both read without running pickled code; `create_model(checkpoint=...)` builds the architecture from `args`."""
    folder = Path(folder)
    for name in ("classifier.pt", "args.pickle"):
        if not (folder / name).is_file():
            raise CheckpointError(str(folder), f"no {name}: not an official VIMPAC snapshot folder")
    namespace = load_restricted_pickle(folder / "args.pickle")
    if not isinstance(namespace, ForeignObject) or namespace.foreign_class != "argparse.Namespace":
        raise CheckpointError(str(folder / "args.pickle"), "not a pickled argparse.Namespace")
    args = dict(namespace.state) if isinstance(namespace.state, Mapping) else {}
    return {"state_dict": load_pickled_checkpoint(folder / "classifier.pt"), "args": args}


register_family(
    ModelFamily(
        name=FAMILY,
        config_class=VimpacConfig,
        build=build_vimpac,
        adapt_state_dict=adapt_vimpac_state_dict,
        allowed_missing=vimpac_allowed_missing,
        size_keys=(
            *("vocab_size", "num_frames", "height", "width", "hid_dim", "layers", "heads", "layout", "pos_emb"),
            *("halve_att", "halve_mlp"),
        ),
    )
)
register_checkpoint_format(
    "vimpac (official classifier.pt)", is_official_vimpac_checkpoint, convert_official_vimpac_checkpoint
)
register_folder_reader(snapshot_folder_reader)

__all__ = [
    "Vimpac",
    "VimpacConfig",
    "VimpacNCEHeadConfig",
    "VimpacTransformer",
    "PositionalEmbedding",
    "MultiPatternAttention",
    "AxisAttention",
    "MLMHead",
    "NCEHead",
    "build_vimpac",
    "parse_layout",
    "pad_token_id",
    "mask_token_id",
    "interpolate_table",
    "adapt_vimpac_state_dict",
    "OFFICIAL_VIMPAC_KEY_MAP",
    "official_cli_args",
    "vimpac_config_from_official",
    "is_official_vimpac_checkpoint",
    "convert_official_vimpac_checkpoint",
    "read_official_snapshot",
]
