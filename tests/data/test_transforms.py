"""Clip transforms: one draw per clip, normalisation values, view shapes and positions, determinism, errors."""

import pytest
import torch

from vidlab.data.transforms import (
    NORMALIZATION,
    PRESETS,
    ClipRandAugment,
    TransformError,
    build_transform,
    resolve_transform_config,
)
from vidlab.errors import ConfigError

T, H, W = 4, 48, 64


def small(preset: str, **extra) -> dict:
    """A preset shrunk to 32-pixel outputs so the tests stay fast; every other choice is the preset's own."""
    shrunk = {
        "fit": {"test_short_side": 40, "test_crop": 36},
        "vimpac": {"jitter_short_side": (32, 40)},
        "gdt": {"jitter_short_side": (32, 40), "test_short_side": 36},
        "stica": {"test_short_side": 36},
    }
    return {"preset": preset, "size": 32, **shrunk.get(preset, {}), **extra}


def noise_clip(seed: int = 0) -> torch.Tensor:
    """Frame t = one mid-grey noise image + 10 t: identical structure, a constant brightness offset per frame."""
    base = torch.randint(60, 140, (1, 3, H, W), generator=torch.Generator().manual_seed(seed))
    return (base + 10 * torch.arange(T).view(T, 1, 1, 1)).to(torch.uint8)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_train_pipeline_applies_one_draw_to_every_frame(preset):
    """Linear steps (crop, resize, flip, jitter, normalise) map a constant offset to a constant offset;
    a different crop or flip per frame would make the frame differences vary across pixels."""
    config = small(preset, rand_augment=None)  # RandAugment is per-frame non-linear; covered below
    transform = build_transform(config, train=True)
    for seed in range(5):
        torch.manual_seed(seed)
        out = transform(noise_clip(seed))
        diffs = out[1:] - out[:1]
        assert diffs.flatten(2).std(dim=2).max() < 1e-4, preset


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("train", [True, False])
def test_identical_frames_stay_identical(preset, train):
    frames = noise_clip()[:1].repeat(T, 1, 1, 1)
    transform = build_transform(small(preset), train=train)
    for seed in range(5):
        torch.manual_seed(seed)
        out = transform(frames)
        views = out if out.ndim == 5 else out.unsqueeze(0)
        assert all(torch.equal(view[0], view[t]) for view in views for t in range(T))


def test_rand_augment_uses_the_same_ops_on_every_frame():
    augment = ClipRandAugment.from_policy("rand-m9-n4-mstd0.5-inc1")
    frames = noise_clip()[:1].repeat(T, 1, 1, 1)
    changed = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = augment(frames)
        assert out.dtype == torch.uint8 and all(torch.equal(out[0], out[t]) for t in range(T))
        changed += not torch.equal(out, frames)
    assert changed > 10


