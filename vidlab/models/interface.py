"""What every model answers, whatever its family: the contract evaluations and the inference commands type against.

- A **video-text model** (Frozen in Time, Singularity, CLIP) embeds videos and texts into one space:
  `encode_video(video, normalize=False)` and `encode_text(input_ids, attention_mask=None, normalize=False)`,
  open_clip's convention. With `normalize=True` the text embeddings are unit vectors and the inner product of
  a text with a video embedding is the model's retrieval score (a cosine; for Singularity the mean over frames
  of per-frame cosines, exactly when `encode_video` is left unnormalised).
- A **video classifier** (EVL; VIMPAC and GDT fine-tuned next) follows timm: `forward_features(video)` ->
  (B, C) pooled features, `forward_head(features)` -> (B, num_classes) logits, `forward` = both.

Videos are (B, T, 3, H, W) frames normalised as the model's transform does; token ids and masks are (N, L).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class VideoTextModel(Protocol):
    def encode_video(self, video: Tensor, normalize: bool = False) -> Tensor:
        """(B, T, 3, H, W) -> (B, E)."""
        ...

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None, normalize: bool = False) -> Tensor:
        """(N, L) token ids and mask (None: every token is text) -> (N, E)."""
        ...


@runtime_checkable
class VideoClassifier(Protocol):
    def forward_features(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> (B, C) pooled features, before the head."""
        ...

    def forward_head(self, features: Tensor) -> Tensor:
        """(B, C) -> (B, num_classes) logits."""
        ...


__all__ = ["VideoClassifier", "VideoTextModel"]
