"""VIMPAC's block masking of video token grids (official `vimpac/masking.py`: `mask_3d`, `mask_3d_rand_replace`).

- Block masking: per sample, the union of `num_blocks` cubes of lengths l ~ U[1, 2T//3], h ~ U[1, H//2],
  w ~ U[1, W//2] at uniform starts. Masked tokens become [MASK]; [PAD] tokens are never masked or predicted.
- `rand_replace` (the official 80/10/10 variant, per BLOCK): each block is filled with [MASK] (80%), with random
  codes (10%) or left as is (10%), in draw order (a later block overwrites an earlier one where they overlap;
  "left as is" overwrites nothing). Every token of every block is predicted.
- `num_blocks < 0`: i.i.d. masking of each token with probability -num_blocks / 1000.

The cube coordinates are drawn with Python's `random` in the official order (sample, block: lengths, starts,
then the 80/10/10 draw), so a seeded `random.Random` reproduces the official masks; the masks themselves are
built with broadcast comparisons, not per-sample loops. Random codes and i.i.d. masks come from torch's RNG
(`generator`, default the global one), drawn as the official code draws them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from vidlab.errors import ConfigError

IGNORE_INDEX = -100
REPLACE_MASK, REPLACE_RANDOM, REPLACE_KEEP = 0, 1, 2


@dataclass(frozen=True)
class MaskedGrid:
    codes: Tensor  # (B, T, H, W) ids fed to the model
    labels: Tensor  # original ids where a token is predicted, -100 elsewhere


def draw_blocks(
    batch: int, grid: tuple[int, int, int], num_blocks: int, rng: random.Random, rand_replace: bool
) -> Tensor:
    """(batch, num_blocks, 7) int64: [t1, t2, h1, h2, w1, w2, action] per cube, drawn in the official order
    (action: REPLACE_MASK, or with `rand_replace` the 80/10/10 draw)."""
    frames, height, width = grid
    if min(frames * 2 // 3, height // 2, width // 2) < 1:
        raise ConfigError(f"block masking needs a token grid of at least 2x2x2, got {frames}x{height}x{width}")
    rows = []
    for _ in range(batch * num_blocks):
        lengths = (rng.randint(1, frames * 2 // 3), rng.randint(1, height // 2), rng.randint(1, width // 2))
        starts = [rng.randint(0, size - n) for size, n in zip(grid, lengths)]
        action = REPLACE_MASK
        if rand_replace:
            p = rng.random()
            action = REPLACE_MASK if p < 0.8 else REPLACE_RANDOM if p < 0.9 else REPLACE_KEEP
        rows.append([v for s, n in zip(starts, lengths) for v in (s, s + n)] + [action])
    return torch.tensor(rows, dtype=torch.long).view(batch, num_blocks, 7)


def blocks_to_masks(blocks: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """(B, N, 7) cubes -> (B, N, T, H, W) bool: which tokens each cube covers."""
    inside = []
    for axis, size in enumerate(grid):
        position = torch.arange(size, device=blocks.device)
        start, end = blocks[..., 2 * axis, None], blocks[..., 2 * axis + 1, None]
        inside.append((position >= start) & (position < end))  # (B, N, size)
    t, h, w = inside
    return t[..., :, None, None] & h[..., None, :, None] & w[..., None, None, :]


def mask_token_grid(
    codes: Tensor,
    num_blocks: int,
    pad_id: int,
    mask_id: int,
    vocab_size: int,
    rand_replace: bool = False,
    rng: random.Random | None = None,
    generator: torch.Generator | None = None,
) -> MaskedGrid:
    """Mask (B, T, H, W) token ids as VIMPAC pre-training does (see the module docstring)."""
    rng = rng if rng is not None else random.Random()
    grid = tuple(codes.shape[1:])
    not_pad = codes != pad_id
    if num_blocks < 0:
        if rand_replace:
            raise ConfigError("i.i.d. masking (negative mask_blocks) has no 80/10/10 variant (official: unsupported)")
        probability = torch.full(codes.shape, -num_blocks / 1000, device=codes.device)
        chosen = torch.bernoulli(probability, generator=generator).bool() & not_pad
        return MaskedGrid(codes.masked_fill(chosen, mask_id), codes.masked_fill(~chosen, IGNORE_INDEX))
    blocks = draw_blocks(codes.shape[0], grid, num_blocks, rng, rand_replace).to(codes.device)
    covers = blocks_to_masks(blocks, grid)  # (B, N, T, H, W)
    chosen = covers.any(dim=1) & not_pad
    labels = codes.masked_fill(~chosen, IGNORE_INDEX)
    if not rand_replace:
        return MaskedGrid(codes.masked_fill(chosen, mask_id), labels)
    actions = blocks[..., 6]
    acting = covers & (actions != REPLACE_KEEP)[..., None, None, None]
    # the last cube that writes a token decides its value: [MASK], or that cube's random code
    order = torch.arange(1, blocks.shape[1] + 1, device=codes.device)[None, :, None, None, None]
    last = (acting * order).amax(dim=1)  # (B, T, H, W), 0: no cube writes it
    writer = (last - 1).clamp_min(0)
    random_codes = torch.zeros_like(covers, dtype=codes.dtype)
    for b, n in (actions == REPLACE_RANDOM).nonzero().tolist():  # torch RNG draws in the official order
        t1, t2, h1, h2, w1, w2 = blocks[b, n, :6].tolist()
        drawn = torch.empty((t2 - t1, h2 - h1, w2 - w1), dtype=codes.dtype).random_(0, vocab_size, generator=generator)
        random_codes[b, n, t1:t2, h1:h2, w1:w2] = drawn.to(codes.device)
    written_action = actions.gather(1, writer.flatten(1)).view_as(writer)
    written_random = random_codes.gather(1, writer[:, None]).squeeze(1)
    out = torch.where((last > 0) & (written_action == REPLACE_MASK), torch.full_like(codes, mask_id), codes)
    out = torch.where((last > 0) & (written_action == REPLACE_RANDOM), written_random, out)
    return MaskedGrid(torch.where(not_pad, out, codes), labels)


__all__ = ["MaskedGrid", "draw_blocks", "blocks_to_masks", "mask_token_grid", "IGNORE_INDEX"]
