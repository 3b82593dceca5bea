"""Singularity in two processes (torchrun, gloo on loopback, CPU): DDP finds the parameters a step leaves
unused (as the official DDP does), gathered negatives work with captions padded to different lengths on each
process, and the shared evaluation equals one process's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _singularity_setup import make_text_folder, tiny_config
from _torchrun import torchrun_train

from vidlab.engine.config import load_train_config, resolve_stages
from vidlab.engine.recipe import get_recipe
from vidlab.engine.runner import _strategy, evaluate


@pytest.fixture(scope="module")
def text(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_text_folder(shapes_root, tmp_path_factory.mktemp("singularity_text") / "bert")


def _config(shapes_root: Path, text: Path, folder: Path) -> Path:
    config = tiny_config(shapes_root, text, folder / "runs")
    config["data"].update(
        mixing="schedule",
        steps_per_epoch=4,
        train=[
            {"name": "videos", "annotations": "annotations/captions_train.json", "batch_size": 8},
            {"name": "images", "annotations": "annotations/images_train.json", "batch_size": 4},
        ],
    )
    config["model"]["losses"] = {"gather_negatives": True}
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_ddp_looks_for_unused_parameters_when_the_recipe_asks_and_several_processes_run(shapes_root, text, tmp_path):
    cfg = resolve_stages(load_train_config(_config(shapes_root, text, tmp_path)))[0].config
    recipe = get_recipe(cfg)
    assert _strategy(cfg, recipe) == "auto"  # one CPU process: no DDP at all
    two = cfg.copy()
    two.trainer.devices = 2
    assert _strategy(two, recipe) == "ddp_find_unused_parameters_true"
    two.trainer.strategy = "ddp_spawn"
    assert _strategy(two, recipe) == "ddp_spawn"  # a strategy named explicitly is kept


def test_two_processes_train_with_gathered_negatives_and_evaluate_like_one(shapes_root, text, tmp_path):
    path = _config(shapes_root, text, tmp_path)
    done = torchrun_train(path, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((tmp_path / "two" / "eval_test.json").read_text())
    assert {"itm/all/t2v_R1", "itc/temporal/v2t_R5"} <= set(report["metrics"])
    assert evaluate(tmp_path / "two" / "0-train" / "model") == pytest.approx(report["metrics"])
