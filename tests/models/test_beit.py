"""The BEiT/ViT image tower's stems: the patchify convolution of every release and the convolutional stem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidlab.errors import ConfigError
from vidlab.models import create_model, create_model_with_report, save_vidlab_checkpoint
from vidlab.models.beit import VisionTower, VisionTowerConfig
from vidlab.models.singularity_weights import infer_singularity_config

TINY = {
    "image_size": 32,
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}


@pytest.mark.parametrize("patch_size", [4, 8, 16])
def test_conv_stem_gives_the_patch_grid_of_patchify(patch_size):
    images = torch.randn(2, 3, 32, 32)
    shapes = {}
    for stem in ("patch", "conv"):
        tower = VisionTower(VisionTowerConfig(**TINY, patch_size=patch_size, stem=stem))
        tower.init_weights()
        tokens, pooled = tower(images)
        shapes[stem] = (tuple(tokens.shape), tuple(pooled.shape))
    assert (
        shapes["conv"]
        == shapes["patch"]
        == ((2, 1 + (32 // patch_size) ** 2, 64), (2, 64))
    )


def test_conv_stem_halves_log2_patch_times_doubling_up_to_the_width():
    tower = VisionTower(VisionTowerConfig(**TINY, patch_size=8, stem="conv"))
    convs = [
        m for m in tower.embeddings.patch_embeddings.stem if isinstance(m, nn.Conv2d)
    ]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (3, 16, (2, 2)),
        (16, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]
    assert tower.embeddings.patch_embeddings.projection.kernel_size == (1, 1)


def test_conv_stem_is_trained_by_the_gradient_of_the_tokens():
    tower = VisionTower(VisionTowerConfig(**TINY, patch_size=8, stem="conv"))
    tower.init_weights()
    tokens, _ = tower(torch.randn(2, 3, 32, 32))
    tokens.square().mean().backward()
    first = tower.embeddings.patch_embeddings.stem[0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("patch_size", "hidden_size", "stem", "message"),
    [
        (12, 64, "conv", "power of two"),
        (16, 36, "conv", "multiple of 8"),
        (8, 64, "pixels", "vision.stem must be one of"),
    ],
)
def test_bad_stem_settings_are_config_errors(patch_size, hidden_size, stem, message):
    sizes = {**TINY, "image_size": 4 * patch_size, "hidden_size": hidden_size}
    cfg = VisionTowerConfig(**sizes, patch_size=patch_size, stem=stem)
    with pytest.raises(ConfigError, match=message):
        VisionTower(cfg)


def test_singularity_with_a_conv_stem_round_trips_strictly_with_its_batchnorm_statistics(
    tmp_path,
):
    model = create_model("singularity-tiny", **{"vision.stem": "conv"})
    model.train()
    with (
        torch.no_grad()
    ):  # move the BatchNorm running statistics off their initial values
        model.frame_features(torch.randn(2, 1, 3, 32, 32) * 3 + 1)
    model.eval()
    folder = save_vidlab_checkpoint(model, model.cfg, tmp_path / "conv_stem")
    reloaded = create_model_with_report(checkpoint=folder)
    assert reloaded.report.ok and not reloaded.report.ignored
    video = torch.randn(2, 1, 3, 32, 32)
    torch.testing.assert_close(
        reloaded.model.frame_features(video).tokens, model.frame_features(video).tokens
    )
    stats = "vision_encoder.embeddings.patch_embeddings.stem.1.running_mean"
    assert not torch.equal(
        reloaded.model.state_dict()[stats], torch.zeros_like(model.state_dict()[stats])
    )


def test_stem_and_patch_size_are_read_back_from_the_tensors():
    for stem in ("patch", "conv"):
        model = create_model(
            "singularity-tiny", **{"vision.stem": stem, "vision.patch_size": 4}
        )
        cfg = model.cfg.copy()
        cfg.vision.stem, cfg.vision.patch_size = "patch", 16
        inferred = infer_singularity_config(cfg, model.state_dict())
        assert (
            inferred.vision.stem,
            inferred.vision.patch_size,
            inferred.vision.hidden_size,
        ) == (stem, 4, 64)
