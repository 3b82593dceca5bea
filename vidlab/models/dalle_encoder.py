"""The DALL-E dVAE encoder (OpenAI `dall_e.encoder.Encoder`), the image tokenizer VIMPAC's video2token uses.

- blocks.input: Conv 7x7 (3 -> n_hid); groups 1-4 of `n_blk_per_group` residual blocks at widths n_hid x
  (1, 2, 4, 8), a 2x2 max-pool after groups 1-3 (8x downsampling); blocks.output: ReLU, Conv 1x1 -> vocab logits.
- A residual block: id_path (1x1 conv when the width changes) + post_gain * res_path, res_path = 4 x (ReLU,
  conv: 3x3, 3x3, 3x3, 1x1) through n_out/4 channels, post_gain = 1 / (group_count * n_blk_per_group)^2.
- Convolutions hold `w` / `b` (the official parameter names). With `mixed_precision` (official default) every
  convolution but the last runs in float16 on CUDA; on the CPU everything is float32.
- Tokens: `tokenize(frames in [-1, 1])` = argmax over the logits of `map_pixels(frames * 0.5 + 0.5)`, as
  VIMPAC's `DALLEExtractor` does.

Weights: the released `encoder.pkl` is a whole pickled module; it is read without building any of its classes
(`vidlab.models.checkpoint.recorded_module_state_dict`), its sizes taken from its recorded attributes:
`create_model(checkpoint="encoder.pkl")`. A plain state dict with the official names loads too.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.checkpoint import ForeignObject, MappedStateDict, recorded_module_state_dict
from vidlab.models.clip import unchanged_state_dict
from vidlab.models.errors import CheckpointError, ModelInputError
from vidlab.models.factory import ModelFamily, register_checkpoint_format, register_family, typed_model_config

FAMILY = "dalle_encoder"
LOGIT_LAPLACE_EPS = 0.1
OFFICIAL_CLASS = "dall_e.encoder.Encoder"


@dataclass
class DalleEncoderConfig:
    family: str = FAMILY
    group_count: int = 4
    n_hid: int = 256
    n_blk_per_group: int = 2
    input_channels: int = 3
    vocab_size: int = 8192
    mixed_precision: bool = True  # float16 convolutions on CUDA (the official default)


def map_pixels(x: Tensor) -> Tensor:
    """[0, 1] -> [0.1, 0.9], the dVAE's input range (logit-Laplace epsilon 0.1)."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: Tensor) -> Tensor:
    return torch.clamp((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0, 1)


class Conv2d(nn.Module):
    """'Same'-padded convolution with DALL-E's parameter names and init (w ~ N(0, 1/sqrt(n_in k^2)), b = 0)."""

    def __init__(self, n_in: int, n_out: int, kw: int, use_float16: bool = True):
        super().__init__()
        self.use_float16 = use_float16
        self.padding = (kw - 1) // 2
        self.w = nn.Parameter(torch.empty(n_out, n_in, kw, kw).normal_(std=1 / math.sqrt(n_in * kw**2)))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.float16 if self.use_float16 and x.is_cuda else torch.float32
        return F.conv2d(x.to(dtype), self.w.to(dtype), self.b.to(dtype), padding=self.padding)


class EncoderBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int, use_float16: bool):
        super().__init__()
        if n_out % 4:
            raise ConfigError(f"DALL-E encoder block width {n_out} must be divisible by 4")
        n_hid = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path = Conv2d(n_in, n_out, 1, use_float16) if n_in != n_out else nn.Identity()
        convs = [(n_in, n_hid, 3), (n_hid, n_hid, 3), (n_hid, n_hid, 3), (n_hid, n_out, 1)]
        layers: list[tuple[str, nn.Module]] = []
        for i, (a, b, k) in enumerate(convs, start=1):
            layers += [(f"relu_{i}", nn.ReLU()), (f"conv_{i}", Conv2d(a, b, k, use_float16))]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: Tensor) -> Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DalleEncoder(nn.Module):
    """Images (B, C, H, W) in the dVAE's pixel range -> logits (B, vocab_size, H/8, W/8)."""

    downsample = 8  # the FrameTokenizer interface (vidlab.models.vq_tokenizer): tokens per 8x8 pixels

    def __init__(self, cfg: DictConfig):
        super().__init__()
        if cfg.group_count != 4:
            raise ConfigError(f"the DALL-E encoder has 4 groups (3 poolings: 8x downsampling), got {cfg.group_count}")
        self.input_channels, self.vocab_size = cfg.input_channels, cfg.vocab_size
        n_hid, n_blocks, half = cfg.n_hid, cfg.n_blk_per_group, cfg.mixed_precision
        n_layers = cfg.group_count * n_blocks
        groups: list[tuple[str, nn.Module]] = [("input", Conv2d(cfg.input_channels, n_hid, 7, half))]
        width_in = n_hid
        for g, factor in enumerate((1, 2, 4, 8), start=1):
            width = factor * n_hid
            group: list[tuple[str, nn.Module]] = [
                (f"block_{i + 1}", EncoderBlock(width_in if i == 0 else width, width, n_layers, half))
                for i in range(n_blocks)
            ]
            if g < 4:
                group.append(("pool", nn.MaxPool2d(kernel_size=2)))
            groups.append((f"group_{g}", nn.Sequential(OrderedDict(group))))
            width_in = width
        output = nn.Sequential(
            OrderedDict(relu=nn.ReLU(), conv=Conv2d(8 * n_hid, cfg.vocab_size, 1, use_float16=False))
        )
        groups.append(("output", output))
        self.blocks = nn.Sequential(OrderedDict(groups))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.input_channels:
            raise ModelInputError(f"images must be (B, {self.input_channels}, H, W), got {tuple(x.shape)}")
        return self.blocks(x.float())

    @torch.no_grad()
    def tokenize(self, frames: Tensor, batch_size: int | None = None) -> Tensor:
        """(B, 3, H, W) frames normalised to [-1, 1] -> (B, H/8, W/8) int64 codes (VIMPAC's DALLEExtractor),
        `batch_size` frames at a time on the encoder's device (all at once when None)."""
        device = self.blocks.input.w.device
        chunks = frames.split(batch_size) if batch_size else (frames,)
        codes = [self(map_pixels(chunk.to(device) * 0.5 + 0.5)).argmax(dim=1).cpu() for chunk in chunks]
        return torch.cat(codes) if codes else torch.empty((0, *frames.shape[2:]), dtype=torch.long)


