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


# ---------------------------------------------------------------------------------------------------------
# Two stages: pretraining, then fine-tuning on the motion classes


def finetune_stage(**model: Any) -> dict[str, Any]:
    return {
        "name": "finetune",
        "recipe": "gdt_finetune",
        "model": {"base": "gdt-classifier-r2plus1d-18", "encoder": "stage:pretrain", **model},
        "data": {
            "train": {"annotations": "annotations/motion_train.txt", "format": "evl"},
            "test": {"annotations": "annotations/motion_test.txt", "format": "evl"},
            "class_names": "annotations/motion_classes.json",
            "batch_size": 4,
            "num_frames": 4,
            "sampling_rate": 2,
            "target_fps": None,
            "train_clips_per_video": 1,
            "transform": {**STILL, "jitter_short_side": [32, 40]},
            "num_workers": 0,
            "steps_per_epoch": 2,
        },
        "eval": {"split": "test", "after_train": True, "batch_size": 4, "spatial_views": 1, "temporal_views": 2},
    }


def encoder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k.startswith("video_encoder.")}


@pytest.fixture(scope="module")
def two_stage_run(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory):
    from vidlab.engine.runner import train

    folder = tmp_path_factory.mktemp("gdt_two_stage")
    config = pretrain_config(shapes_root, folder / "runs")
    config["loss"]["hypothesis"] = 2
    stage = finetune_stage()
    stage["data"]["root"] = str(shapes_root)
    config["stages"] = [{"name": "pretrain"}, stage]
    return train(load_train_config(write(folder / "config.yaml", config)))


def test_two_stage_run_trains_evaluates_and_starts_from_the_pretrained_encoder(two_stage_run, tmp_path: Path) -> None:
    result = two_stage_run
    assert set(result.metrics) == {"top1", "top5", "mean_class_acc"}
    assert (result.run_dir / "eval_test.json").is_file()
    pretrained = encoder_tensors(result.stage_dirs[0] / "model")
    finetuned = encoder_tensors(result.model_dir)
    assert pretrained.keys() == finetuned.keys() and len(pretrained) > 10
    # the fine-tuning stage as it ran (its config names the pretraining stage's folder) builds from those weights
    stage_config = load_train_config(result.stage_dirs[1] / "config.yaml")
    assert stage_config.model.encoder == str(result.stage_dirs[0] / "model")
    model, mc = get_recipe(stage_config).build_model(None)
    assert mc.num_classes == 8 and list(mc.video.widths) == [16, 32, 64, 128]  # the classes, the encoder's sizes
    start = {f"video_encoder.{k}": v for k, v in model.video_encoder.state_dict().items()}
    for name, tensor in pretrained.items():
        torch.testing.assert_close(start[name], tensor, msg=name)
    # and fine-tuning changed them
    assert any(not torch.equal(finetuned[k], pretrained[k]) for k in pretrained if k.endswith("weight"))


