"""CLIP (Radford et al., 2021): a ViT image tower and a causal text tower projected into one embedding space.

Semantics follow OpenAI's `clip/model.py`, so that its weights reproduce its outputs:

- image: bias-free patch convolution, a class token, a learned positional embedding and `ln_pre`, then
  pre-LN blocks (fused q/k/v attention, QuickGELU MLP); `ln_post` on the class token, then `@ proj`;
- text: token + positional embedding, the same blocks under a causal mask, `ln_final`, the token at
  `token_ids.argmax(-1)` (the end-of-text token has the highest id in CLIP's vocabulary), then `@ proj`;
- logits: `exp(logit_scale) * cos(image, text)` (+ `logit_bias` for open_clip models trained with one);
- every LayerNorm computes in float32 and casts back, so a tower whose Linear weights are cast to
  fp16/bf16 (EVL's frozen backbone) keeps float32 normalisation, as the official code does.

The text tower takes token ids, never strings: vidlab ships no BPE vocabulary (callers pass a tokenizer,
see `vidlab.tasks.zero_shot`). Weight files of every CLIP format are read in `vidlab.models.clip_weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.attention import MultiHeadSelfAttention
from vidlab.models.errors import ModelInputError
from vidlab.models.factory import ModelFamily, register_family
from vidlab.models.layers import Mlp, QuickGELU

FAMILY = "clip"
HEAD_WIDTH = 64  # OpenAI's rule for the head count of a tower: width // 64


@dataclass
class CLIPVisionConfig:
    """ViT image tower sizes (defaults: ViT-B/16 at 224 px)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0


@dataclass
class CLIPTextConfig:
    """Causal text transformer sizes (defaults: OpenAI's 77-token, 49408-word tower of ViT-B models)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0


@dataclass
class CLIPConfig:
    family: str = FAMILY
    embed_dim: int = 512
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    logit_bias: bool = False  # open_clip models trained with a learned bias on the logits


@dataclass
class BlockFeatures:
    """One block's output as EVL consumes it: the residual stream after the block and the attention q/k.

    `tokens` is (B, L, D); `query` and `key` are (B, heads, L, head_dim), projected but not scaled.
    """

    tokens: Tensor
    query: Tensor
    key: Tensor


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (CLIP's LayerNorm subclass)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); QuickGELU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = LayerNormFp32(width)
        self.attn = MultiHeadSelfAttention(width, heads)
        self.norm2 = LayerNormFp32(width)
        self.mlp = Mlp(width, round(width * mlp_ratio), act_layer=QuickGELU)

    def forward(self, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        return self.forward_with_qk(tokens, attn_mask).tokens

    def forward_with_qk(self, tokens: Tensor, attn_mask: Tensor | None = None) -> BlockFeatures:
        """The block's output together with the query and key its attention used."""
        query, key, value = self.attn.project_qkv(self.norm1(tokens))
        tokens = tokens + self.attn.project_out(self.attn.attend(query, key, value, attn_mask))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return BlockFeatures(tokens, query, key)

    @torch.no_grad()
    def init_weights(self, attn_std: float, proj_std: float, fc_std: float) -> None:
        """OpenAI's text-tower init: normal q/k/v, output and MLP weights scaled for the depth; zero biases."""
        for linear, std in ((self.attn.qkv, attn_std), (self.attn.proj, proj_std), (self.mlp.fc1, fc_std)):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)
        nn.init.normal_(self.mlp.fc2.weight, std=proj_std)
        nn.init.zeros_(self.mlp.fc2.bias)


def _init_blocks(blocks: nn.ModuleList, width: int) -> None:
    attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * len(blocks)) ** -0.5, (2 * width) ** -0.5
    for block in blocks:
        block.init_weights(attn_std, proj_std, fc_std)