@pytest.mark.parametrize("preset", list(PRESETS))
def test_test_pipeline_normalises_with_the_preset_statistics(preset):
    value = 100
    frames = torch.full((T, 3, H, W), value, dtype=torch.uint8)
    out = build_transform(small(preset), train=False)(frames)
    mean, std = NORMALIZATION[PRESETS[preset]["norm"]]
    expected = (value / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert out.dtype == torch.float32
    assert torch.allclose(out.movedim(-3, -1), expected.expand_as(out.movedim(-3, -1)), atol=1e-5)


def test_normalisation_presets_are_the_published_constants():
    assert NORMALIZATION["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert NORMALIZATION["clip"] == ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    assert NORMALIZATION["half"] == ((0.5,) * 3, (0.5,) * 3)
    assert NORMALIZATION["kinetics"] == ((0.45,) * 3, (0.225,) * 3)


def column_clip(height: int, width: int) -> torch.Tensor:
    """Every pixel holds its column index (rows: row index in channel 1), to read crop positions back."""
    cols = torch.arange(width).view(1, 1, 1, width).expand(T, 1, height, width)
    rows = torch.arange(height).view(1, 1, height, 1).expand(T, 1, height, width)
    return torch.cat([cols, rows, cols], dim=1).to(torch.uint8)


def pixel_values(out: torch.Tensor, norm: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATION[norm])
    return torch.round((out * std + mean) * 255)


def test_three_crop_takes_left_centre_right_of_landscape_frames():
    transform = build_transform({"preset": "evl", "size": 48, "spatial_views": 3}, train=False)
    out = transform(column_clip(48, 64))  # short side already 48: margin 16 along the width
    assert out.shape == (3, T, 3, 48, 48)
    first_columns = [int(pixel_values(view[0], "clip")[0, 0, 0]) for view in out]
    assert first_columns == [0, 8, 16]


def test_three_crop_takes_top_centre_bottom_of_portrait_frames():
    transform = build_transform({"preset": "evl", "size": 48, "spatial_views": 3}, train=False)
    out = transform(column_clip(64, 48))
    first_rows = [int(pixel_values(view[0], "clip")[1, 0, 0]) for view in out]
    assert first_rows == [0, 8, 16]


def test_centre_crop_after_short_side_resize():
    out = build_transform({"preset": "evl", "size": 48}, train=False)(column_clip(48, 64))
    assert out.shape == (T, 3, 48, 48)
    assert int(pixel_values(out[0], "clip")[0, 0, 0]) == 8


def test_fit_test_pipeline_resizes_crops_then_resizes_again():
    out = build_transform(small("fit"), train=False)(noise_clip())
    assert out.shape == (T, 3, 32, 32)


def test_singularity_squash_keeps_the_whole_width():
    frames = torch.zeros((T, 3, H, W), dtype=torch.uint8)
    frames[..., W - 8:] = 255  # a white band at the right edge, which a centre crop of 48x64 would cut
    out = pixel_values(build_transform(small("singularity"), train=False)(frames), "half")
    assert out.shape == (T, 3, 32, 32)
    assert out[..., -1].min() == 255 and out[..., 0].max() == 0


def test_same_seed_same_clip_other_seed_other_clip():
    transform = build_transform(small("singularity"), train=True)
    clip = noise_clip()
    torch.manual_seed(3)
    first = transform(clip)
    torch.manual_seed(3)
    again = transform(clip)
    assert torch.equal(first, again)
    outputs = []
    for seed in range(4):
        torch.manual_seed(seed)
        outputs.append(transform(clip))
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


def test_evl_preset_follows_the_official_pipeline():
    config = resolve_transform_config("evl")
    assert (config.norm, config.crop_scale, config.hflip, config.rand_augment) == (
        "clip", (0.08, 1.0), 0.0, "rand-m7-n4-mstd0.5-inc1")
    augment = ClipRandAugment.from_policy(config.rand_augment)
    assert (augment.num_ops, augment.magnitude, augment.magnitude_std) == (4, 7.0, 0.5)
    assert "PosterizeIncreasing" in augment.op_names


def test_overrides_and_yaml_style_lists():
    config = resolve_transform_config({"preset": "fit", "crop_scale": [0.3, 0.9], "size": 112})
    assert (config.crop_scale, config.size, config.norm, config.test_short_side) == ((0.3, 0.9), 112, "imagenet", 256)


@pytest.mark.parametrize(
    "config, message",
    [
        ("nope", "unknown transform preset 'nope'"),
        ({"preset": "fit", "sise": 3}, "unknown transform option"),
        ({"norm": "imagenette"}, "norm must be one of"),
        ({"spatial_views": 2}, "spatial_views must be one of"),
        ({"interpolation": "lanczos"}, "interpolation must be one of"),
        ({"hflip": 1.5}, "hflip is a probability"),
        ({"crop_scale": [0.5]}, "crop_scale must be a pair"),
        ({"size": 0}, "size must be a positive integer"),
        ({"rand_augment": "rand-m7-q4"}, "cannot read 'q4'"),
        ({"rand_augment": "augmix-m3"}, "must start with 'rand-'"),
        (42, "preset name or a mapping"),
    ],
)
def test_bad_configs_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        build_transform(config, train=True)


def test_bad_frames_are_transform_errors():
    transform = build_transform(small("fit"), train=False)
    with pytest.raises(TransformError, match="uint8 frames"):
        transform(torch.rand(T, 3, H, W))
    with pytest.raises(TransformError, match="uint8 frames"):
        transform(torch.zeros(3, H, W, dtype=torch.uint8))
    with pytest.raises(TransformError, match="3 colour channels"):
        transform(torch.zeros(T, H, W, 3, dtype=torch.uint8))
    with pytest.raises(TransformError, match="smaller than"):
        build_transform({"preset": "evl", "size": 48, "spatial_views": 3, "test_short_side": 40}, train=False)(
            column_clip(48, 64))