def test_linear_probe_keeps_the_encoder(two_stage_run, shapes_root: Path, tmp_path: Path) -> None:
    from vidlab.engine.runner import train

    pretrained_folder = two_stage_run.stage_dirs[0] / "model"
    stage = finetune_stage(encoder=str(pretrained_folder), freeze_encoder=True)
    config = {
        **{k: v for k, v in stage.items() if k != "name"},
        "name": "probe",
        "output_dir": str(tmp_path / "runs"),
        "trainer": {"accelerator": "cpu", "max_epochs": 1},
        "optim": {"lr": 1.0e-2},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    config["data"]["root"] = str(shapes_root)
    config["eval"]["after_train"] = False
    result = train(load_train_config(write(tmp_path / "probe.yaml", config)))
    from safetensors.torch import load_file

    pretrained = load_file(str(pretrained_folder / "model.safetensors"))
    probed = load_file(str(result.model_dir / "model.safetensors"))
    for name, tensor in probed.items():  # weights AND BatchNorm statistics: the frozen encoder stays in eval mode
        if name.startswith("video_encoder."):
            assert torch.equal(tensor, pretrained[name]), name
    assert probed["head.weight"].shape == (8, 128)


def test_two_stage_config_file_loads() -> None:
    from vidlab.engine.config import resolve_stages

    stages = resolve_stages(load_train_config(Path(__file__).parents[2] / "configs/gdt/shapes_pretrain_finetune.yaml"))
    assert [(s.name, s.config.recipe) for s in stages] == [("pretrain", "gdt"), ("finetune", "gdt_finetune")]
    assert stages[1].config.model.encoder == "stage:pretrain"


@pytest.mark.parametrize(
    ("name", "recipe", "message"),
    [
        ("kinetics_av_pretrain", "gdt", "data.train"),
        ("ucf101_finetune", "gdt_finetune", "model.encoder: /nowhere/gdt_K400.pth not found"),
    ],
)
def test_official_setting_configs_load(name: str, recipe: str, message: str) -> None:
    path = Path(__file__).parents[2] / f"configs/gdt/{name}.yaml"
    overrides = ["data.root=/nowhere"] + (["model.encoder=/nowhere/gdt_K400.pth"] if recipe == "gdt_finetune" else [])
    cfg = load_train_config(path, overrides)
    assert cfg.recipe == recipe and cfg.data.num_frames == 30 and cfg.data.target_fps == 30
    with pytest.raises(ConfigError) as info:  # data that is not there: one line naming the setting
        get_recipe(cfg).train_sets()
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("model", "eval_", "message"),
    [
        ({"encoder": "/nonexistent/model"}, {}, "model.encoder: /nonexistent/model not found"),
        ({"encoder": None, "num_classes": 0}, {}, "model.num_classes must be a positive integer or 'auto'"),
        ({"encoder": None}, {"spatial_views": 2}, "eval.spatial_views must be 1 or 3"),
        ({"encoder": None, "num_classes": 3}, {}, "has label"),
    ],
)
def test_finetune_config_errors(shapes_root: Path, tmp_path: Path, model: dict, eval_: dict, message: str) -> None:
    stage = finetune_stage(**model)
    config = {**{k: v for k, v in stage.items() if k != "name"}, "output_dir": str(tmp_path)}
    config["data"]["root"] = str(shapes_root)
    config["eval"].update(eval_)
    with pytest.raises(ConfigError) as info:
        recipe = recipe_of(config, tmp_path)
        recipe.model_config()
        recipe.eval_set("test")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_classifier_answers_the_classifier_interface() -> None:
    from vidlab.models import create_model
    from vidlab.models.interface import VideoClassifier

    sizes = {"video.layers": [1, 1, 1, 1], "video.widths": [16, 32, 64, 128], "num_classes": 5}
    model = create_model("gdt-classifier-r2plus1d-18", **sizes)
    assert isinstance(model, VideoClassifier)
    torch.manual_seed(0)
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(video)
        assert features.shape == (2, 128)
        torch.testing.assert_close(model.forward_head(features), model(video))
    frozen = create_model("gdt-classifier-r2plus1d-18", freeze_encoder=True, **sizes).train()
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert not frozen.video_encoder.training and frozen.head.training


def test_other_process_negatives_come_through_the_engines_gather(shapes_root: Path, tmp_path: Path) -> None:
    """A gather that returns a second process's rows after this one's: the loss is gdt_loss with those negatives."""
    from vidlab.losses.gdt import gdt_loss

    config = pretrain_config(shapes_root, tmp_path)
    config["loss"]["hypothesis"] = 3
    recipe = recipe_of(config, tmp_path)
    train_set = recipe.train_sets()[0]
    batch = train_set.collate([train_set.dataset[i] for i in range(2)])
    model, _ = recipe.build_model(None)
    model.eval()
    calls: list[tuple[int, ...]] = []

    def gather(local: torch.Tensor) -> torch.Tensor:  # rank 0 of 2: the other process holds the rows negated
        calls.append(tuple(local.shape))
        return torch.cat([local, -local.flip(0)])

    with torch.no_grad():
        loss = recipe.training_loss(model, batch, gather)
        features = recipe.features(model, batch)
        expected = gdt_loss(features, 3, gather=lambda t: torch.cat([t, -t.flip(0)]), rank=0).loss
        alone = gdt_loss(features, 3).loss
    assert calls == [(2, 4, 32)]  # one gather of the 4 features (v, a, vR, aR) of the 2 local clips
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, alone)


