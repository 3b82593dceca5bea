"""Small building blocks shared by the transformer models (MLP, activations, stochastic depth, the check of
their drop rates)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from vidlab.errors import ConfigError


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI CLIP was trained with (and EVL's decoder reuses)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout (the ViT MLP; parameter names as in timm).

    `out_drop` sets the dropout after fc2 separately (None: same as `drop`); EVL's decoder drops only
    the hidden activations.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        drop: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        out_drop: float | None = None,
    ):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)
        self.out_drop = nn.Dropout(drop if out_drop is None else out_drop)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out_drop(self.fc2(self.drop(self.act(self.fc1(tokens)))))


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability `drop_prob` (training only)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, branch: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return branch
        keep_prob = 1.0 - self.drop_prob
        keep = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep_prob)
        return branch * keep / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def check_drop_rates(rates: Mapping[str, float]) -> None:
    """ConfigError for the first dropout / stochastic-depth rate (config name -> value) outside [0, 1): a rate of
    1 or more drops everything and its rescaling divides by zero."""
    for name, rate in rates.items():
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {rate}")
