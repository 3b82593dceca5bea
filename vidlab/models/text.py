"""Text towers built from Hugging Face transformers configs, and their tokenizers and weights from local folders
or installed packages (never downloaded): what every recipe with a text tower uses.

FiT's pooling rule: DistilBERT-style towers use the hidden state at the [CLS] position
(`last_hidden_state[:, 0]`), BERT-style towers use `pooler_output` (tanh dense over [CLS]).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.checkpoint import KeyMap, load_state_dict_strict, read_safetensors

log = logging.getLogger(__name__)

POOLINGS = ("cls", "pooler")

# FiT's pooling rule: `pooler_output` for bert*, the [CLS] hidden state for distilbert*.
FIT_POOLING = {"bert": "pooler", "distilbert": "cls"}
# config.json entries that describe the file, not the architecture
_HF_META_KEYS = ("architectures", "_name_or_path", "transformers_version", "model_type", "torch_dtype", "dtype", "gradient_checkpointing", "use_cache")
# A transformers encoder file -> the tower's backbone: drop a task wrapper's prefix and heads.
TEXT_WEIGHTS_KEY_MAP = KeyMap(
    rules=((r"(?:bert\.|distilbert\.)?(.+)", r"\1"),),
    ignore=(r"(?:bert\.|distilbert\.)?embeddings\.(position_ids|token_type_ids)", r"(cls|vocab_\w+|qa_outputs|classifier)\..+"),
)

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


# ---------------------------------------------------------------------------------------------------------
# Local folders and installed packages only: vidlab never downloads from a model hub


def resolve_model_folder(spec: str, what: str) -> Path:
    """A local folder, or the folder of model files inside an installed Python package (the package
    directory itself or one level below it)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    module = spec.replace("-", "_")
    found = importlib.util.find_spec(module) if module.isidentifier() else None
    if found is not None and found.submodule_search_locations:
        package_dir = Path(next(iter(found.submodule_search_locations)))
        for candidate in [package_dir, *sorted(p for p in package_dir.iterdir() if p.is_dir())]:
            if any((candidate / f).is_file() for f in ("config.json", "tokenizer_config.json", "vocab.txt")):
                return candidate
    raise ConfigError(
        f"{what}: {spec!r} is neither a local folder nor an installed Python package holding model files "
        "(vidlab never downloads from a model hub)"
    )


def load_tokenizer(spec: str) -> Any:
    """A transformers tokenizer from local files only. Batches are tokenized in the loader workers, so
    the tokenizer's own thread pool is switched off (it would deadlock after the fork)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    folder = resolve_model_folder(spec, "text.tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"text.tokenizer: cannot load a tokenizer from {folder}: {e}") from None


def text_tower_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """(transformers model_type, its config arguments) from a folder's config.json."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"text.weights: {folder} has no config.json")
    hf = json.loads(config_file.read_text())
    arch = hf.get("model_type")
    if arch not in FIT_POOLING:
        raise ConfigError(f"text.weights: {config_file} is a {arch!r} model; a text tower takes {', '.join(FIT_POOLING)}")
    return arch, {k: v for k, v in hf.items() if k not in _HF_META_KEYS}


def load_text_weights(backbone: nn.Module, folder: Path) -> None:
    """The folder's model.safetensors into the tower's transformers backbone, strictly."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"text.weights: {folder} has no model.safetensors")
    report = load_state_dict_strict(backbone, TEXT_WEIGHTS_KEY_MAP.apply(read_safetensors(weights)), str(weights))
    log.info("%s", report.format())


class Tokenize:
    """Tokenizer call shared by the collate functions: (ids, mask) of texts."""

    def __init__(self, tokenizer: Any, max_length: int, fixed_length: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding: bool | str = "max_length" if fixed_length else True

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        tokens = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt")
        return tokens["input_ids"], tokens["attention_mask"]
