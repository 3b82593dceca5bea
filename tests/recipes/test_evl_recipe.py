"""The EVL recipe: training through the engine (frozen vs fine-tuned backbone), multi-view testing, metrics,
figures, synthetic data and config errors, on ShapesBench tiny with a 2-block 32-px CLIP backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from _evl_setup import backbone_state, make_clip_folder, tiny_config
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from vidlab.cli.main import main
from vidlab.engine.config import load_train_config
from vidlab.engine.recipe import EvalContext, get_recipe, in_dataset_order
from vidlab.engine.runner import evaluate, train
from vidlab.errors import ConfigError
from vidlab.recipes.evl import EvlRecipe


class KeepBackbone(Callback):
    """The backbone's tensors as training left them (a frozen backbone is not in any saved file)."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self.state = backbone_state(pl_module.model)


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def recipe_of(config: dict, tmp_path: Path) -> EvlRecipe:
    return get_recipe(load_train_config(write(tmp_path / "config.yaml", config)))


def clip_visual_tensors(clip_folder: Path) -> dict[str, torch.Tensor]:
    """The CLIP file's image-tower tensors under the EVL backbone's names (straight from the file)."""
    tensors = load_file(str(clip_folder / "model.safetensors"))
    head = ("visual.ln_post.weight", "visual.ln_post.bias", "visual.proj")
    return {k.removeprefix("visual."): v for k, v in tensors.items() if k.startswith("visual.") and k not in head}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip_folder(tmp_path_factory.mktemp("clip") / "clip-tiny")


def _train(config: dict, folder: Path) -> tuple:
    keep = KeepBackbone()
    result = train(load_train_config(write(folder / "config.yaml", config)), callbacks=[keep])
    return result, keep.state


