"""Zero-shot classification with CLIP from class-name prompts: the baseline a video model has to beat.

Each class is described by filling its name into prompt templates ("a photo of a {}."); its embedding is
the mean of the L2-normalised prompt embeddings, normalised again (CLIP's prompt ensembling). An image
is scored by `exp(logit_scale) * cosine(image, class)`; a video by the same with the mean of its frames'
normalised embeddings. Scores go to `vidlab.tasks.classification.accuracy` like any classifier's.

vidlab ships no BPE vocabulary, so the tokenizer is an argument: any callable mapping a list of strings
to a (N, L) integer tensor in CLIP's conventions (start/end-of-text tokens, end-of-text = highest id,
L <= the model's context length), e.g. a wrapped open_clip or Hugging Face CLIP tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.clip import CLIP
from vidlab.models.errors import ModelInputError

Tokenizer = Callable[[Sequence[str]], Tensor]
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def _prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    if not class_names:
        raise ConfigError("zero-shot classification needs at least one class name")
    if not templates:
        raise ConfigError("zero-shot classification needs at least one prompt template")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ConfigError(f"prompt templates must hold exactly one '{{}}' for the class name: {bad}")
    return [template.format(name) for name in class_names for template in templates]


def _tokenize(tokenizer: Tokenizer, prompts: list[str]) -> Tensor:
    token_ids = tokenizer(prompts)
    if not isinstance(token_ids, Tensor) or token_ids.dim() != 2 or token_ids.shape[0] != len(prompts):
        shape = tuple(token_ids.shape) if isinstance(token_ids, Tensor) else type(token_ids).__name__
        raise ModelInputError(f"the tokenizer must return a ({len(prompts)}, L) tensor of token ids, got {shape}")
    return token_ids.long()


@torch.no_grad()
def class_embeddings(
    model: CLIP,
    class_names: Sequence[str],
    tokenizer: Tokenizer,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
) -> Tensor:
    """(num_classes, embed_dim) unit vectors: per class, the normalised mean of its normalised prompt embeddings."""
    prompts = _prompts(class_names, templates)
    device = model.logit_scale.device
    prompt_embeds = torch.cat(
        [
            F.normalize(model.encode_text(_tokenize(tokenizer, prompts[start : start + batch_size]).to(device)), dim=-1)
            for start in range(0, len(prompts), batch_size)
        ]
    )
    per_class = prompt_embeds.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


class ZeroShotClassifier(nn.Module):
    """A CLIP model and fixed class embeddings: `forward(images or video) -> (B, num_classes)` logits."""

    def __init__(
        self,
        model: CLIP,
        class_names: Sequence[str],
        tokenizer: Tokenizer,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
    ):
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        self.register_buffer("class_embeds", class_embeddings(model, class_names, tokenizer, templates))

    def forward(self, inputs: Tensor) -> Tensor:
        """(B, 3, H, W) images or (B, T, 3, H, W) videos -> exp(logit_scale) * cosine to each class."""
        if inputs.dim() == 5:
            embeds = self.model.encode_video(inputs, normalize=True)
        else:
            embeds = F.normalize(self.model.encode_image(inputs), dim=-1)
        return self.model.logit_scale.exp() * embeds @ self.class_embeds.T


__all__ = ["Tokenizer", "DEFAULT_TEMPLATES", "class_embeddings", "ZeroShotClassifier"]