def build_dalle_encoder(cfg: DictConfig, init_weights: bool = True) -> DalleEncoder:
    for key in ("n_hid", "n_blk_per_group", "input_channels", "vocab_size"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    return DalleEncoder(cfg)


def dalle_encoder_config_from_state_dict(tensors: Mapping[str, Tensor]) -> DictConfig:
    """The sizes of a DALL-E-named encoder state dict (group_count 4, the only one the architecture has)."""
    try:
        hidden, channels = tensors["blocks.input.w"].shape[:2]
        vocab = tensors["blocks.output.conv.w"].shape[0]
    except KeyError as e:
        raise CheckpointError("DALL-E encoder state dict", f"no {e.args[0]}: not a DALL-E encoder") from None
    blocks = {k.split(".")[2] for k in tensors if k.startswith("blocks.group_1.block_")}
    return typed_model_config(
        {
            "family": FAMILY,
            "n_hid": int(hidden),
            "input_channels": int(channels),
            "vocab_size": int(vocab),
            "n_blk_per_group": len(blocks),
        }
    )


def is_official_dalle_encoder(obj: Any) -> bool:
    """DALL-E's released `encoder.pkl`: a whole pickled `dall_e.encoder.Encoder`, read as a ForeignObject."""
    return isinstance(obj, ForeignObject) and obj.foreign_class == OFFICIAL_CLASS


def convert_official_dalle_encoder(obj: ForeignObject, cfg: DictConfig | None) -> tuple[DictConfig, MappedStateDict]:
    """The pickled module -> (config from its recorded attributes unless `cfg` is given, its state dict)."""
    if cfg is None:
        attrs = obj.state if isinstance(obj.state, dict) else {}
        sizes = {
            k: attrs[k]
            for k in ("group_count", "n_hid", "n_blk_per_group", "input_channels", "vocab_size")
            if k in attrs
        }
        cfg = typed_model_config(
            {"family": FAMILY, **sizes, "mixed_precision": bool(attrs.get("use_mixed_precision", True))}
        )
    return cfg, MappedStateDict(recorded_module_state_dict(obj))


register_family(
    ModelFamily(
        name=FAMILY,
        config_class=DalleEncoderConfig,
        build=build_dalle_encoder,
        adapt_state_dict=unchanged_state_dict,
        size_keys=("group_count", "n_hid", "n_blk_per_group", "input_channels", "vocab_size"),
    )
)
register_checkpoint_format("dall-e encoder (encoder.pkl)", is_official_dalle_encoder, convert_official_dalle_encoder)

__all__ = [
    "DalleEncoder",
    "DalleEncoderConfig",
    "Conv2d",
    "EncoderBlock",
    "map_pixels",
    "unmap_pixels",
    "build_dalle_encoder",
    "dalle_encoder_config_from_state_dict",
    "is_official_dalle_encoder",
    "convert_official_dalle_encoder",
]
