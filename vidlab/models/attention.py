"""Multi-head attention shared by every vidlab model, on `torch.nn.functional.scaled_dot_product_attention`.

All attention in vidlab goes through `attend`, so the kernel (flash / memory-efficient / math) is chosen
by PyTorch in one place. Tensors are laid out (batch, heads, tokens, head_dim) between `split_heads` and
`merge_heads`; extra grouping (divided space-time attention, windows) folds groups into the head axis so
that SDPA always sees 4-D inputs, which its fused kernels require.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vidlab.errors import ConfigError


def attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """softmax(q k^T * scale + mask) v over the last two axes; scale defaults to head_dim ** -0.5."""
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


def split_heads(tokens: Tensor, num_heads: int) -> Tensor:
    """(B, L, H*d) -> (B, H, L, d)."""
    batch, length, width = tokens.shape
    return tokens.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(heads: Tensor) -> Tensor:
    """(B, H, L, d) -> (B, L, H*d)."""
    batch, num_heads, length, head_dim = heads.shape
    return heads.transpose(1, 2).reshape(batch, length, num_heads * head_dim)


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with a fused `qkv` projection and an output `proj` (the timm / ViT parameter layout).

    Subclasses that attend over token groups reuse `project_qkv` / `project_out` and call `attend`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = qk_scale  # None: head_dim ** -0.5, applied inside SDPA
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def project_qkv(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, L, D) -> query, key, value, each (B, H, L, d)."""
        query, key, value = self.qkv(tokens).chunk(3, dim=-1)
        return tuple(split_heads(t, self.num_heads) for t in (query, key, value))  # type: ignore[return-value]

    def project_out(self, heads: Tensor) -> Tensor:
        """(B, H, L, d) -> (B, L, D) through the output projection."""
        return self.proj_drop(self.proj(merge_heads(heads)))

    def attend(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """`attend` with this layer's scale and (training-only) attention dropout."""
        dropout_p = self.attn_drop if self.training else 0.0
        return attend(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=self.scale)

    def forward(self, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        query, key, value = self.project_qkv(tokens)
        return self.project_out(self.attend(query, key, value, attn_mask))


__all__ = ["attend", "split_heads", "merge_heads", "MultiHeadSelfAttention"]
