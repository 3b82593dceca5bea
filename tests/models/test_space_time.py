"""SpaceTimeTransformer: divided attention semantics, SDPA vs a naive kernel, grad checkpointing, frame counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidlab.models.errors import ModelInputError
from vidlab.models.space_time import DividedAttention, SpaceTimeTransformer

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_frames=4)


def naive_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q k^T * scale) v written out, for any number of leading batch axes."""
    assert attn_mask is None and dropout_p == 0.0 and not is_causal
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    weights = torch.softmax(query @ key.transpose(-1, -2) * scale, dim=-1)
    naive_sdpa.calls += 1
    return weights @ value


naive_sdpa.calls = 0


def official_style_attention(layer: DividedAttention, x: torch.Tensor, frames: int, axis: str) -> torch.Tensor:
    """FiT's VarAttention written independently: explicit loops over groups, q pre-scaled, einsum attention."""
    batch, length, dim = x.shape
    heads, patches = layer.num_heads, (length - 1) // frames
    q, k, v = layer.qkv(x).chunk(3, dim=-1)
    split = lambda t: t.reshape(batch, length, heads, dim // heads).permute(0, 2, 1, 3)
    q, k, v = split(q) * (dim // heads) ** -0.5, split(k), split(v)
    out = torch.zeros_like(q)
    out[:, :, :1] = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2), -1) @ v
    if axis == "space":
        groups = [[1 + f * patches + p for p in range(patches)] for f in range(frames)]
    else:
        groups = [[1 + f * patches + p for f in range(frames)] for p in range(patches)]
    for group in groups:
        keys = [0] + group
        attn = torch.softmax(q[:, :, group] @ k[:, :, keys].transpose(-1, -2), -1)
        out[:, :, group] = attn @ v[:, :, keys]
    return layer.proj(out.permute(0, 2, 1, 3).reshape(batch, length, dim))


@pytest.mark.parametrize("axis", ["space", "time"])
def test_divided_attention_matches_official_semantics(axis):
    torch.manual_seed(0)
    layer = DividedAttention(dim=32, num_heads=4).eval()
    frames, patches = 3, 5
    tokens = torch.randn(2, 1 + frames * patches, 32)
    with torch.no_grad():
        got = layer(tokens, frames, axis)
        want = official_style_attention(layer, tokens, frames, axis)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_same_output_with_sdpa_and_naive_kernel(monkeypatch):
    torch.manual_seed(0)
    model = SpaceTimeTransformer(**TINY, time_init="rand").eval()
    frames = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        fused = model.forward_features(frames)
        monkeypatch.setattr(F, "scaled_dot_product_attention", naive_sdpa)
        naive_sdpa.calls = 0
        naive = model.forward_features(frames)
    assert naive_sdpa.calls == 2 * 2 * TINY["depth"]  # (cls + groups) x (time + space) per block
    torch.testing.assert_close(fused, naive, atol=1e-5, rtol=1e-4)


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = SpaceTimeTransformer(**TINY, time_init="rand")
    frames = torch.randn(2, 4, 3, 32, 32)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        model(frames).pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    assert all(g.abs().sum() > 0 for n, g in plain.items() if "temporal" not in n)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_fewer_frames_use_the_leading_temporal_embeddings():
    torch.manual_seed(0)
    model = SpaceTimeTransformer(**TINY).eval()
    clip = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        model.temporal_embed.normal_()
        before = model(clip)
        model.temporal_embed[:, 2:] += torch.randn(1, 2, 32)  # rows a 2-frame clip must not use
        unchanged = model(clip)
        model.temporal_embed[:, 1] += torch.randn(1, 32)  # a row it must use
        changed = model(clip)
    torch.testing.assert_close(unchanged, before)
    assert not torch.allclose(changed, before)


def test_image_is_a_one_frame_clip():
    model = SpaceTimeTransformer(**TINY).eval()
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(2, 1, 3, 32, 32))
    assert tokens.shape == (2, 1 + 16, 32)


def test_bad_inputs_raise_typed_errors():
    model = SpaceTimeTransformer(**TINY).eval()
    with pytest.raises(ModelInputError, match="5 frames given"):
        model(torch.randn(1, 5, 3, 32, 32))
    with pytest.raises(ModelInputError, match="3x32x32"):
        model(torch.randn(1, 2, 3, 48, 48))
    with pytest.raises(ModelInputError, match=r"\(B, T, C, H, W\)"):
        model(torch.randn(2, 3, 32, 32))


def test_zero_time_init_makes_time_attention_a_no_op():
    torch.manual_seed(0)
    tokens = torch.randn(2, 1 + 4 * 16, 32)
    zero_init = SpaceTimeTransformer(**TINY, time_init="zeros")
    random_init = SpaceTimeTransformer(**TINY, time_init="rand")
    with torch.no_grad():
        assert torch.count_nonzero(zero_init.blocks[0].time_attn(tokens, 4, "time")) == 0
        assert torch.count_nonzero(random_init.blocks[0].time_attn(tokens, 4, "time")) > 0
    assert torch.equal(zero_init.blocks[1].time_attn.proj.weight, torch.ones(32, 32))
