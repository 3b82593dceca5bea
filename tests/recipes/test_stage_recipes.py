"""One `vidlab train` whose stages change recipe: CLIP pretraining, then EVL on the pretrained backbone."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from _evl_setup import tiny_config as evl_config
from _fit_setup import read_weights
from test_clip_recipe import clip_tiny_config

from vidlab.engine.config import load_train_config, resolve_stages
from vidlab.engine.runner import evaluate, train
from vidlab.errors import ConfigError


class CrashInRecipe(pl.Callback):
    """Raises when the stage of `recipe` is about to run optimizer step `step`."""

    def __init__(self, recipe: str, step: int):
        self.recipe, self.step = recipe, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.recipe.name == self.recipe and trainer.global_step == self.step:
            raise RuntimeError("power cut")


def two_recipe_config(folder: Path, shapes_root: Path, text_folder: Path) -> Path:
    """CLIP pretraining (2 steps), then EVL (2 epochs x 2 steps) whose backbone is the pretraining's model."""
    config = clip_tiny_config(shapes_root, text_folder, folder / "runs")
    evl = evl_config(shapes_root, Path("unused"), folder / "runs")
    evl["model"]["backbone"] = {"weights": "stage:pretrain"}
    config["stages"] = [
        {"name": "pretrain"},
        {"name": "classify", "recipe": "evl", "model": evl["model"], "data": evl["data"], "eval": evl["eval"],
         "trainer": evl["trainer"], "optim": evl["optim"], "checkpoint": {"keep": -1, "every_n_steps": 1}},
    ]
    path = folder / "clip_then_evl.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_each_stage_is_typed_by_its_own_recipe(shapes_root, text_folder, tmp_path):
    stages = resolve_stages(load_train_config(two_recipe_config(tmp_path, shapes_root, text_folder)))
    assert [(s.name, s.config.recipe) for s in stages] == [("pretrain", "clip"), ("classify", "evl")]
    assert stages[1].config.model.backbone.weights == "stage:pretrain"
    assert "zero_shot" not in stages[1].config.eval  # CLIP's own sections do not leak into the EVL stage
    assert stages[1].config.seed == stages[0].config.seed and stages[1].config.name == stages[0].config.name
    raw = yaml.safe_load((tmp_path / "clip_then_evl.yaml").read_text())
    raw["stages"][1]["model"]["backbone"]["weights"] = "stage:classify"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"stages\[1\] \(classify\): 'stage:classify' names no earlier stage \(earlier: pretrain\)"):
        load_train_config(tmp_path / "bad.yaml")


def test_a_killed_two_recipe_run_resumes_across_the_boundary_and_ends_as_a_straight_run(shapes_root, text_folder, tmp_path):
    path = two_recipe_config(tmp_path, shapes_root, text_folder)
    straight = train(load_train_config(path, [f"run_dir={tmp_path / 'straight'}"]))
    killed_dir = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="power cut"):
        train(load_train_config(path, [f"run_dir={killed_dir}"]), callbacks=[CrashInRecipe("evl", 2)])
    assert (killed_dir / "0-pretrain" / "model" / "model.safetensors").is_file()  # the CLIP stage had finished
    resumed = train(load_train_config(path, [f"run_dir={killed_dir}", "resume=auto"]))
    assert resumed.run_dir == killed_dir and resumed.model_dir == killed_dir / "1-classify" / "model"
    for stage in ("0-pretrain", "1-classify"):
        a, b = read_weights(straight.run_dir / stage / "model"), read_weights(killed_dir / stage / "model")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    saved = yaml.safe_load((killed_dir / "1-classify" / "config.yaml").read_text())
    assert saved["recipe"] == "evl" and saved["model"]["backbone"]["weights"] == str(killed_dir / "0-pretrain" / "model")
    metrics = evaluate(killed_dir)  # the run's EVL model, its backbone found through the run's own folders
    assert 0.0 <= metrics["top1"] <= 100.0
