"""Singularity (Lei et al., 2022, "Revealing Single Frame Bias for Video-and-Language Learning").

- Vision: a BEiT (or ViT/DeiT) image tower run on every frame (`vidlab.models.beit`); BEiT's tokens then go
  through an extra `vision_layernorm` (the cross-attention memory), while ITC uses BEiT's mean-pooled
  feature per frame (before that norm).
- Video: the frames' tokens, concatenated, are one cross-attention memory (B, T*L, D). Optionally
  `temporal_embeddings` (1, num_frames, 1, D) are added per frame (sliced for fewer frames, linearly
  interpolated for more) and a small BERT encoder attends across frames at each spatial position
  (Singularity-temporal; skipped for a single frame).
- Text and fusion: ONE BERT built from transformers' BERT parts (`BertEmbeddings`, `BertLayer`): layers
  [0, fusion_layer) encode the text (its [CLS] is the text feature), layers [fusion_layer, N) add
  cross-attention to the video memory (official: 9 of 12). Pre-training adds BERT's MLM head.
- Heads: `vision_proj` / `text_proj` to `embed_dim` (256), a learnable temperature clamped to
  [0.001, 0.5] before each training step, `itm_head` (match logit = column 1).
- QA: the question runs through all 12 layers with cross-attention to the video; a 3-layer BERT decoder
  with an LM head (every layer cross-attends to the question states) ranks an answer list
  (`vidlab.tasks.qa`). The retrieval heads and BEiT's pooler do not exist in a QA model.

Parameter names are the official downstream names (`text_encoder.encoder.layer.N...`), so official
checkpoints load with the small map of `vidlab.models.singularity_weights`. Training logic stays out of
the model: the losses are `vidlab.losses.singularity`'s (`matching_losses`: ITC + ITM (+ MLM), `qa_loss`), and
the evaluation protocols (`vidlab.tasks.rerank`, `vidlab.tasks.qa`) call `encode_clips`, `text_features`,
`itm_logits`, `question_states`, `answer_start_logits`, `answer_nll`. `encode_video` / `encode_text` give the ITC
embeddings of `vidlab.models.interface.VideoTextModel`.

Input frames are (B, T, 3, H, W), normalised with mean = std = 0.5, at the tower's resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.beit import VisionTower, VisionTowerConfig
from vidlab.models.errors import ModelInputError
from vidlab.models.factory import ModelFamily, register_family
from vidlab.models.frame_ensemble import check_ensemble, clip_memories
from vidlab.models.singularity_weights import (
    adapt_singularity_state_dict,
    load_tower_weights,
    singularity_allowed_missing,
)

logger = logging.getLogger(__name__)

FAMILY = "singularity"
TASKS = ("pretrain", "retrieval", "qa")
QA_SCORINGS = ("faithful", "corrected")  # how `vidlab.tasks.qa.rank_answers` scores an answer (docs/deviations.md)
MASK_FILL = -10000.0  # additive attention bias of padded positions (official xbert)
TEMP_RANGE = (0.001, 0.5)



def frame_mean_similarity(video_feat: Tensor, text_feat: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """(B, T, E) per-frame and (N, E) text features (already normalised) -> (B, N) mean over frames of the
    per-frame dot products, divided by `temperature` (Singularity's `get_sim`; not the cosine of a mean)."""
    return torch.einsum("bte,ne->btn", video_feat, text_feat).mean(dim=1) / temperature


@dataclass
class SingularityTextConfig:
    """BERT sizes (transformers BertConfig names), the fusion split and the tokenizer's special ids."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    fusion_layer: int = 9
    attn_implementation: str = "sdpa"
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    max_length: int = 32  # tokenizer truncation (official max_txt_l: 32; 64 DiDeMo, 150 ActivityNet paragraphs)
    pooling: str = "cls"  # ITC text feature: cls (official) | mean of the unpadded states (mean-pooled encoders)


@dataclass
class TemporalEncoderConfig:
    enable: bool = False
    num_layers: int = 2
    update_pooler_embed: bool = False  # ITC then uses the temporal encoder's per-frame [CLS]


@dataclass
class SingularityLossConfig:
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    mlm_prob: float = 0.5
    itm_hard_negatives: bool = True
    gather_negatives: bool = False  # official: negatives from the local batch only


@dataclass
class SingularityEvalConfig:
    num_frames_test: int = 4
    frame_ensemble: str = "concat"  # concat | mean | max | lse
    k_test: int = 128
    offload: bool = False  # keep evaluation features on the CPU


@dataclass
class SingularityQAConfig:
    decoder_layers: int = 3
    scoring: str = "faithful"  # faithful (official quirks) | corrected
    k_test: int = 128
    max_question_length: int = 25
    max_answer_length: int = 5


@dataclass
class SingularityInitConfig:
    """Local hub-format towers that initialise a model built without a checkpoint (nothing is downloaded):
    a BEiT/ViT model (e.g. beit-base-patch16-224-pt22k-ft22k) and a BERT (bert-base-uncased), each a folder
    with model.safetensors / pytorch_model.bin or one such file."""

    vision_weights: str | None = None
    text_weights: str | None = None


@dataclass
class SingularityConfig:
    family: str = FAMILY
    task: str = "retrieval"  # pretrain (ITC+ITM+MLM) | retrieval (ITC+ITM, also MC) | qa
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    text: SingularityTextConfig = field(default_factory=SingularityTextConfig)
    embed_dim: int = 256
    temp: float = 0.07
    num_frames: int = 1  # training frames = temporal embedding slots
    add_temporal_embed: bool = False
    temporal_vision_encoder: TemporalEncoderConfig = field(default_factory=TemporalEncoderConfig)
    losses: SingularityLossConfig = field(default_factory=SingularityLossConfig)
    eval: SingularityEvalConfig = field(default_factory=SingularityEvalConfig)
    qa: SingularityQAConfig = field(default_factory=SingularityQAConfig)
    init: SingularityInitConfig = field(default_factory=SingularityInitConfig)


# ---------------------------------------------------------------------------------------------------------
# BERT from transformers parts


def padding_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, L) 1/0 mask -> (N, 1, 1, L) additive bias: 0 where attended, -10000 where padded."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * MASK_FILL


def causal_padding_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, L) mask -> (N, 1, L, L) bias: a token sees itself and earlier unpadded tokens (decoder)."""
    length = mask.shape[1]
    causal = torch.ones(length, length, device=mask.device).tril()
    return (1.0 - (causal[None, None] * mask[:, None, None, :].to(causal.dtype)).to(dtype)) * MASK_FILL


# transformers BertConfig entries that size a BERT layer stack, shared by `model.text` and its config.json reader
BERT_SIZE_KEYS = (
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
)


def _bert_config(cfg: SingularityTextConfig | DictConfig, cross_attention: bool, hidden_size: int | None = None) -> Any:
    """A transformers BertConfig of the text sizes; `cross_attention` makes its layers cross-attend."""
    from transformers import BertConfig  # heavy import, only when a model is built

    sizes = {k: getattr(cfg, k) for k in (*BERT_SIZE_KEYS, "pad_token_id")}
    if hidden_size is not None:
        sizes["hidden_size"] = hidden_size
    bert = BertConfig(**sizes, is_decoder=cross_attention, add_cross_attention=cross_attention)
    bert._attn_implementation = cfg.attn_implementation
    return bert


def _run_layer(
    layer: nn.Module, hidden: Tensor, bias: Tensor | None, memory: Tensor | None, memory_bias: Tensor | None
) -> Tensor:
    """One transformers BertLayer (keyword call; older versions return a tuple)."""
    if memory is None:
        out = layer(hidden, attention_mask=bias)
    else:
        out = layer(hidden, attention_mask=bias, encoder_hidden_states=memory, encoder_attention_mask=memory_bias)
    return out[0] if isinstance(out, tuple) else out


class BertLayerStack(nn.Module):
    """`layer`: transformers BertLayers; those from `first_cross_layer` on cross-attend to a memory of
    width `memory_width` (the official `encoder_width`)."""

    def __init__(
        self,
        cfg: SingularityTextConfig | DictConfig,
        num_layers: int,
        first_cross_layer: int,
        memory_width: int,
        hidden_size: int | None = None,
    ):
        super().__init__()
        from transformers.models.bert.modeling_bert import BertLayer

        text_only, fused = _bert_config(cfg, False, hidden_size), _bert_config(cfg, True, hidden_size)
        self.layer = nn.ModuleList(BertLayer(fused if i >= first_cross_layer else text_only) for i in range(num_layers))
        for block in self.layer[first_cross_layer:]:
            cross = block.crossattention.self
            if memory_width != cross.key.in_features:
                cross.key = nn.Linear(memory_width, cross.key.out_features)
                cross.value = nn.Linear(memory_width, cross.value.out_features)

    def forward(
        self,
        hidden: Tensor,
        bias: Tensor | None = None,
        memory: Tensor | None = None,
        memory_bias: Tensor | None = None,
        start: int = 0,
        end: int | None = None,
    ) -> Tensor:
        for block in self.layer[start:end]:
            cross = hasattr(block, "crossattention")
            hidden = _run_layer(block, hidden, bias, memory if cross else None, memory_bias if cross else None)
        return hidden


class FusionBert(nn.Module):
    """BERT whose layers [0, fusion_layer) encode text and [fusion_layer, N) add cross-attention; `cls` is
    BERT's LM head (tied to the word embeddings) when the model needs one."""

    def __init__(
        self,
        cfg: SingularityTextConfig | DictConfig,
        num_layers: int,
        fusion_layer: int,
        memory_width: int,
        lm_head: bool,
    ):
        super().__init__()
        from transformers.models.bert.modeling_bert import BertEmbeddings, BertOnlyMLMHead

        if not 0 <= fusion_layer <= num_layers:
            raise ConfigError(f"text.fusion_layer {fusion_layer} must lie in [0, {num_layers}]")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ConfigError(
                f"text.hidden_size {cfg.hidden_size} is not divisible by num_attention_heads {cfg.num_attention_heads}"
            )
        self.fusion_layer = fusion_layer
        self.num_layers = num_layers
        self.embeddings = BertEmbeddings(_bert_config(cfg, False))
        self.encoder = BertLayerStack(cfg, num_layers, fusion_layer, memory_width)
        self.cls = BertOnlyMLMHead(_bert_config(cfg, False)) if lm_head else None
        if self.cls is not None:
            self.cls.predictions.decoder.weight = self.embeddings.word_embeddings.weight
            self.cls.predictions.decoder.bias = self.cls.predictions.bias

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.embeddings(input_ids=input_ids)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Layers [0, fusion_layer) on the tokens ('text' mode) -> (N, L, D)."""
        hidden = self.embed(input_ids)
        return self.encoder(hidden, padding_bias(attention_mask, hidden.dtype), end=self.fusion_layer)

    def fuse(
        self, text_states: Tensor, attention_mask: Tensor, memory: Tensor, memory_mask: Tensor | None = None
    ) -> Tensor:
        """Layers [fusion_layer, N) on text states, cross-attending to `memory` ('fusion' mode)."""
        return self.encoder(
            text_states,
            padding_bias(attention_mask, text_states.dtype),
            memory,
            padding_bias(memory_mask, memory.dtype) if memory_mask is not None else None,
            start=self.fusion_layer,
        )

    def encode_multimodal(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """All layers from the tokens ('multi_modal' mode); `causal` for the answer decoder."""
        hidden = self.embed(input_ids)
        bias = (
            causal_padding_bias(attention_mask, hidden.dtype) if causal else padding_bias(attention_mask, hidden.dtype)
        )
        memory_bias = padding_bias(memory_mask, memory.dtype) if memory_mask is not None else None
        return self.encoder(hidden, bias, memory, memory_bias)

    def lm_logits(self, states: Tensor) -> Tensor:
        if self.cls is None:
            raise ConfigError("this model has no LM head (task 'pretrain' or 'qa' has one)")
        return self.cls(states)


@torch.no_grad()
def init_bert_weights(module: nn.Module, std: float) -> None:
    """transformers' BERT init (the official `_init_transformer_weights`): N(0, std) weights, zero biases,
    unit LayerNorms, zero padding embedding."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=std)
            if sub.padding_idx is not None:
                sub.weight[sub.padding_idx].zero_()
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


# ---------------------------------------------------------------------------------------------------------
# The model


@dataclass
class VideoFeatures:
    """tokens (B, T, L, D): the per-frame cross-attention memory (temporal parts applied); pooled (B, T, D)
    per-frame ITC features, None in a QA model (no pooler)."""

    tokens: Tensor
    pooled: Tensor | None

    @property
    def memory(self) -> Tensor:
        """(B, T*L, D): all frames concatenated (the 'concat' ensemble)."""
        return self.tokens.flatten(1, 2)


TEXT_POOLINGS = ("cls", "mean")


def pool_text(states: Tensor, mask: Tensor, pooling: str = "cls") -> Tensor:
    """(N, L, D) text-layer states -> (N, D) ITC text feature: the [CLS] state (official), or the mean over
    the unpadded tokens, for text towers trained with mean pooling (e.g. all-MiniLM-L6-v2, whose [CLS] state
    barely depends on the sentence)."""
    if pooling == "cls":
        return states[:, 0]
    weights = mask.to(states.dtype)[..., None]
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@dataclass
class TextFeatures:
    """states (N, L, D) after the text layers, their mask (N, L); pooled = the ITC feature (`pool_text`)."""

    states: Tensor
    mask: Tensor
    pooling: str = "cls"

    @property
    def pooled(self) -> Tensor:
        return pool_text(self.states, self.mask, self.pooling)


def encode_across_time(encoder: nn.Module, tokens: Tensor) -> Tensor:
    """(B, T, L, D) -> (B, T, L, D): `encoder` attends across the T frames at each of the L token positions
    (Singularity-temporal's temporal vision encoder)."""
    batch, num_frames, length, width = tokens.shape
    across_time = encoder(tokens.transpose(1, 2).reshape(batch * length, num_frames, width))
    return across_time.view(batch, length, num_frames, width).transpose(1, 2).contiguous()


class Singularity(nn.Module):
    """See the module docstring. Build through `create_model` (configs `singularity-*`)."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        if cfg.task not in TASKS:
            raise ConfigError(f"singularity task must be one of {TASKS}, got {cfg.task!r}")
        if cfg.qa.scoring not in QA_SCORINGS:
            raise ConfigError(f"qa.scoring must be one of {QA_SCORINGS}, got {cfg.qa.scoring!r}")
        if cfg.text.pooling not in TEXT_POOLINGS:
            raise ConfigError(f"text.pooling must be one of {TEXT_POOLINGS}, got {cfg.text.pooling!r}")
        check_ensemble(cfg.eval.frame_ensemble)
        if cfg.num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {cfg.num_frames}")
        for name, value in (("embed_dim", cfg.embed_dim), ("text.max_length", cfg.text.max_length)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not 0.0 < cfg.losses.mlm_prob <= 1.0:
            raise ConfigError(f"losses.mlm_prob must be in (0, 1], got {cfg.losses.mlm_prob}")
        heads, width = cfg.text.num_attention_heads, cfg.vision.hidden_size
        if cfg.temporal_vision_encoder.enable and width % heads:
            raise ConfigError(
                f"temporal_vision_encoder: the vision width {width} is not a multiple of the text's {heads} attention heads "
                "(the temporal encoder is made of BERT layers of the text's sizes at the vision width, as officially)"
            )
        self.cfg = cfg
        vision_cfg = VisionTowerConfig(**OmegaConf.to_container(cfg.vision))  # type: ignore[arg-type]
        self.vision_encoder = VisionTower(vision_cfg, with_pooler=cfg.task != "qa")
        width = self.vision_width = vision_cfg.hidden_size
        self.vision_layernorm = nn.LayerNorm(width, eps=1e-12) if vision_cfg.arch == "beit" else None
        text = cfg.text
        self.text_encoder = FusionBert(
            text, text.num_hidden_layers, text.fusion_layer, width, lm_head=cfg.task == "pretrain"
        )
        self.temporal_embeddings = nn.Parameter(torch.zeros(1, cfg.num_frames, 1, width))
        self.temporal_vision_encoder = (
            BertLayerStack(
                text,
                cfg.temporal_vision_encoder.num_layers,
                cfg.temporal_vision_encoder.num_layers,
                width,
                hidden_size=width,
            )
            if cfg.temporal_vision_encoder.enable
            else None
        )
        if cfg.task == "qa":
            self.text_decoder: FusionBert | None = FusionBert(
                text, cfg.qa.decoder_layers, 0, text.hidden_size, lm_head=True
            )
        else:
            self.text_decoder = None
            self.vision_proj = nn.Linear(width, cfg.embed_dim)
            self.text_proj = nn.Linear(text.hidden_size, cfg.embed_dim)
            self.temp = nn.Parameter(torch.tensor(float(cfg.temp)))
            self.itm_head = nn.Linear(text.hidden_size, 2)

    def init_weights(self) -> None:
        """Random init as the official modules get it when no pretrained weights apply."""
        self.vision_encoder.init_weights()
        std = self.cfg.text.initializer_range
        for module in (self.text_encoder, self.temporal_vision_encoder, self.text_decoder):
            if module is not None:
                init_bert_weights(module, std)

    # -- vision ---------------------------------------------------------------------------------------

    def frame_features(self, video: Tensor) -> VideoFeatures:
        """(B, T, 3, H, W) -> every frame alone through the tower: tokens after `vision_layernorm`, pooled."""
        if video.dim() != 5:
            raise ModelInputError(f"video must be (B, T, C, H, W), got shape {tuple(video.shape)}")
        batch, num_frames = video.shape[:2]
        tokens, pooled = self.vision_encoder(video.flatten(0, 1))
        if self.vision_layernorm is not None:
            tokens = self.vision_layernorm(tokens)
        tokens = tokens.view(batch, num_frames, tokens.shape[1], self.vision_width)
        return VideoFeatures(tokens, pooled.view(batch, num_frames, -1) if pooled is not None else None)

    def temporal_embedding(self, num_frames: int) -> Tensor:
        """(1, num_frames, 1, D): the first `num_frames` slots, or all slots linearly interpolated to more."""
        table = self.temporal_embeddings
        if table.shape[1] >= num_frames:
            return table[:, :num_frames]
        along_time = table.squeeze(2).transpose(1, 2)  # (1, D, F)
        return F.interpolate(along_time, size=num_frames, mode="linear").transpose(1, 2).unsqueeze(2)

    def video_features(self, video: Tensor) -> VideoFeatures:
        """Frames, plus temporal embeddings and the temporal encoder when the model has them."""
        return self.add_time(self.frame_features(video))

    def add_time(self, frames: VideoFeatures) -> VideoFeatures:
        """The temporal parts over the tower's per-frame features (`frame_features`): temporal embeddings and the
        temporal encoder when the model has them. Apart from the tower so that a frozen tower's cached features can
        be trained on (`vidlab experiment singularity-direction`)."""
        tokens, pooled = frames.tokens, frames.pooled
        num_frames = tokens.shape[1]
        if self.cfg.add_temporal_embed:
            tokens = tokens + self.temporal_embedding(num_frames)
        if num_frames > 1 and self.temporal_vision_encoder is not None:
            tokens = encode_across_time(self.temporal_vision_encoder, tokens)
            if self.cfg.temporal_vision_encoder.update_pooler_embed:
                pooled = tokens[:, :, 0]
        return VideoFeatures(tokens, pooled)

    def encode_clips(self, video: Tensor, ensemble: str | None = None) -> tuple[Tensor, Tensor | None]:
        """Cross-attention memories of a frame ensemble (`vidlab.tasks.ensemble`): (B, C, M, D) and the
        per-frame pooled features (B, T, D). `concat`: one clip of all frames (temporal parts applied);
        mean/max/lse: each frame alone, which the official code allows for single-frame-trained models only."""
        ensemble = check_ensemble(ensemble or self.cfg.eval.frame_ensemble)
        if ensemble == "concat":
            video_features = self.video_features(video)
        else:
            if self.cfg.num_frames != 1:
                raise ConfigError(
                    f"frame ensemble {ensemble!r} scores frames one by one, which needs a single-frame-trained "
                    f"model (num_frames 1, this one has {self.cfg.num_frames}); use 'concat'"
                )
            video_features = self.frame_features(video)
        return clip_memories(video_features.tokens, ensemble), video_features.pooled

    # -- text, similarity, matching -------------------------------------------------------------------

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """(N, L) ids and mask -> text-layer states (their `text.pooling` is the text feature)."""
        return TextFeatures(self.text_encoder.encode_text(input_ids, attention_mask), attention_mask, self.cfg.text.pooling)

    def pooled_text(self, states: Tensor, mask: Tensor) -> Tensor:
        """The ITC text feature of stored text-layer states (N, L, D) and their mask (N, L)."""
        return pool_text(states, mask, self.cfg.text.pooling)

    def video_feat(self, pooled_video: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, E) normalised per-frame ITC features."""
        return F.normalize(self.vision_proj(pooled_video), dim=-1)

    def text_feat(self, pooled_text: Tensor) -> Tensor:
        """(N, D) -> (N, E) normalised ITC features."""
        return F.normalize(self.text_proj(pooled_text), dim=-1)

    def similarity(self, pooled_video: Tensor, pooled_text: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
        """(B, N) ITC scores: mean over frames of cosine similarities, / temperature (evaluation uses 1)."""
        return frame_mean_similarity(self.video_feat(pooled_video), self.text_feat(pooled_text), temperature)

    def fuse(self, text_states: Tensor, text_mask: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        """Fusion layers: text states (N, L, D) cross-attending to memories (N, M, D) -> (N, L, D)."""
        return self.text_encoder.fuse(text_states, text_mask, memory, memory_mask)

    def itm_logits(
        self, text_states: Tensor, text_mask: Tensor, memory: Tensor, memory_mask: Tensor | None = None
    ) -> Tensor:
        """(N, 2) match logits of aligned (text, video memory) pairs; column 1 is the ITM score."""
        return self.itm_head(self.fuse(text_states, text_mask, memory, memory_mask)[:, 0])

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        self.temp.clamp_(*TEMP_RANGE)

    def encode_video(self, video: Tensor, normalize: bool = False) -> Tensor:
        """(B, T, 3, H, W) -> (B, E): the mean over frames of the normalised per-frame ITC features (frames as
        `eval.frame_ensemble` takes them), so that its inner product with `encode_text` is the ITC score of
        `similarity`; `normalize` rescales it to unit length (no change for one frame)."""
        pooled = self.encode_clips(video)[1]
        if pooled is None:
            raise ModelInputError("this model has no ITC features (a QA model has no pooler)")
        embeds = self.video_feat(pooled).mean(dim=1)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None, normalize: bool = False) -> Tensor:
        """(N, L) -> (N, E) ITC text features, unit vectors whatever `normalize` says."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.text_feat(self.text_features(input_ids, mask).pooled)

    def forward(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The contrastive features: (B, T, E) per-frame video features and (N, E) text features, normalised.
        Training losses are `vidlab.losses.singularity`'s; scoring, the methods above."""
        video_features = self.video_features(video)
        return self.video_feat(video_features.pooled), self.text_feat(self.text_features(input_ids, attention_mask).pooled)

    # -- QA -------------------------------------------------------------------------------------------

    def _decoder(self) -> FusionBert:
        if self.text_decoder is None:
            raise ConfigError("this model has no answer decoder (task 'qa')")
        return self.text_decoder

    def question_states(self, memory: Tensor, question_ids: Tensor, question_mask: Tensor) -> Tensor:
        """Question (Q, Lq) through all text layers, cross-attending to video memories (Q, M, D) -> (Q, Lq, D)."""
        return self.text_encoder.encode_multimodal(question_ids, question_mask, memory)

    def decoder_logits(
        self, question_states: Tensor, question_mask: Tensor, answer_ids: Tensor, answer_mask: Tensor
    ) -> Tensor:
        """(n, La, vocab) teacher-forced answer-decoder logits for aligned (question, answer) pairs."""
        decoder = self._decoder()
        states = decoder.encode_multimodal(answer_ids, answer_mask, question_states, question_mask, causal=True)
        return decoder.lm_logits(states)

    def answer_start_logits(self, question_states: Tensor, question_mask: Tensor, start_ids: Tensor) -> Tensor:
        """(Q, vocab) logits of the first answer token after the start token `start_ids` (Q, 1)."""
        return self.decoder_logits(question_states, question_mask, start_ids, torch.ones_like(start_ids))[:, 0]

    def answer_nll(
        self, question_states: Tensor, question_mask: Tensor, answer_ids: Tensor, answer_mask: Tensor
    ) -> Tensor:
        """(n,) summed next-token cross-entropy of each answer (tokens after the start, [SEP] included, pads
        ignored): the official decoder loss with reduction='none'."""
        logits = self.decoder_logits(question_states, question_mask, answer_ids, answer_mask)[:, :-1]
        targets = answer_ids[:, 1:].masked_fill(answer_ids[:, 1:] == self.cfg.text.pad_token_id, -100)
        token_nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return token_nll.sum(dim=1)


def build_singularity(cfg: DictConfig, init_weights: bool = True) -> Singularity:
    """Build from a typed config; `init_weights` draws the official random init, then loads the `init`
    towers (all skipped when a checkpoint follows)."""
    model = Singularity(cfg)
    if init_weights:
        model.init_weights()
        for report in load_tower_weights(model, cfg.init.vision_weights, cfg.init.text_weights):
            logger.info("%s", report.format())
    return model


register_family(
    ModelFamily(
        name=FAMILY,
        config_class=SingularityConfig,
        build=build_singularity,
        adapt_state_dict=adapt_singularity_state_dict,
        size_keys=("vision.*", *(f"text.{key}" for key in (*BERT_SIZE_KEYS, "num_hidden_layers", "fusion_layer")), "embed_dim"),
        allowed_missing=singularity_allowed_missing,
    )
)

__all__ = [
    "Singularity",
    "SingularityConfig",
    "SingularityTextConfig",
    "TemporalEncoderConfig",
    "SingularityLossConfig",
    "SingularityEvalConfig",
    "SingularityQAConfig",
    "SingularityInitConfig",
    "FusionBert",
    "BertLayerStack",
    "VideoFeatures",
    "TextFeatures",
    "build_singularity",
    "init_bert_weights",
    "pool_text",
    "padding_bias",
    "causal_padding_bias",
]
