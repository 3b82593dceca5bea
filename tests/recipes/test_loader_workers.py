"""Every recipe's training and evaluation data loads the same through vidlab's worker processes as in the
main process: datasets and collate functions survive the fork server's pickling, and workers add nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _evl_setup import make_clip_folder
from _evl_setup import tiny_config as evl_config
from _fit_setup import tiny_config as fit_config
from _singularity_setup import make_text_folder as make_singularity_text
from _singularity_setup import tiny_config as singularity_config
from test_clip_recipe import clip_tiny_config

from vidlab.engine.config import load_train_config
from vidlab.engine.data import eval_loader
from vidlab.engine.recipe import get_recipe


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def configs(shapes_root: Path, text_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("worker_configs")
    clip_folder = make_clip_folder(folder / "clip-tiny")
    singularity_text = make_singularity_text(shapes_root, folder / "singularity-bert")
    return {
        "fit": fit_config(shapes_root, text_folder, folder / "fit"),
        "clip": clip_tiny_config(shapes_root, text_folder, folder / "clip"),
        "evl": evl_config(shapes_root, clip_folder, folder / "evl"),
        "singularity": singularity_config(shapes_root, singularity_text, folder / "singularity"),
    }


@pytest.mark.parametrize("recipe_name", ["fit", "clip", "evl", "singularity"])
def test_batches_from_workers_equal_batches_from_the_main_process(configs, recipe_name, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(configs[recipe_name], sort_keys=False))
    recipe = get_recipe(load_train_config(path))
    train = recipe.train_sets()[0]
    evaluation = recipe.eval_set("test")
    for dataset, batch_size, collate in [(train.dataset, 2, train.collate), (evaluation.dataset, 2, evaluation.collate)]:
        main, workers = (next(iter(eval_loader(dataset, batch_size, collate, num_workers=n))) for n in (0, 1))
        assert _same(main, workers), f"{recipe_name}: {type(dataset).__name__} differs in a worker"
