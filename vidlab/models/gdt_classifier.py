"""The GDT / STiCA video encoder as a classifier: the downstream model of the official `eval_video.py`.

`Finetune_Model`: the R(2+1)D encoder (`vidlab.models.gdt.R2Plus1DEncoder`), its map averaged (or, with
`pooling.num_layers` > 0, STiCA's transformer pooling: the official `Finetune_Model_Agg`), optional dropout
(official `--use-dropout`, off) and one Linear to the classes, orthogonally initialised with a zero bias.
`forward_features(video)` -> (B, C) pooled features, `forward_head(features)` -> logits (the classifier
interface of `vidlab/models/interface.py`).

`freeze_encoder` (a linear probe, official `--feature-extract`): the encoder and pooling take no gradient and
stay in eval mode, so their BatchNorm statistics are those of the pretrained model (the official linear probe
leaves the model in train mode, its BatchNorm statistics drifting to the target data: docs/deviations.md).

The encoder's weights come from a pretrained GDT model (`load_encoder`: a vidlab GDT folder or an official
GDT / STiCA checkpoint); the names are those of the GDT model, so its `video_encoder.*` / `video_pooling.*`
tensors load as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.checkpoint import LoadReport, MappedStateDict, load_state_dict_strict
from vidlab.models.clip import unchanged_state_dict
from vidlab.models.errors import ModelInputError
from vidlab.models.factory import ModelFamily, read_checkpoint, register_family
from vidlab.models.gdt import FAMILY as GDT_FAMILY
from vidlab.models.gdt import GDTPoolingConfig, GDTVideoConfig, R2Plus1DEncoder, check_gdt_config, video_pooling
from vidlab.models.layers import check_drop_rates

logger = logging.getLogger(__name__)

FAMILY = "gdt_classifier"
ENCODER_PREFIXES = ("video_encoder.", "video_pooling.")


@dataclass
class GDTClassifierConfig:
    family: str = FAMILY
    num_classes: int = 101
    dropout: float = 0.0  # official --use-dropout False (0.9 when on)
    freeze_encoder: bool = False  # linear probe (official --feature-extract)
    video: GDTVideoConfig = field(default_factory=GDTVideoConfig)
    pooling: GDTPoolingConfig = field(default_factory=GDTPoolingConfig)


class GDTClassifier(nn.Module):
    """`forward(video (B, T, 3, H, W)) -> logits (B, num_classes)`."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.freeze_encoder = bool(cfg.freeze_encoder)
        self.video_encoder = R2Plus1DEncoder(cfg.video.layers, cfg.video.widths)
        width = self.video_encoder.out_channels
        self.time_steps = int(cfg.pooling.time_steps)
        self.video_pooling = video_pooling(width, cfg.pooling)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width, cfg.num_classes)
        if self.freeze_encoder:
            for module in self.encoder_modules():
                module.requires_grad_(False)

    def encoder_modules(self) -> list[nn.Module]:
        return [m for m in (self.video_encoder, self.video_pooling) if m is not None]

    @torch.no_grad()
    def init_weights(self) -> None:
        self.video_encoder.init_weights()
        if self.video_pooling is not None:
            self.video_pooling.init_weights()
        nn.init.orthogonal_(self.head.weight, 1)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> GDTClassifier:
        """Train mode for the head; a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.freeze_encoder:
            for module in self.encoder_modules():
                module.eval()
        return self

    def forward_features(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) frames -> (B, C) pooled encoder features."""
        if video.dim() != 5 or video.shape[2] != 3:
            raise ModelInputError(f"video must be (B, T, 3, H, W), got shape {tuple(video.shape)}")
        feature_map = self.video_encoder(video.transpose(1, 2))
        if self.video_pooling is None:
            return F.adaptive_avg_pool3d(feature_map, 1).flatten(1)
        sequence = F.adaptive_avg_pool3d(feature_map, (self.time_steps, 1, 1)).flatten(2).transpose(1, 2)
        return self.video_pooling(sequence)

    def forward_head(self, features: Tensor) -> Tensor:
        """(B, C) -> (B, num_classes) logits."""
        return self.head(self.dropout(features))

    def forward(self, video: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(video))

    def load_encoder(self, source: str | Path) -> LoadReport:
        """The `video_encoder` / `video_pooling` weights of a pretrained GDT model (a vidlab GDT folder, or an official
        GDT / STiCA checkpoint), loaded strictly; its projection heads and audio / text towers are left out."""
        cfg, mapped, name = read_checkpoint(source, None)
        if cfg.family not in (GDT_FAMILY, FAMILY):
            raise ConfigError(f"model.encoder: {source} holds a {cfg.family!r} model, not a GDT one")
        kept = {k: v for k, v in mapped.tensors.items() if k.startswith(ENCODER_PREFIXES)}
        dropped = sorted(k for k in mapped.tensors if k not in kept)
        head = tuple(f"{k}$" for k, _ in self.named_parameters() if not k.startswith(ENCODER_PREFIXES))
        return load_state_dict_strict(
            self, MappedStateDict(kept, ignored=[*mapped.ignored, *dropped]), name, allowed_missing=head
        )


def encoder_sizes(source: str | Path) -> dict[str, object]:
    """The `video.*` and `pooling.*` sizes of the GDT model in `source` (what the classifier must be built with)."""
    cfg, _, _ = read_checkpoint(source, None)
    if cfg.family not in (GDT_FAMILY, FAMILY):
        raise ConfigError(f"model.encoder: {source} holds a {cfg.family!r} model, not a GDT one")
    sizes: dict[str, object] = {}
    for section in ("video", "pooling"):
        sizes.update({f"{section}.{key}": value for key, value in cfg[section].items()})
    return sizes


def build_gdt_classifier(cfg: DictConfig, init_weights: bool = True) -> GDTClassifier:
    if cfg.num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {cfg.num_classes}")
    check_drop_rates({"dropout": cfg.dropout})
    check_gdt_config(DictConfig({**GDT_DEFAULTS, "video": cfg.video, "pooling": cfg.pooling}))
    model = GDTClassifier(cfg)
    if init_weights:
        model.init_weights()
    return model


def _gdt_defaults() -> dict[str, object]:
    from omegaconf import OmegaConf

    from vidlab.models.gdt import GDTConfig

    return dict(OmegaConf.to_container(OmegaConf.structured(GDTConfig)))  # type: ignore[arg-type]


GDT_DEFAULTS = _gdt_defaults()

register_family(
    ModelFamily(
        name=FAMILY,
        config_class=GDTClassifierConfig,
        build=build_gdt_classifier,
        adapt_state_dict=unchanged_state_dict,
        size_keys=("num_classes", "video.*", "pooling.*"),
    )
)

__all__ = ["GDTClassifier", "GDTClassifierConfig", "build_gdt_classifier", "encoder_sizes"]