@pytest.fixture(scope="module")
def frozen_run(shapes_root: Path, clip_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """2 epochs with the frozen backbone, then the 1 x 3-view test evaluation."""
    folder = tmp_path_factory.mktemp("evl_frozen")
    config = tiny_config(shapes_root, clip_folder, folder / "runs")
    config["eval"].update(after_train=True, temporal_views=3)
    return _train(config, folder)


@pytest.fixture(scope="module")
def finetune_run(shapes_root: Path, clip_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    folder = tmp_path_factory.mktemp("evl_finetune")
    config = tiny_config(shapes_root, clip_folder, folder / "runs")
    config["model"]["backbone"]["freeze"] = False
    return _train(config, folder)


# ---------------------------------------------------------------------------------------------------------
# Training


def test_frozen_backbone_keeps_its_clip_weights_and_stays_out_of_checkpoints(frozen_run, clip_folder):
    result, backbone = frozen_run
    expected = clip_visual_tensors(clip_folder)
    assert set(backbone) == set(expected) | {"patch_embed.bias"}
    for name, tensor in expected.items():
        torch.testing.assert_close(backbone[name], tensor, rtol=0, atol=0, msg=name)
    saved = load_file(str(result.model_dir / "model.safetensors"))
    assert saved and not any(k.startswith("backbone.") for k in saved)
    assert saved["decoder.query_token"].abs().sum() > 0  # zero-initialised, trained
    lightning = torch.load(result.stage_dirs[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("model.backbone.") for k in lightning["state_dict"])
    assert lightning["global_step"] == 4  # 2 epochs x 2 steps


def test_finetuned_backbone_is_trained_and_saved(finetune_run, clip_folder):
    result, backbone = finetune_run
    saved = load_file(str(result.model_dir / "model.safetensors"))
    initial = clip_visual_tensors(clip_folder)
    changed = [name for name, tensor in initial.items() if not torch.equal(saved[f"backbone.{name}"], tensor)]
    assert "blocks.1.attn.qkv.weight" in changed and "patch_embed.weight" in changed
    for name, tensor in backbone.items():
        torch.testing.assert_close(saved[f"backbone.{name}"], tensor, rtol=0, atol=0)


def test_evaluation_after_training_writes_metrics_protocol_and_figures(frozen_run):
    result, _ = frozen_run
    report = json.loads((result.run_dir / "eval_test.json").read_text())
    assert set(report["metrics"]) == {"top1", "top5", "mean_class_acc"} == set(result.metrics)
    assert "1 spatial x 3 temporal = 3 per video" in report["protocol"] and "6 videos, 8 classes" in report["protocol"]
    png = result.run_dir / "confusion_test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (result.run_dir / "report.html").read_text()
    assert "confusion_test.png" in page and f"{result.metrics['top1']:.2f}" in page


def test_vidlab_eval_of_a_frozen_run_rebuilds_the_backbone_from_its_weights(frozen_run, tmp_path):
    result, _ = frozen_run
    metrics = evaluate(result.run_dir, [f"eval.output_dir={tmp_path}"])
    assert metrics == pytest.approx(result.metrics)
    assert (tmp_path / "eval_test.json").is_file() and (tmp_path / "confusion_test.png").is_file()


# ---------------------------------------------------------------------------------------------------------
# Multi-view testing and metrics


@pytest.mark.parametrize("spatial, temporal", [(1, 3), (3, 1)])
def test_multi_view_scores_average_the_softmax_of_every_view(shapes_root, clip_folder, tmp_path, spatial, temporal):
    config = tiny_config(shapes_root, clip_folder, tmp_path)
    config["eval"].update(spatial_views=spatial, temporal_views=temporal)
    config["data"]["transform"] = {"preset": "evl", "test_short_side": 40}  # 40 x 40 frames: 3 distinct crops
    recipe = recipe_of(config, tmp_path)
    model, _ = recipe.build_model(None)
    eval_set = recipe.eval_set("test")
    batch = eval_set.collate([eval_set.dataset[i] for i in (0, 1)])
    assert batch["video"].shape == (2, spatial * temporal, 4, 3, 32, 32)
    assert not torch.equal(batch["video"][:, 0], batch["video"][:, 1])  # the views are different clips
    with torch.no_grad():
        rows = recipe.eval_step(model.eval(), batch)
        per_view = torch.stack([model(batch["video"][:, v]).softmax(-1) for v in range(spatial * temporal)], 1)
    torch.testing.assert_close(rows["scores"], per_view.mean(1))
    assert rows["label"].tolist() == [eval_set.dataset.records[i].label for i in (0, 1)]


def test_metrics_match_a_hand_computation(tmp_path):
    recipe = recipe_of({"recipe": "evl", "data": {"dummy": True}}, tmp_path)
    # 5 videos, 3 classes, given out of order; top-1 hits: videos 0, 2, 4 -> 60 %; per class: 1/2, 1/1, 1/2
    scores = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 0, 1, 2, 2])
    order = torch.tensor([3, 0, 4, 1, 2])
    outputs = {"scores": scores[order], "label": labels[order], "index": order, "num_views": torch.full((5,), 3)}
    metrics = recipe.eval_metrics(in_dataset_order(outputs), EvalContext("test"))
    assert metrics == pytest.approx({"top1": 60.0, "top5": 100.0, "mean_class_acc": 100 * (0.5 + 1 + 0.5) / 3})
    # 6 classes: top-5 misses a label ranked last
    scores6 = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05], [0.05, 0.1, 0.15, 0.2, 0.25, 0.25]])
    outputs6 = {"scores": scores6, "label": torch.tensor([1, 0]), "index": torch.tensor([0, 1]), "num_views": torch.ones(2)}
    assert recipe.eval_metrics(outputs6, EvalContext("test")) == pytest.approx({"top1": 0.0, "top5": 50.0, "mean_class_acc": 0.0})


# ---------------------------------------------------------------------------------------------------------
# Synthetic data, class folders


def test_dummy_data_has_the_model_input_shapes_and_trains(clip_folder, tmp_path):
    config = {
        "recipe": "evl",
        "model": {"base": "evl-tiny", "backbone": {"layers": 2, "weights": str(clip_folder)}},
        "data": {"dummy": True, "dummy_samples": 6, "batch_size": 3},
        "eval": {"spatial_views": 3, "temporal_views": 1},
    }
    recipe = recipe_of(config, tmp_path)
    model, model_cfg = recipe.build_model(None)
    assert model_cfg.num_classes == 10  # evl-tiny's: synthetic data names no classes
    train_set = recipe.train_sets()[0]
    sample = train_set.dataset[2]
    assert sample["video"].shape == (4, 3, 32, 32) and 0 <= sample["label"] < 10
    assert torch.equal(train_set.dataset[2]["video"], sample["video"])  # a function of (seed, index)
    assert len(train_set.dataset) == 6 and train_set.batch_size == 3
    assert recipe.eval_set("test").dataset[0]["video"].shape == (3, 4, 3, 32, 32)
    assert recipe.eval_set("val") is None  # only eval.split: no per-epoch validation while timing
    batch = train_set.collate([train_set.dataset[i] for i in range(3)])
    loss = recipe.training_loss(model.train(), batch, lambda x: x)
    loss.backward()
    assert torch.isfinite(loss) and model.head.fc.weight.grad.abs().sum() > 0


