"""Text towers built from Hugging Face transformers configs (never downloaded: weights come from checkpoints).

FiT's pooling rule: DistilBERT-style towers use the hidden state at the [CLS] position
(`last_hidden_state[:, 0]`), BERT-style towers use `pooler_output` (tanh dense over [CLS]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from vidlab.errors import ConfigError

POOLINGS = ("cls", "pooler")

# transformers config arguments of the hub checkpoints the official recipes name (the `config.json` of
# each), so that official configs translate without a download.
_DISTILBERT_BASE: dict[str, Any] = {
    "max_position_embeddings": 512,
    "dim": 768,
    "n_layers": 6,
    "n_heads": 12,
    "hidden_dim": 3072,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation": "gelu",
    "sinusoidal_pos_embds": False,
    "pad_token_id": 0,
}
_BERT_BASE: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "pad_token_id": 0,
}
HUB_TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "distilbert-base-uncased": {**_DISTILBERT_BASE, "vocab_size": 30522},
    "distilbert-base-cased": {**_DISTILBERT_BASE, "vocab_size": 28996},
    "bert-base-uncased": {**_BERT_BASE, "vocab_size": 30522},
    "bert-base-cased": {**_BERT_BASE, "vocab_size": 28996},
}


@dataclass
class TextTowerConfig:
    """`arch` is a transformers model_type; `hf_config` the keyword arguments of its config class."""

    arch: str = "distilbert"
    pooling: str = "cls"
    attn_implementation: str = "sdpa"
    hf_config: dict[str, Any] = field(default_factory=dict)


class HFTextTower(nn.Module):
    """A transformers encoder (`backbone`) plus the pooling that turns its output into one vector per text."""

    def __init__(
        self,
        arch: str = "distilbert",
        pooling: str = "cls",
        attn_implementation: str = "sdpa",
        hf_config: dict[str, Any] | None = None,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModel  # heavy import, only when a text tower is built

        if pooling not in POOLINGS:
            raise ConfigError(f"text.pooling must be one of {POOLINGS}, got {pooling!r}")
        try:
            config = AutoConfig.for_model(arch, **(hf_config or {}))
        except ValueError as e:
            raise ConfigError(f"text.arch {arch!r}: {e}") from None
        self.pooling = pooling
        self.backbone = AutoModel.from_config(config, attn_implementation=attn_implementation)
        if pooling == "pooler" and getattr(self.backbone, "pooler", None) is None:
            raise ConfigError(f"text.pooling 'pooler' needs a model with a pooler; {arch!r} has none")
        self.hidden_size: int = config.hidden_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) token ids and 0/1 mask -> (B, hidden_size)."""
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return output.pooler_output
        return output.last_hidden_state[:, 0]
