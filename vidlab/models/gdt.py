"""GDT (Patrick et al., 2021, "Multi-modal Self-Supervision from Generalized Data Transformations") and STiCA
(Patrick et al., 2021, "Space-Time Crop & Attend"), as the official facebookresearch/GDT code builds them.

- Video: R(2+1)D-18 from torchvision's video ResNet blocks (`R2Plus1dStem`: 3 -> 45 -> 64, `BasicBlock` with
  `Conv2Plus1D` whose mid width is (in * out * 27) // (in * 9 + 3 * out)), output after layer4: a
  (B, 512, T/8, H/16, W/16) map (512 x 4 x 7 x 7 for 30 x 112^2). `video.layers` / `video.widths` set the
  blocks and widths per stage (the official sizes are the defaults).
- Video pooling: GDT averages the map (AdaptiveAvgPool3d(1)); STiCA (`pooling.num_layers` > 0) averages it to
  `pooling.time_steps` steps over space (AdaptiveAvgPool3d((steps, 1, 1)), which upsamples a shorter crop)
  and runs `TransformerPooling`: post-LN layers (LayerNorm eps 1e-12), linear Q/K with V and the output
  projection Identity unless `pooling.qkv_projections` (official `--qkv_mha`), FFN dim -> 2048 -> dim (exact
  GELU), no positional embedding unless asked; the output is the state at sequence position 0 (no [CLS]).
  0 layers = average pooling (official `--num_layer 0`).
- Audio (`modality: audio`): "ResNet-9", torchvision's ResNet `BasicBlock` x [1, 1, 1, 1] after
  Conv2d(1, 64, 7, stride 2, pad 3) + BN + ReLU + MaxPool(3, 2, 1), averaged to 512-d. Input: (B, 1, F, T)
  log mel-filterbank spectrograms (`vidlab.data.audio.gdt_spectrogram`). The official ResNet keeps an unused
  `fc` (512 -> 1000): vidlab has none, its keys are ignored (and reported) when loading.
- Text (`modality: text`, video-text GDT): `vidlab.models.word2vec.Word2VecTextEncoder` (frozen HowTo100M
  word2vec -> Linear(300, 2048) -> ReLU -> max over words).
- Heads: `head.hidden_dim` set: Dropout(0.3) -> Linear(-> 512, no bias) -> BatchNorm1d -> ReLU -> Dropout ->
  Linear(-> `embed_dim` 256); null: one Linear (official `use_mlp=False`). `normalize` (official
  `norm_feat`, on) L2-normalises the embeddings `forward` returns.

Input videos are (B, T, 3, H, W) frames (vidlab's layout; the official model takes (B, 3, T, H, W)),
normalised with mean 0.45 / std 0.225. `encode_video` / `encode_audio` / `encode_text` give the embeddings
(`normalize=True` for the unit vectors the losses compare), `video_feature_map` the STiCA map and
`crop_embeddings` its feature-map crops.

Official checkpoints load strictly through `OFFICIAL_GDT_KEY_MAP`: the GDT trainer's
`{model, optimizer, lr_scheduler, epoch, args}` (its pickled `argparse.Namespace` is read as plain data and
only `norm_feat` is taken from it) and STiCA's `{epoch, state_dict ('module.' keys), optimizer}`; the
architecture is inferred from the weights' shapes.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torchvision.models import resnet as image_resnet
from torchvision.models.video import resnet as video_resnet

from vidlab.errors import ConfigError
from vidlab.models.attention import attend, merge_heads, split_heads
from vidlab.models.checkpoint import ForeignObject, KeyMap, MappedStateDict, find_foreign, strip_prefix
from vidlab.models.clip import unchanged_state_dict
from vidlab.models.errors import CheckpointError, ModelInputError
from vidlab.models.factory import ModelFamily, register_checkpoint_format, register_family, typed_model_config
from vidlab.models.layers import Mlp, check_drop_rates
from vidlab.models.word2vec import Word2VecTextEncoder, Word2VecTokenizer, read_word2vec

logger = logging.getLogger(__name__)

FAMILY = "gdt"
MODALITIES = ("audio", "text")
STAGES = 4
STEM_WIDTH = 64  # the R(2+1)D stem's and the audio ResNet's first width (fixed in both official networks)
MAX_POSITIONS = 64  # TransformerPooling's positional table (official max_step)


@dataclass
class GDTVideoConfig:
    layers: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # BasicBlocks per stage (R(2+1)D-18)
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])


@dataclass
class GDTAudioConfig:
    layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1])  # ResNet-9
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])


@dataclass
class GDTTextConfig:
    vocab_size: int = 66250  # rows of the word2vec matrix (words + the padding row 0)
    word_dim: int = 300
    output_dim: int = 2048
    max_words: int = 20  # the dataset's tokenisation length
    word2vec: str | None = None  # word2vec.pth, loaded when the model is built without a checkpoint
    vocabulary: str | None = None  # dict.npy, for `Word2VecTokenizer`


@dataclass
class GDTHeadConfig:
    hidden_dim: int | None = 512  # null: a single Linear (official use_mlp=False)
    dropout: float = 0.3


@dataclass
class GDTPoolingConfig:
    """STiCA's video pooling; 0 layers = the global average pooling of GDT."""

    num_layers: int = 0
    time_steps: int = 4  # official transformer_time_dim (= the map's duration for 1 s clips)
    num_heads: int = 4
    ffn_dim: int = 2048
    dropout: float = 0.0
    qkv_projections: bool = False  # official --qkv_mha
    positional_embedding: bool = False  # official --positional_emb