def test_class_folders_give_classes_and_names(shapes_root, clip_folder, tmp_path):
    videos = sorted((shapes_root / "videos").glob("*.mp4"))
    for split, classes in (("train", ("jump", "run", "walk")), ("val", ("jump", "run", "walk"))):
        for i, name in enumerate(classes):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            (tmp_path / "data" / split / name / "a.mp4").symlink_to(videos[i])
    config = tiny_config(tmp_path, clip_folder, tmp_path / "runs")
    folder_source = {"annotations": "data", "format": "class_folders"}
    config["data"].update(
        class_names=None,
        train={**folder_source, "options": {"split": "train"}},
        val={**folder_source, "options": {"split": "val"}},
        test=None,
    )
    recipe = recipe_of(config, tmp_path)
    assert recipe.model_config().num_classes == 3 and recipe.class_names() == ["jump", "run", "walk"]
    (tmp_path / "data" / "val" / "walk").rename(tmp_path / "data" / "val" / "swim")
    with pytest.raises(ConfigError, match="class folders must be the same"):
        recipe_of(config, tmp_path).model_config()


# ---------------------------------------------------------------------------------------------------------
# Errors


def _with(config: dict, changes: dict) -> dict:
    """`config` with dotted `path: value` changes."""
    for path, value in changes.items():
        *parents, key = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[key] = value
    return config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data.train.annotations": "annotations/missing.txt"}, "data.train.annotations: .*missing.txt: file not found"),
        ({"model.num_classes": 3, "data.class_names": None}, "has label [3-7], but there are 3 classes"),
        ({"model.num_classes": 5}, "8 class names .* but model.num_classes=5"),
        ({"model.num_frames": 8}, "model.num_frames=8 contradicts the recipe"),
        ({"data.transform": {"preset": "evl", "size": 64}}, "data.transform.size=64 but the backbone takes 32x32"),
        ({"eval.spatial_views": 2}, "eval.spatial_views must be 1 or 3"),
        ({"data.train_sampler": "fit_rand"}, "data.train_sampler must be one of evl_train, evl_tsn"),
        ({"eval.temporal_views": 0}, "eval.temporal_views must be >= 1, got 0"),
        ({"data.sampling_rate": -2}, "data.sampling_rate must be >= 1, got -2"),
    ],
)
def test_bad_input_is_a_config_error(shapes_root, clip_folder, tmp_path, changes, message):
    config = _with(tiny_config(shapes_root, clip_folder, tmp_path), changes)
    with pytest.raises(ConfigError, match=message):
        recipe = recipe_of(config, tmp_path)
        recipe.train_sets()
        recipe.eval_set("test")


def test_a_clip_run_as_backbone_brings_the_sizes_it_records(shapes_root, clip_folder, tmp_path, caplog):
    """clip-tiny has 2 blocks, evl-tiny's backbone 3: naming the CLIP run's folder is enough."""
    caplog.set_level("INFO")
    config = _with(tiny_config(shapes_root, clip_folder, tmp_path), {"model.backbone": {"weights": str(clip_folder)}})
    recipe = recipe_of(config, tmp_path)
    assert recipe.model_config().backbone.layers == 2 and "model sizes from" in caplog.text and "backbone.layers" in caplog.text
    model, _ = recipe.build_model(None)
    weights = load_file(str(clip_folder / "model.safetensors"))
    assert torch.equal(model.backbone.blocks[1].attn.qkv.weight, weights["visual.blocks.1.attn.qkv.weight"])
    stated = _with(tiny_config(shapes_root, clip_folder, tmp_path), {"model.backbone": {"weights": str(clip_folder), "layers": 3}})
    assert recipe_of(stated, tmp_path).model_config().backbone.layers == 3  # a size the config states is kept


def test_auto_classes_without_names_or_labelled_splits_is_a_config_error(shapes_root, clip_folder, tmp_path):
    changes = {"model.num_classes": "auto", "data.class_names": None, "data.train": None, "data.val": None, "data.test": None}
    recipe = recipe_of(_with(tiny_config(shapes_root, clip_folder, tmp_path), changes), tmp_path)
    with pytest.raises(ConfigError, match="model.num_classes 'auto' counts the classes of data.class_names or of the labelled splits"):
        recipe.build_model(None)


def test_cli_reports_a_bad_config_in_one_line(shapes_root, clip_folder, tmp_path, capsys):
    config = _with(tiny_config(shapes_root, clip_folder, tmp_path), {"model.num_classes": 3, "data.class_names": None})
    assert main(["train", str(write(tmp_path / "bad.yaml", config))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidlab: error:") and "but there are 3 classes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "evl_tiny").exists()  # nothing written