class CLIPVisionTower(nn.Module):
    """CLIP's ViT over (B, 3, H, W) normalised images.

    `embed_dim=None` builds the tower without `ln_post`/`proj` (EVL uses only the blocks' outputs);
    `patch_bias=True` gives the patch embedding a bias (EVL's Linear patch embedding has one, zero for
    CLIP weights).
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        embed_dim: int | None = 512,
        patch_bias: bool = False,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ModelInputError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.width = width
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(width))
        self.pos_embed = nn.Parameter(torch.zeros(1 + self.grid_size**2, width))
        self.ln_pre = LayerNormFp32(width)
        self.blocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_post = LayerNormFp32(width) if embed_dim is not None else None
        self.proj = nn.Parameter(torch.zeros(width, embed_dim)) if embed_dim is not None else None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        scale = self.width**-0.5
        nn.init.normal_(self.cls_token, std=scale)
        nn.init.normal_(self.pos_embed, std=scale)
        if self.proj is not None:
            nn.init.normal_(self.proj, std=scale)
        if self.patch_embed.bias is not None:
            nn.init.zeros_(self.patch_embed.bias)
        _init_blocks(self.blocks, self.width)

    def embed_tokens(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + grid^2, width): patches, class token, positional embedding, `ln_pre`."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.image_size, self.image_size):
            raise ModelInputError(
                f"images must be (B, 3, {self.image_size}, {self.image_size}), got shape {tuple(images.shape)}"
            )
        dtype = self.patch_embed.weight.dtype
        patches = self.patch_embed(images.to(dtype)).flatten(2).transpose(1, 2)
        cls = self.cls_token.to(dtype).expand(patches.shape[0], 1, -1)
        return self.ln_pre(torch.cat([cls, patches], dim=1) + self.pos_embed.to(dtype))

    def block_features(self, images: Tensor, last: int | None = None) -> list[BlockFeatures]:
        """Residual stream and attention q/k of the last `last` blocks (all blocks when None), in order."""
        depth = len(self.blocks)
        last = depth if last is None else last
        if not 1 <= last <= depth:
            raise ModelInputError(f"asked for the last {last} blocks of a {depth}-block tower")
        tokens = self.embed_tokens(images)
        features = []
        for index, block in enumerate(self.blocks):
            if index < depth - last:
                tokens = block(tokens)
            else:
                features.append(block.forward_with_qk(tokens))
                tokens = features[-1].tokens
        return features

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + grid^2, width) after the last block (no `ln_post`)."""
        tokens = self.embed_tokens(images)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def pooled(self, images: Tensor) -> Tensor:
        """`ln_post` of the class token, (B, width): the feature before the projection."""
        if self.ln_post is None:
            raise ModelInputError("this vision tower was built without ln_post/proj (embed_dim=None)")
        return self.ln_post(self.forward_features(images)[:, 0])

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, embed_dim), not normalised."""
        return self.pooled(images) @ self.proj


class CLIPTextTower(nn.Module):
    """CLIP's causal text transformer over (B, L) token ids, L <= context_length."""

    def __init__(
        self,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        embed_dim: int = 512,
    ):
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(context_length, width))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_final = LayerNormFp32(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        nn.init.normal_(self.proj, std=self.width**-0.5)
        _init_blocks(self.blocks, self.width)

    def _check_ids(self, token_ids: Tensor) -> None:
        if token_ids.dim() != 2 or token_ids.dtype not in (torch.int64, torch.int32):
            raise ModelInputError(f"token_ids must be (B, L) integers, got {token_ids.dtype} {tuple(token_ids.shape)}")
        if token_ids.shape[1] > self.context_length:
            raise ModelInputError(f"{token_ids.shape[1]} tokens given, the context holds {self.context_length}")
        if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= self.vocab_size):
            raise ModelInputError(f"token ids must lie in [0, {self.vocab_size}), the vocabulary size")

    def forward_features(self, token_ids: Tensor) -> Tensor:
        """(B, L) ids -> (B, L, width) after `ln_final`."""
        self._check_ids(token_ids)
        length = token_ids.shape[1]
        tokens = self.token_embedding(token_ids) + self.pos_embed[:length]
        causal = torch.ones(length, length, dtype=torch.bool, device=token_ids.device).tril()
        for block in self.blocks:
            tokens = block(tokens, causal)
        return self.ln_final(tokens)

    def forward(self, token_ids: Tensor) -> Tensor:
        """(B, L) ids -> (B, embed_dim) at each text's end-of-text token (its highest id), not normalised."""
        tokens = self.forward_features(token_ids)
        pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), token_ids.argmax(-1)]
        return pooled @ self.proj


