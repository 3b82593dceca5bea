"""The frame-tokenizer interface: the trainable VQ-VAE and the DALL-E encoder behind it."""

from __future__ import annotations

import pytest
import torch

from vidlab.models.factory import create_model
from vidlab.models.errors import ModelInputError
from vidlab.models.vq_tokenizer import FrameTokenizer, load_tokenizer


def blobs(n: int, seed: int) -> torch.Tensor:
    """Frames in [-1, 1]: a bright square at a random place on a dark background."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.full((n, 3, 32, 32), -1.0)
    for i in range(n):
        y, x = torch.randint(0, 24, (2,), generator=g).tolist()
        frames[i, int(torch.randint(3, (), generator=g)), y : y + 8, x : x + 8] = 1.0
    return frames


def test_vqvae_learns_codes(tmp_path):
    torch.manual_seed(0)
    model = create_model("vqvae-tiny", vocab_size=16).train()
    assert isinstance(model, FrameTokenizer) and model.downsample == 8
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    frames = blobs(16, 0)
    first = None
    for _ in range(80):
        out = model(frames)
        loss = out.loss_recon + out.loss_vq
        first = first if first is not None else float(out.loss_recon.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert float(model(frames).loss_recon) < 0.5 * first
    codes = model.tokenize(blobs(8, 1), batch_size=3)
    assert codes.shape == (8, 4, 4) and codes.dtype == torch.int64
    assert len(codes.unique()) > 1, "more than one code in use"
    with pytest.raises(ModelInputError, match="multiples of 8"):
        model.tokenize(torch.zeros(1, 3, 30, 30))


def test_dalle_encoder_is_a_tokenizer(tmp_path):
    encoder = create_model({"family": "dalle_encoder", "n_hid": 8, "n_blk_per_group": 1, "vocab_size": 32})
    assert isinstance(encoder, FrameTokenizer) and encoder.downsample == 8
    assert encoder.tokenize(torch.zeros(2, 3, 16, 16)).shape == (2, 2, 2)


def test_load_tokenizer(tmp_path):
    from vidlab.errors import ConfigError
    from vidlab.models.checkpoint import save_vidlab_checkpoint
    from vidlab.models.factory import model_config

    vq = create_model("vqvae-tiny")
    save_vidlab_checkpoint(vq, model_config("vqvae-tiny"), tmp_path / "vq")
    loaded = load_tokenizer(str(tmp_path / "vq"))
    frames = blobs(2, 3)
    assert torch.equal(loaded.tokenize(frames), vq.eval().tokenize(frames))
    save_vidlab_checkpoint(create_model("vimpac-tiny"), model_config("vimpac-tiny"), tmp_path / "vimpac")
    with pytest.raises(ConfigError, match="not a frame tokenizer"):
        load_tokenizer(str(tmp_path / "vimpac"))
