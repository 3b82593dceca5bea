"""The HowTo100M word2vec text tower (MIL-NCE's, reused by video-text GDT) and its tokenisation.

- Files: `word2vec.pth` is a `torch.save`d (vocabulary + 1, 300) float tensor (row 0 = padding, random like
  the others); `dict.npy` a numpy array of the vocabulary's words, word i having token id i + 1. Both are
  read without running pickled code (`weights_only=True`, `allow_pickle=False`).
- Tokenisation (`Word2VecTokenizer`, the official `HT100M_Dataset.words_to_ids`): the words are
  `re.findall(r"[\\w']+")` of the sentence, case kept; unknown words are dropped; the known ids are truncated
  or zero-padded to `max_words` (20 in the dataset). A word listed twice in the vocabulary gets its last id.
- Encoder (`Word2VecTextEncoder`, the official `Text_Encoder`): frozen embedding -> Linear(300, 2048) -> ReLU
  -> max over ALL word positions, padding included (the official code masks nothing, so a padded sentence's
  max also sees relu(fc(row 0))).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from vidlab.errors import ConfigError

_WORD = re.compile(r"[\w']+")


def read_word2vec(path: str | Path) -> Tensor:
    """The (num_words + 1, dim) matrix of a word2vec.pth file."""
    try:
        matrix = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"text.word2vec: no such file {str(path)!r}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure: not a plain tensor file
        raise ConfigError(f"text.word2vec: {path} is not a saved tensor ({type(e).__name__})") from None
    if not isinstance(matrix, Tensor) or matrix.dim() != 2:
        raise ConfigError(f"text.word2vec: {path} does not hold a 2-D tensor")
    return matrix.float()


def read_vocabulary(path: str | Path) -> list[str]:
    """The words of a dict.npy file, in file order (word i -> token id i + 1)."""
    try:
        words = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"text.vocabulary: no such file {str(path)!r}") from None
    except ValueError as e:
        raise ConfigError(f"text.vocabulary: {path} is not a plain numpy array of words ({e})") from None
    return [str(w) for w in words.reshape(-1)]


class Word2VecTokenizer:
    """Sentences -> (N, max_words) int64 ids, the official HowTo100M tokenisation."""

    def __init__(self, words: Iterable[str], max_words: int = 20):
        if max_words < 1:
            raise ConfigError(f"text.max_words must be >= 1, got {max_words}")
        self.word_to_id = {word: index + 1 for index, word in enumerate(words)}
        self.max_words = max_words

    @classmethod
    def from_file(cls, path: str | Path, max_words: int = 20) -> Word2VecTokenizer:
        return cls(read_vocabulary(path), max_words)

    def ids(self, sentence: str) -> Tensor:
        known = [self.word_to_id[w] for w in _WORD.findall(str(sentence)) if w in self.word_to_id][: self.max_words]
        out = torch.zeros(self.max_words, dtype=torch.long)
        out[: len(known)] = torch.tensor(known, dtype=torch.long)
        return out

    def __call__(self, sentences: Sequence[str]) -> Tensor:
        return torch.stack([self.ids(s) for s in sentences]) if sentences else torch.zeros(0, self.max_words, dtype=torch.long)


class Word2VecTextEncoder(nn.Module):
    """(N, L) ids -> (N, output_dim): frozen word vectors, Linear + ReLU, max over the L positions."""

    def __init__(self, vocab_size: int, word_dim: int = 300, output_dim: int = 2048):
        super().__init__()
        self.word_embedding = nn.Embedding(vocab_size, word_dim)
        self.word_embedding.weight.requires_grad_(False)  # official: from_pretrained (frozen) and no_grad
        self.fc = nn.Linear(word_dim, output_dim)

    @torch.no_grad()
    def load_word_vectors(self, matrix: Tensor) -> None:
        if tuple(matrix.shape) != tuple(self.word_embedding.weight.shape):
            rows, dim = self.word_embedding.weight.shape
            raise ConfigError(
                f"text.word2vec holds a {tuple(matrix.shape)} matrix, the model expects ({rows}, {dim}): "
                f"set text.vocab_size={matrix.shape[0]} text.word_dim={matrix.shape[1]}"
            )
        self.word_embedding.weight.copy_(matrix)

    def forward(self, ids: Tensor) -> Tensor:
        with torch.no_grad():
            words = self.word_embedding(ids)
        return torch.relu(self.fc(words)).max(dim=1).values


__all__ = ["Word2VecTextEncoder", "Word2VecTokenizer", "read_vocabulary", "read_word2vec"]
