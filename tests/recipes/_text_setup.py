"""A tiny BERT text tower and tokenizer made from ShapesBench's own words, shared by the recipe setups
(a real pretrained tower would be far too big for a few CPU steps per test)."""

from __future__ import annotations

import json
import re
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def shapesbench_words(shapes_root: Path, qa: bool = False) -> set[str]:
    """Every lower-cased word and punctuation mark of the captions; with `qa`, of the questions, answers
    and the answer list too (the QA tasks tokenize them)."""
    texts: list[str] = []
    for annotation in (shapes_root / "annotations").glob("*.json"):
        content = json.loads(annotation.read_text())
        for entry in content if isinstance(content, list) else []:
            if isinstance(entry, dict):
                texts.extend(str(caption) for caption in entry.get("caption", []))
                if qa:
                    texts.extend(str(entry[key]) for key in ("question", "answer") if key in entry)
            elif qa and isinstance(entry, str):  # the answer list
                texts.append(entry)
    return {word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())}


def make_text_folder(
    shapes_root: Path, out: Path, layers: int = 1, width: int = 32, dropout: float = 0.1, qa: bool = False
) -> Path:
    """A transformers folder (config.json, model.safetensors, tokenizer files) of a seeded BERT with 2 heads
    whose vocabulary is `shapesbench_words(shapes_root, qa)`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = SPECIAL_TOKENS + sorted(shapesbench_words(shapes_root, qa))
    out.mkdir(parents=True, exist_ok=True)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(out)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    return out