@dataclass
class GDTConfig:
    family: str = FAMILY
    modality: str = "audio"  # the second tower: audio (audio-visual GDT, STiCA) | text (video-text GDT)
    embed_dim: int = 256
    normalize: bool = True  # official norm_feat: forward() returns unit vectors
    video: GDTVideoConfig = field(default_factory=GDTVideoConfig)
    audio: GDTAudioConfig = field(default_factory=GDTAudioConfig)
    text: GDTTextConfig = field(default_factory=GDTTextConfig)
    head: GDTHeadConfig = field(default_factory=GDTHeadConfig)
    pooling: GDTPoolingConfig = field(default_factory=GDTPoolingConfig)


# ---------------------------------------------------------------------------------------------------------
# Encoders


class R2Plus1DEncoder(nn.Module):
    """R(2+1)D video ResNet from torchvision's blocks: (B, 3, T, H, W) -> the layer4 map (B, C, T', H', W')."""

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        self.stem = video_resnet.R2Plus1dStem()
        in_planes = STEM_WIDTH
        for index, (blocks, width) in enumerate(zip(layers, widths)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or in_planes != width:  # torchvision's VideoResNet._make_layer rule
                downsample = nn.Sequential(
                    nn.Conv3d(in_planes, width, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(width)
                )
            stage = [video_resnet.BasicBlock(in_planes, width, video_resnet.Conv2Plus1D, stride, downsample)]
            stage += [video_resnet.BasicBlock(width, width, video_resnet.Conv2Plus1D) for _ in range(1, blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            in_planes = width
        self.out_channels = in_planes

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official `random_weight_init`: Kaiming-normal (fan_out) convolutions, BatchNorm 1 / 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, video: Tensor) -> Tensor:
        x = self.stem(video)
        for index in range(1, STAGES + 1):
            x = getattr(self, f"layer{index}")(x)
        return x


class AudioResNet(nn.Module):
    """GDT's audio ResNet on spectrograms: (B, 1, F, T) -> (B, C) (ResNet-9 with the default sizes)."""

    def __init__(self, layers: Sequence[int] = (1, 1, 1, 1), widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, STEM_WIDTH, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = STEM_WIDTH
        for index, (blocks, width) in enumerate(zip(layers, widths)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or in_planes != width:  # torchvision's ResNet._make_layer rule
                downsample = nn.Sequential(
                    image_resnet.conv1x1(in_planes, width, stride), nn.BatchNorm2d(width)
                )
            stage = [image_resnet.BasicBlock(in_planes, width, stride, downsample)]
            stage += [image_resnet.BasicBlock(width, width) for _ in range(1, blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            in_planes = width
        self.out_channels = in_planes

    @torch.no_grad()
    def init_weights(self) -> None:
        """torchvision ResNet's init; conv1 keeps PyTorch's default, as the official code replaces it after."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module is not self.conv1:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, spectrogram: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(spectrogram))))
        for index in range(1, STAGES + 1):
            x = getattr(self, f"layer{index}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class ProjectionHead(nn.Module):
    """GDT's `MLP`: Dropout -> Linear (no bias) -> BatchNorm1d -> ReLU -> Dropout -> Linear; or one Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = 512, dropout: float = 0.3):
        super().__init__()
        if hidden_dim is None:
            self.out = nn.Linear(in_dim, out_dim)
            return
        self.in_dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(in_dim, hidden_dim, bias=False)
        self.norm = nn.BatchNorm1d(hidden_dim)
        self.hidden_dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, features: Tensor) -> Tensor:
        if hasattr(self, "hidden"):
            hidden = torch.relu(self.norm(self.hidden(self.in_dropout(features))))
            features = self.hidden_dropout(hidden)
        return self.out(features)


# ---------------------------------------------------------------------------------------------------------
# STiCA's transformer pooling


class PostNormAttentionLayer(nn.Module):
    """x = LN1(x + MHA(x)); x = LN2(x + FFN(x)) with the official MHA: q scaled by 1/sqrt(d) before q.k,
    value and output projections only with `qkv_projections` (else the heads mix the input itself)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, qkv_projections: bool):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"pooling: width {dim} is not divisible by pooling.num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim) if qkv_projections else None
        self.out = nn.Linear(dim, dim) if qkv_projections else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.ffn = Mlp(dim, ffn_dim, drop=0.0)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, tokens: Tensor) -> Tensor:
        head_dim = tokens.shape[-1] // self.num_heads
        query = split_heads(self.q(tokens), self.num_heads) / math.sqrt(head_dim)
        key = split_heads(self.k(tokens), self.num_heads)
        value = split_heads(self.v(tokens) if self.v is not None else tokens, self.num_heads)
        dropout_p = self.dropout if self.training else 0.0
        context = merge_heads(attend(query, key, value, dropout_p=dropout_p, scale=1.0))
        if self.out is not None:
            context = self.out(context)
        tokens = self.norm1(tokens + F.dropout(context, p=self.dropout, training=self.training))
        return self.norm2(tokens + self.ffn(tokens))


class TransformerPooling(nn.Module):
    """(B, L, D) -> the state at position 0 after the layers (B, D), or every state (`all_states`)."""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int = 4,
        ffn_dim: int = 2048,
        dropout: float = 0.0,
        qkv_projections: bool = False,
        positional_embedding: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            PostNormAttentionLayer(dim, num_heads, ffn_dim, dropout, qkv_projections) for _ in range(num_layers)
        )
        self.positions = nn.Embedding(MAX_POSITIONS, dim) if positional_embedding else None
        if positional_embedding:  # the official pos_ids buffer (saved in checkpoints): which row each step reads
            self.register_buffer("position_ids", torch.arange(MAX_POSITIONS)[None])

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official `Base._init_weights`: Linear N(0, 0.02) with zero bias, LayerNorm 1 / 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor, all_states: bool = False) -> Tensor:
        if self.positions is not None:
            if tokens.shape[1] > MAX_POSITIONS:
                raise ModelInputError(f"{tokens.shape[1]} steps, the positional table holds {MAX_POSITIONS}")
            tokens = tokens + self.positions(self.position_ids[:, : tokens.shape[1]])
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens if all_states else tokens[:, 0]


# ---------------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class FeatureCrops:
    """Crops of a (.., T, H, W) feature map: spatial (h0, h1, w0, w1) and temporal (t0, t1) windows, each
    split into large and small ones (the official `fmcrop_params` layout, x = H, y = W)."""

    spatial_large: tuple[tuple[int, int, int, int], ...] = ()
    spatial_small: tuple[tuple[int, int, int, int], ...] = ()
    temporal_large: tuple[tuple[int, int], ...] = ()
    temporal_small: tuple[tuple[int, int], ...] = ()


def draw_feature_crops(
    rng: np.random.RandomState,
    duration: int = 4,
    spatial_large: int = 2,
    spatial_small: int = 0,
    temporal_large: int = 0,
    temporal_small: int = 0,
    map_size: int = 7,
    spatial_windows: tuple[int, int] = (6, 4),
) -> FeatureCrops:
    """Random crops of a (T = duration, map_size, map_size) map as the official `fmcrop_params` draws them (same
    numpy draws in the same order): spatial windows of 6 / 4 cells, temporal 3 / 2 steps (6 / 4 when the
    duration is not 4); `spatial_small` small crops after EACH large one. Spatial crops are drawn only when there
    are small ones or 2 large ones, temporal likewise. Kept from the official code: offsets come from
    `randint(0, size - window)`, whose bound is exclusive, so a window never touches the last row / column
    (large spatial crops are always [0:6, 0:6], large temporal ones [0:3])."""
    if not (0 <= spatial_large <= 2 and 0 <= temporal_large <= 2 and spatial_small >= 0 and temporal_small >= 0):
        raise ConfigError(f"STiCA crops: 0-2 large crops of each kind and >= 0 small ones, got {spatial_large} / {spatial_small} spatial, {temporal_large} / {temporal_small} temporal")
    large_window, small_window = spatial_windows
    temporal_windows = (3, 2) if duration == 4 else (6, 4)
    if max(large_window, small_window) >= map_size or max(temporal_windows) >= duration:
        raise ConfigError(f"STiCA crops: windows {spatial_windows} / {temporal_windows} do not fit a {duration} x {map_size} x {map_size} map")

    def spatial(window: int) -> tuple[int, int, int, int]:
        h0, w0 = (int(rng.randint(0, map_size - window)) for _ in range(2))  # official order: x (H), then y (W)
        return h0, h0 + window, w0, w0 + window

    def temporal(window: int) -> tuple[int, int]:
        t0 = int(rng.randint(0, duration - window))
        return t0, t0 + window

    groups: list[list[Any]] = [[], [], [], []]
    for draw, large, small, windows, first in (
        (spatial, spatial_large, spatial_small, spatial_windows, 0),
        (temporal, temporal_large, temporal_small, temporal_windows, 2),
    ):
        if small > 0 or large > 1:
            for _ in range(large):
                groups[first].append(draw(windows[0]))
                groups[first + 1].extend(draw(windows[1]) for _ in range(small))
    return FeatureCrops(*(tuple(group) for group in groups))


@dataclass
class CropEmbeddings:
    """`GDT.crop_embeddings`: one embedding (B, E) per crop of a `FeatureCrops`, in its order."""

    spatial_large: list[Tensor]
    spatial_small: list[Tensor]
    temporal_large: list[Tensor]
    temporal_small: list[Tensor]


def video_pooling(width: int, pooling: DictConfig) -> TransformerPooling | None:
    """STiCA's transformer pooling of the video map, or None for GDT's average pooling (`pooling.num_layers` 0)."""
    if pooling.num_layers == 0:
        return None
    return TransformerPooling(
        width,
        pooling.num_layers,
        num_heads=pooling.num_heads,
        ffn_dim=pooling.ffn_dim,
        dropout=pooling.dropout,
        qkv_projections=pooling.qkv_projections,
        positional_embedding=pooling.positional_embedding,
    )


class GDT(nn.Module):
    """Audio-visual (or video-text) GDT / STiCA: `forward(video, audio_or_ids) -> (video, other) embeddings`."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.normalize = bool(cfg.normalize)
        self.video_encoder = R2Plus1DEncoder(cfg.video.layers, cfg.video.widths)
        width = self.video_encoder.out_channels
        self.time_steps = int(cfg.pooling.time_steps)
        self.video_pooling = video_pooling(width, cfg.pooling)
        head = dict(hidden_dim=cfg.head.hidden_dim, dropout=cfg.head.dropout)
        self.video_head = ProjectionHead(width, cfg.embed_dim, **head)
        if cfg.modality == "audio":
            self.audio_encoder = AudioResNet(cfg.audio.layers, cfg.audio.widths)
            self.audio_head = ProjectionHead(self.audio_encoder.out_channels, cfg.embed_dim, **head)
        else:
            text = cfg.text
            self.text_encoder = Word2VecTextEncoder(text.vocab_size, text.word_dim, text.output_dim)
            self.text_head = ProjectionHead(text.output_dim, cfg.embed_dim, **head)

    def init_weights(self) -> None:
        self.video_encoder.init_weights()
        if self.video_pooling is not None:
            self.video_pooling.init_weights()
        if self.cfg.modality == "audio":
            self.audio_encoder.init_weights()

    def project(self, features: Tensor, modality: str, normalize: bool = False) -> Tensor:
        """Pooled (B, C) features of `modality` (video / audio / text) -> (B, embed_dim) through its head."""
        embeddings = getattr(self, f"{modality}_head")(features)
        return F.normalize(embeddings, p=2, dim=1) if normalize else embeddings

    # video
    def video_feature_map(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) frames -> the layer4 map (B, C, T', H', W')."""
        if video.dim() != 5 or video.shape[2] != 3:
            raise ModelInputError(f"video must be (B, T, 3, H, W), got shape {tuple(video.shape)}")
        return self.video_encoder(video.transpose(1, 2))

    def pooling_sequence(self, feature_map: Tensor) -> Tensor:
        """(B, C, T', H', W') -> (B, time_steps, C): the sequence STiCA's transformer pools."""
        return F.adaptive_avg_pool3d(feature_map, (self.time_steps, 1, 1)).flatten(2).transpose(1, 2)

    def pool_video(self, feature_map: Tensor) -> Tensor:
        """(B, C, T', H', W') map (or a crop of it) -> (B, C): average, or STiCA's transformer pooling."""
        if self.video_pooling is None:
            return F.adaptive_avg_pool3d(feature_map, 1).flatten(1)
        return self.video_pooling(self.pooling_sequence(feature_map))

    def video_features(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> the pooled video features (B, C) the heads (and a fine-tuned classifier) read."""
        return self.pool_video(self.video_feature_map(video))

    def encode_video(self, video: Tensor, normalize: bool = False) -> Tensor:
        """(B, T, 3, H, W) -> (B, embed_dim)."""
        return self.project(self.video_features(video), "video", normalize)

    def crop_embeddings(self, feature_map: Tensor, crops: FeatureCrops, normalize: bool = True) -> CropEmbeddings:
        """STiCA's `feat2nce` of every crop of the map: pooled, projected, L2-normalised (as officially)."""

        def embed(crop: Tensor) -> Tensor:
            return self.project(self.pool_video(crop), "video", normalize)

        return CropEmbeddings(
            spatial_large=[embed(feature_map[..., h0:h1, w0:w1]) for h0, h1, w0, w1 in crops.spatial_large],
            spatial_small=[embed(feature_map[..., h0:h1, w0:w1]) for h0, h1, w0, w1 in crops.spatial_small],
            temporal_large=[embed(feature_map[:, :, t0:t1]) for t0, t1 in crops.temporal_large],
            temporal_small=[embed(feature_map[:, :, t0:t1]) for t0, t1 in crops.temporal_small],
        )

    # audio / text
    def audio_features(self, spectrogram: Tensor) -> Tensor:
        """(B, 1, F, T) spectrograms -> (B, C)."""
        if self.cfg.modality != "audio":
            raise ModelInputError("this GDT model has a text tower, not an audio one (modality: text)")
        if spectrogram.dim() != 4 or spectrogram.shape[1] != 1:
            raise ModelInputError(f"spectrogram must be (B, 1, F, T), got shape {tuple(spectrogram.shape)}")
        return self.audio_encoder(spectrogram)

    def encode_audio(self, spectrogram: Tensor, normalize: bool = False) -> Tensor:
        """(B, 1, F, T) -> (B, embed_dim)."""
        return self.project(self.audio_features(spectrogram), "audio", normalize)

    def text_features(self, input_ids: Tensor) -> Tensor:
        """(N, L) word2vec ids -> (N, text.output_dim)."""
        if self.cfg.modality != "text":
            raise ModelInputError("this GDT model has an audio tower, not a text one (modality: audio)")
        if input_ids.dim() != 2:
            raise ModelInputError(f"input_ids must be (N, L), got shape {tuple(input_ids.shape)}")
        return self.text_encoder(input_ids)

    def tokenizer(self) -> Word2VecTokenizer:
        """The official tokenisation over `text.vocabulary` (dict.npy), `text.max_words` ids per sentence."""
        if self.cfg.modality != "text" or not self.cfg.text.vocabulary:
            raise ConfigError("text.vocabulary (the HowTo100M dict.npy) is not set: the model has no tokenizer")
        return Word2VecTokenizer.from_file(self.cfg.text.vocabulary, self.cfg.text.max_words)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None, normalize: bool = False) -> Tensor:
        """(N, L) ids -> (N, embed_dim). `attention_mask` is not used: as officially, padding positions (id 0)
        take part in the max over words."""
        return self.project(self.text_features(input_ids), "text", normalize)

    def forward(self, video: Tensor, other: Tensor) -> tuple[Tensor, Tensor]:
        """Video and audio (or text ids) embeddings, L2-normalised when `normalize` (official `GDT.forward`)."""
        second = self.encode_audio if self.cfg.modality == "audio" else self.encode_text
        return self.encode_video(video, self.normalize), second(other, normalize=self.normalize)


def _check_stages(name: str, layers: Sequence[int], widths: Sequence[int]) -> None:
    if len(layers) != STAGES or len(widths) != STAGES:
        raise ConfigError(f"{name}.layers and {name}.widths need {STAGES} entries each, got {list(layers)} / {list(widths)}")
    if min(layers) < 1 or min(widths) < 1:
        raise ConfigError(f"{name}.layers and {name}.widths must be >= 1, got {list(layers)} / {list(widths)}")


def check_gdt_config(cfg: DictConfig) -> None:
    """One-line errors for a config no GDT model can be built from."""
    if cfg.modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {', '.join(MODALITIES)}, got {cfg.modality!r}")
    if cfg.embed_dim < 1:
        raise ConfigError(f"embed_dim must be >= 1, got {cfg.embed_dim}")
    _check_stages("video", cfg.video.layers, cfg.video.widths)
    _check_stages("audio", cfg.audio.layers, cfg.audio.widths)
    if cfg.head.hidden_dim is not None and cfg.head.hidden_dim < 1:
        raise ConfigError(f"head.hidden_dim must be >= 1 or null, got {cfg.head.hidden_dim}")
    pooling = cfg.pooling
    if pooling.num_layers < 0 or pooling.time_steps < 1:
        raise ConfigError(f"pooling.num_layers must be >= 0 and pooling.time_steps >= 1, got {pooling.num_layers} / {pooling.time_steps}")
    if pooling.positional_embedding and pooling.time_steps > MAX_POSITIONS:
        raise ConfigError(f"pooling.time_steps {pooling.time_steps} exceeds the positional table ({MAX_POSITIONS})")
    check_drop_rates({"head.dropout": cfg.head.dropout, "pooling.dropout": pooling.dropout})


OFFICIAL_VIDEO_ARCHS = {"r2plus1d_18": [2, 2, 2, 2], "r2plus1d_34": [3, 4, 6, 3]}
OFFICIAL_AUDIO_ARCHS = {"resnet9": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2]}


def gdt_config_from_official(kwargs: Mapping[str, Any], stica_args: Mapping[str, Any] | None = None) -> DictConfig:
    """The official `GDT` / `TextVid_GDT` / `Stica_TransformerFMCrop` keyword arguments (and, for STiCA, the
    `main_stica.py` arguments `num_layer`, `num_head`, `dp`, `qkv_mha`, `positional_emb`,
    `transformer_time_dim`) -> a vidlab GDT config."""
    video_arch = kwargs.get("vid_base_arch", "r2plus1d_18")
    audio_arch = kwargs.get("aud_base_arch", "resnet9")
    if video_arch not in OFFICIAL_VIDEO_ARCHS or audio_arch not in OFFICIAL_AUDIO_ARCHS:
        raise ConfigError(
            f"official GDT architectures are {sorted(OFFICIAL_VIDEO_ARCHS)} / {sorted(OFFICIAL_AUDIO_ARCHS)}, "
            f"got {video_arch} / {audio_arch}"
        )
    if kwargs.get("pretrained", False):
        raise ConfigError("pretrained=True (torchvision's Kinetics R(2+1)D weights): load them as a checkpoint instead")
    cfg: dict[str, Any] = dict(
        family=FAMILY,
        modality="text" if "text_base_arch" in kwargs else "audio",
        embed_dim=kwargs.get("num_classes", 256),
        normalize=kwargs.get("norm_feat", True),
        video=dict(layers=OFFICIAL_VIDEO_ARCHS[video_arch]),
        audio=dict(layers=OFFICIAL_AUDIO_ARCHS[audio_arch]),
        head=dict(hidden_dim=512 if kwargs.get("use_mlp", False) else None),
    )
    if stica_args is not None:
        cfg["pooling"] = dict(
            num_layers=stica_args.get("num_layer", 2),
            time_steps=stica_args.get("transformer_time_dim", 4),
            num_heads=stica_args.get("num_head", 4),
            dropout=stica_args.get("dp", 0.0),
            qkv_projections=stica_args.get("qkv_mha", False),
            positional_embedding=stica_args.get("positional_emb", False),
        )
    return typed_model_config(cfg)


def build_gdt(cfg: DictConfig, init_weights: bool = True) -> GDT:
    """Build from a typed GDT config; without a checkpoint to follow, the official init and the word2vec file."""
    check_gdt_config(cfg)
    model = GDT(cfg)
    if init_weights:
        model.init_weights()
        if cfg.modality == "text" and cfg.text.word2vec:
            model.text_encoder.load_word_vectors(read_word2vec(cfg.text.word2vec))
        elif cfg.modality == "text":
            logger.warning("GDT text tower without text.word2vec: the frozen word vectors stay random")
    return model


register_family(
    ModelFamily(
        name=FAMILY,
        config_class=GDTConfig,
        build=build_gdt,
        adapt_state_dict=unchanged_state_dict,
        size_keys=(
            "modality", "embed_dim", "video.*", "audio.*", "head.hidden_dim", "pooling.*",
            "text.vocab_size", "text.word_dim", "text.output_dim",
        ),
    )
)


# ---------------------------------------------------------------------------------------------------------
# Official checkpoints (facebookresearch/GDT): GDT's checkpoint.pth and STiCA's checkpoint.pth.tar

_P = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_TRANSFORMER = r"video_pooling\.2\.transformer\.(\d+)\."
_HEAD_RULES = tuple(
    rule
    for letter, head in (("v", "video_head"), ("a", "audio_head"), ("t", "text_head"))
    for rule in (
        (rf"mlp_{letter}\.block_forward\.2\.weight", f"{head}.hidden.weight"),
        (rf"mlp_{letter}\.block_forward\.4\.{_P}", rf"{head}.norm.\1"),
        (rf"mlp_{letter}\.block_forward\.8\.(weight|bias)", rf"{head}.out.\1"),
        (rf"mlp_{letter}\.(weight|bias)", rf"{head}.out.\1"),  # use_mlp=False: a plain Linear
    )
)
OFFICIAL_GDT_KEY_MAP = KeyMap(
    rules=(
        # R(2+1)D: the official vmz copy of torchvision's VideoResNet, same module layout
        (rf"video_network\.base\.(stem\.\d+|layer\d\.\d+\.(?:conv[12]\.0\.\d|conv[12]\.1|downsample\.\d))\.{_P}",
         r"video_encoder.\1.\2"),
        (rf"audio_network\.base\.(conv1|bn1|layer\d\.\d+\.(?:conv[12]|bn[12]|downsample\.\d))\.{_P}", r"audio_encoder.\1.\2"),
        *_HEAD_RULES,
        (r"text_network\.word_embd\.weight", "text_encoder.word_embedding.weight"),
        (r"text_network\.fc1\.(weight|bias)", r"text_encoder.fc.\1"),
        (rf"{_TRANSFORMER}mha\.(q|k|v|out)_lin\.(weight|bias)", r"video_pooling.layers.\1.\2.\3"),
        (rf"{_TRANSFORMER}(norm1|norm2)\.(weight|bias)", r"video_pooling.layers.\1.\2.\3"),
        (rf"{_TRANSFORMER}ffn\.lin(1|2)\.(weight|bias)", r"video_pooling.layers.\1.ffn.fc\2.\3"),
        (r"video_pooling\.2\.pos_embs\.0\.weight", "video_pooling.positions.weight"),
        (r"video_pooling\.2\.pos_ids", "video_pooling.position_ids"),
    ),
    ignore=(r"audio_network\.base\.fc\.(weight|bias)",),  # the ResNet's classifier: built, never used
)


def map_official_gdt_state_dict(state: Mapping[str, Tensor]) -> MappedStateDict:
    """Official GDT / STiCA state dict ('module.' or not) -> vidlab names, with the unmapped keys."""
    return OFFICIAL_GDT_KEY_MAP.apply(strip_prefix(state, "module."))


def _official_state(obj: Any) -> Mapping[str, Any] | None:
    if not isinstance(obj, Mapping):
        return None
    for key in ("model", "state_dict"):
        state = obj.get(key)
        if isinstance(state, Mapping):
            return state
    return None


def is_official_gdt_checkpoint(obj: Any) -> bool:
    """A GDT trainer checkpoint ({'model': ...}) or a STiCA one ({'state_dict': ...}) of the official code."""
    state = _official_state(obj)
    return state is not None and any(
        isinstance(k, str) and k.removeprefix("module.").startswith("video_network.base.stem.") for k in state
    ) and any(isinstance(k, str) and re.match(r"(module\.)?mlp_v\.", k) for k in state)


def official_args(obj: Any) -> dict[str, Any]:
    """The training arguments a GDT checkpoint pickles (an `argparse.Namespace`), as plain data; {} if none."""
    record = find_foreign(obj, "argparse.Namespace")
    state = record.state if isinstance(record, ForeignObject) else None
    return dict(state) if isinstance(state, Mapping) else {}


def _stage_sizes(tensors: Mapping[str, Tensor], prefix: str, conv: str) -> tuple[list[int], list[int]]:
    layers, widths = [], []
    for stage in range(1, STAGES + 1):
        blocks = {int(m.group(1)) for k in tensors if (m := re.match(rf"{prefix}\.layer{stage}\.(\d+)\.", k))}
        if not blocks:
            raise CheckpointError("GDT checkpoint", f"no {prefix}.layer{stage} weights: cannot infer the architecture")
        layers.append(max(blocks) + 1)
        widths.append(int(tensors[f"{prefix}.layer{stage}.0.{conv}"].shape[0]))
    return layers, widths


def infer_gdt_config(tensors: Mapping[str, Tensor], normalize: bool = True) -> DictConfig:
    """A GDT config from a vidlab-named state dict: every size from the weights' shapes."""
    if "video_head.out.weight" not in tensors:
        raise CheckpointError("GDT checkpoint", "no video head (mlp_v): cannot infer the architecture")
    video_layers, video_widths = _stage_sizes(tensors, "video_encoder", "conv2.1.weight")
    modality = "text" if "text_encoder.fc.weight" in tensors else "audio"
    cfg: dict[str, Any] = dict(
        family=FAMILY,
        modality=modality,
        embed_dim=int(tensors["video_head.out.weight"].shape[0]),
        normalize=normalize,
        video=dict(layers=video_layers, widths=video_widths),
        head=dict(hidden_dim=int(tensors["video_head.hidden.weight"].shape[0]) if "video_head.hidden.weight" in tensors else None),
    )
    if modality == "audio":
        audio_layers, audio_widths = _stage_sizes(tensors, "audio_encoder", "bn2.weight")
        cfg["audio"] = dict(layers=audio_layers, widths=audio_widths)
    else:
        vocab_size, word_dim = tensors["text_encoder.word_embedding.weight"].shape
        cfg["text"] = dict(vocab_size=int(vocab_size), word_dim=int(word_dim), output_dim=int(tensors["text_encoder.fc.weight"].shape[0]))
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"video_pooling\.layers\.(\d+)\.", k))}
    if layers:
        cfg["pooling"] = dict(
            num_layers=max(layers) + 1,
            ffn_dim=int(tensors["video_pooling.layers.0.ffn.fc1.weight"].shape[0]),
            qkv_projections="video_pooling.layers.0.v.weight" in tensors,
            positional_embedding="video_pooling.positions.weight" in tensors,
        )
    return typed_model_config(cfg)


def convert_official_gdt_checkpoint(obj: Any, cfg: DictConfig | None) -> tuple[DictConfig, MappedStateDict]:
    """Official GDT / STiCA checkpoint -> (config, vidlab-named weights); `cfg`, else inferred from the shapes
    (and `norm_feat` from a GDT checkpoint's pickled arguments). Optimizer and scheduler states are training
    state and not read."""
    mapped = map_official_gdt_state_dict(_official_state(obj) or {})
    if cfg is None:
        args = official_args(obj)
        if args:
            logger.info(
                "official GDT arguments: model=%s hypothesis=%s vid_base_arch=%s aud_base_arch=%s",
                args.get("model"), args.get("hypothesis"), args.get("vid_base_arch"), args.get("aud_base_arch"),
            )
        cfg = infer_gdt_config(mapped.tensors, normalize=bool(args.get("norm_feat", True)))
    return cfg, mapped


register_checkpoint_format(
    "gdt (official GDT checkpoint.pth / STiCA checkpoint.pth.tar)", is_official_gdt_checkpoint, convert_official_gdt_checkpoint
)

__all__ = [
    "GDT",
    "video_pooling",
    "AudioResNet",
    "CropEmbeddings",
    "FeatureCrops",
    "GDTConfig",
    "OFFICIAL_GDT_KEY_MAP",
    "ProjectionHead",
    "R2Plus1DEncoder",
    "TransformerPooling",
    "build_gdt",
    "draw_feature_crops",
    "gdt_config_from_official",
    "infer_gdt_config",
    "map_official_gdt_state_dict",
    "official_args",
]