class CLIP(nn.Module):
    """Image and text towers with CLIP's learned temperature: `encode_image`, `encode_video` (frames' mean),
    `encode_text` (a `vidlab.models.interface.VideoTextModel`), `forward` -> logits."""

    def __init__(self, visual: CLIPVisionTower, text: CLIPTextTower, logit_bias: bool = False):
        super().__init__()
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.zeros(())) if logit_bias else None

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, embed_dim), not normalised."""
        return self.visual(images)

    def encode_video(self, video: Tensor, normalize: bool = False) -> Tensor:
        """(B, T, 3, H, W) frames -> (B, embed_dim): the mean of the frames' normalised embeddings, the usual CLIP
        video embedding (`normalize`: to unit length, as zero-shot classification scores it)."""
        if video.dim() != 5:
            raise ModelInputError(f"video must be (B, T, 3, H, W), got shape {tuple(video.shape)}")
        frame_embeds = F.normalize(self.encode_image(video.flatten(0, 1)), dim=-1)
        embeds = frame_embeds.view(*video.shape[:2], -1).mean(dim=1)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(self, token_ids: Tensor, attention_mask: Tensor | None = None, normalize: bool = False) -> Tensor:
        """(B, L) token ids (CLIP's BPE, end-of-text = highest id) -> (B, embed_dim). The text is pooled at its
        end marker, so `attention_mask` (the interface's) changes nothing."""
        embeds = self.text(token_ids)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def similarity_logits(self, image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """(N_images, N_texts) = exp(logit_scale) * cosine similarity (+ logit_bias)."""
        logits = self.logit_scale.exp() * F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T
        return logits + self.logit_bias if self.logit_bias is not None else logits

    def forward(self, images: Tensor, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(logits_per_image, logits_per_text), as OpenAI's `CLIP.forward`."""
        logits_per_image = self.similarity_logits(self.encode_image(images), self.encode_text(token_ids))
        return logits_per_image, logits_per_image.T


VISION_TOWER_KEYS = ("image_size", "patch_size", "width", "layers", "heads", "mlp_ratio")


def vision_tower_kwargs(vision: DictConfig | CLIPVisionConfig) -> dict[str, Any]:
    """`CLIPVisionTower` sizes of a vision config (the shared part of the CLIP and EVL configs)."""
    return {key: getattr(vision, key) for key in VISION_TOWER_KEYS}


def build_clip(cfg: DictConfig, init_weights: bool = True) -> CLIP:
    """Build from a typed CLIP config with OpenAI's random init (pretrained weights come as a checkpoint).

    `init_weights` is part of the family interface; CLIP has no separate pretrained initialisation.
    """
    if cfg.embed_dim < 1:
        raise ConfigError(f"embed_dim must be >= 1, got {cfg.embed_dim}")
    text: dict[str, Any] = OmegaConf.to_container(cfg.text)  # type: ignore[assignment]
    return CLIP(
        CLIPVisionTower(**vision_tower_kwargs(cfg.vision), embed_dim=cfg.embed_dim),
        CLIPTextTower(**text, embed_dim=cfg.embed_dim),
        logit_bias=cfg.logit_bias,
    )


def unchanged_state_dict(cfg: DictConfig, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """The family adapter of CLIP and EVL: checkpoints load as they are, so another resolution, context
    length or frame count is a strict-load error rather than a silent interpolation."""
    return tensors, []


register_family(
    ModelFamily(name=FAMILY, config_class=CLIPConfig, build=build_clip, adapt_state_dict=unchanged_state_dict)
)

__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIPVisionConfig",
    "CLIPTextConfig",
    "CLIPVisionTower",
    "CLIPTextTower",
    "BlockFeatures",
    "LayerNormFp32",
    "ResidualAttentionBlock",
    "build_clip",
    "unchanged_state_dict",
    "vision_tower_kwargs",
    "HEAD_WIDTH",
]