def test_two_processes_pretrain_with_gathered_negatives_and_evaluate_like_one(shapes_root: Path, tmp_path: Path) -> None:
    import json

    from _torchrun import torchrun_train

    from vidlab.engine.runner import evaluate

    config = pretrain_config(shapes_root, tmp_path / "runs")
    config["data"]["test"] = {"annotations": "annotations/captions_test.json", "format": "singularity"}
    config["eval"]["after_train"] = True
    config["loss"]["hypothesis"] = 2
    done = torchrun_train(write(tmp_path / "config.yaml", config), tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "two" / "eval_test.json").read_text())
    assert {"a2v_R1", "v2a_R1", "a2v_MedR"} <= set(report["metrics"])
    assert evaluate(tmp_path / "two" / "0-train" / "model") == pytest.approx(report["metrics"])


def test_an_official_gdt_checkpoint_is_an_encoder() -> None:
    from vidlab.golden import golden_dir
    from vidlab.models import create_model
    from vidlab.models.gdt_classifier import encoder_sizes

    official = golden_dir(Path(__file__).parents[2]) / "files" / "gdt_model" / "checkpoint.pth"
    if not official.is_file():
        pytest.skip(f"no official GDT checkpoint at {official}")
    sizes = encoder_sizes(official)
    assert sizes["video.layers"] == [2, 2, 2, 2] and sizes["video.widths"] == [64, 128, 256, 512]
    classifier = create_model("gdt-classifier-r2plus1d-18", num_classes=51, **sizes)
    report = classifier.load_encoder(official)
    assert report.ok and report.kept_from_init == ["head.weight", "head.bias"]
    assert any(k.startswith("audio_encoder.") for k in report.ignored)
    gdt = create_model(checkpoint=official)
    for name, tensor in gdt.video_encoder.state_dict().items():
        assert torch.equal(classifier.video_encoder.state_dict()[name], tensor), name


def test_a_video_without_audio_is_a_bad_sample(tmp_path: Path) -> None:
    from vidlab.data.quality import BAD_SAMPLES_KEY, BadSampleError
    from vidlab.testing.media import make_video

    for name, audio in (("a.mp4", True), ("b.mp4", True), ("silent.mp4", False)):
        make_video(tmp_path / name, num_frames=30, fps=10.0, size=(48, 48), audio=audio)
    (tmp_path / "list.txt").write_text("a.mp4 0\nb.mp4 0\nsilent.mp4 0\n")
    config = pretrain_config(tmp_path, tmp_path / "runs")
    config["data"]["train"] = config["data"]["test"] = {"annotations": "list.txt", "format": "evl"}
    recipe = recipe_of(config, tmp_path)
    sample = recipe.train_sets()[0].dataset[2]  # training: replaced by another video, and reported
    assert sample["index"] in (0, 1) and sample["audio"].shape == (4, 1, 40, 99)
    bad = sample[BAD_SAMPLES_KEY]  # the substitute is drawn at random: the silent file may come up again
    assert bad and {b.path for b in bad} == {str(tmp_path / "silent.mp4")}
    assert all("audio" in b.reason for b in bad)
    with pytest.raises(BadSampleError, match="silent.mp4"):  # evaluation: stops at the file
        recipe.eval_set("test").dataset[2]
