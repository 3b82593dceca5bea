"""The GDT recipes on ShapesBench tiny with the tiny GDT model: the pretraining views (reversal, shift, audio),
the loss decreasing on a fixed batch, a two-stage run (pretrain, then fine-tune on the motion classes) whose
fine-tuned model starts from the pretrained encoder, and one-line config errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from vidlab.engine.config import load_train_config
from vidlab.engine.recipe import get_recipe
from vidlab.errors import ConfigError
from vidlab.io.sampling import make_sampler
from vidlab.recipes.gdt import VIEWS

# 32-px crops without random geometry or colour: the views differ only by what the recipe does to them
STILL = {"preset": "gdt", "size": 32, "jitter_short_side": [32, 32], "hflip": 0.0, "color_jitter": 0.0, "test_short_side": 32}


def pretrain_config(shapes_root: Path, output_dir: Path, **data: Any) -> dict[str, Any]:
    return {
        "recipe": "gdt",
        "name": "gdt_tiny",
        "seed": 0,
        "output_dir": str(output_dir),
        "model": {"base": "gdt-tiny"},
        "data": {
            "root": str(shapes_root),
            "train": {"annotations": "annotations/captions_train.json", "format": "singularity"},
            "batch_size": 4,
            "num_frames": 4,
            "sampling_rate": 2,
            "target_fps": None,
            "transform": STILL,
            "num_workers": 0,
            "steps_per_epoch": 2,
            **data,
        },
        "loss": {"hypothesis": 6},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "log_every_n_steps": 1},
        "optim": {"lr": 1.0e-3},
        "checkpoint": {"keep": 1},
        "logging": {"tensorboard": False, "progress_bar": False},
        "eval": {"after_train": False, "batch_size": 4},
    }


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def recipe_of(config: dict, tmp_path: Path):
    return get_recipe(load_train_config(write(tmp_path / "config.yaml", config)))


# ---------------------------------------------------------------------------------------------------------
# Views


def test_views_are_reversed_and_shifted(shapes_root: Path, tmp_path: Path) -> None:
    recipe = recipe_of(pretrain_config(shapes_root, tmp_path, spec_augment=None, volume_jitter=0.0), tmp_path)
    dataset = recipe.train_sets()[0].dataset
    for index in range(3):
        sample = dataset[index]
        video, audio = sample["video"], sample["audio"]
        assert video.shape == (4, 4, 3, 32, 32) and audio.shape == (4, 1, 40, 99)
        plain, reversed_, shifted, shifted_reversed = (VIEWS.index(v) for v in ("", "R", "2", "2R"))
        # a reversed view is its plain view flipped on time (video on T, spectrogram on its time axis)
        torch.testing.assert_close(video[reversed_], video[plain].flip(0))
        torch.testing.assert_close(video[shifted_reversed], video[shifted].flip(0))
        torch.testing.assert_close(audio[reversed_], audio[plain].flip(-1))
        torch.testing.assert_close(audio[shifted_reversed], audio[shifted].flip(-1))
        # the two clips are at different times: other frames, other sound
        assert not torch.equal(video[plain], video[shifted])
        assert not torch.equal(audio[plain], audio[shifted])
        assert not torch.equal(video[plain], video[reversed_])


def test_shift_sampler_draws_two_distinct_starts() -> None:
    sampler = make_sampler("gdt_shift", num_frames=4, sampling_rate=2)
    rng = np.random.default_rng(0)
    for _ in range(200):
        first, second = sampler(12, 10.0, rng)  # 12 frames, clips of span 7: 6 starts
        assert first[0] != second[0] and np.array_equal(np.diff(first), [2, 2, 2])
    # one possible start: both clips are the whole (padded) video
    first, second = sampler(5, 10.0, rng)
    assert first.tolist() == second.tolist() == [0, 2, 4, 4]
    same = make_sampler("gdt_shift", num_frames=4, sampling_rate=2, distinct=False)
    assert any(a[0] == b[0] for a, b in (same(12, 10.0, rng) for _ in range(100)))


def test_augmentation_is_drawn_per_view(shapes_root: Path, tmp_path: Path) -> None:
    """With the official gdt augmentation, the reversed view is NOT its plain view flipped: each view draws its own."""
    config = pretrain_config(shapes_root, tmp_path)
    config["data"]["transform"] = {"preset": "gdt", "size": 32, "jitter_short_side": [36, 48], "test_short_side": 36}
    sample = get_recipe(load_train_config(write(tmp_path / "c.yaml", config))).train_sets()[0].dataset[0]
    assert not torch.allclose(sample["video"][1], sample["video"][0].flip(0))
    # the spectrogram of a clip is augmented once (volume, SpecAugment) and reversed as it is
    torch.testing.assert_close(sample["audio"][1], sample["audio"][0].flip(-1))


# ---------------------------------------------------------------------------------------------------------
# Loss


def test_loss_decreases_on_a_fixed_batch(shapes_root: Path, tmp_path: Path) -> None:
    config = pretrain_config(shapes_root, tmp_path)
    config["loss"]["hypothesis"] = 2
    config["model"]["head"] = {"dropout": 0.0}  # the same batch gives the same loss
    recipe = recipe_of(config, tmp_path)
    train_set = recipe.train_sets()[0]
    batch = train_set.collate([train_set.dataset[i] for i in range(4)])
    torch.manual_seed(0)
    model, _ = recipe.build_model(None)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = recipe.training_loss(model, batch, lambda t: t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_hypothesis_forwards_only_its_views(shapes_root: Path, tmp_path: Path) -> None:
    config = pretrain_config(shapes_root, tmp_path)
    config["loss"]["hypothesis"] = 2
    recipe = recipe_of(config, tmp_path)
    train_set = recipe.train_sets()[0]
    batch = train_set.collate([train_set.dataset[i] for i in range(2)])
    model, _ = recipe.build_model(None)
    assert sorted(recipe.features(model, batch)) == ["a", "aR", "v", "vR"]


# ---------------------------------------------------------------------------------------------------------
# Config errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"loss": {"hypothesis": 10}}, "loss.hypothesis must be one of 1-9"),
        ({"data": {"spec_augment": "loud"}}, "data.spec_augment must be one of"),
        ({"data": {"volume_jitter": 1.5}}, "data.volume_jitter must be in [0, 1)"),
        ({"data": {"num_frames": 0}}, "data.num_frames must be >= 1"),
        ({"model": {"base": "gdt-text-r2plus1d-18"}}, "modality='text'"),
        ({"model": {"base": "evl-tiny"}}, "is a 'evl' model; this recipe trains 'gdt' models"),
    ],
)
def test_pretrain_config_errors(shapes_root: Path, tmp_path: Path, change: dict, message: str) -> None:
    config = pretrain_config(shapes_root, tmp_path)
    for section, values in change.items():
        config[section] = {**config[section], **values} if section != "model" else values
    with pytest.raises(ConfigError, match=None) as info:
        recipe = recipe_of(config, tmp_path)
        recipe.model_config()
        recipe.train_sets()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_no_train_set_is_one_line(shapes_root: Path, tmp_path: Path) -> None:
    config = copy.deepcopy(pretrain_config(shapes_root, tmp_path))
    config["data"].pop("train")
    with pytest.raises(ConfigError, match="data.train is not set"):
        recipe_of(config, tmp_path).train_sets()
