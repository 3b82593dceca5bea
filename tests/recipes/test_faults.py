"""Fault injection: every recipe's training killed by SIGKILL at a random step, then again in the middle of a
checkpoint write, resumes with `resume=auto` and ends with the very weights (and TensorBoard curve) of a run
that never stopped. Marked `faults` (`pytest -m faults`); part of the default suite."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _evl_setup import make_clip_folder
from _evl_setup import tiny_config as evl_config
from _fit_setup import loss_curve, read_weights
from _fit_setup import tiny_config as fit_config
from _singularity_setup import make_text_folder as make_singularity_text
from _singularity_setup import tiny_config as singularity_config
from test_clip_recipe import clip_tiny_config
from test_gdt_recipe import pretrain_config as gdt_config

from vidlab.engine.config import load_train_config
from vidlab.engine.runner import train

pytestmark = pytest.mark.faults
KILLER = Path(__file__).with_name("_kill_run.py")


@pytest.fixture(scope="module")
def folders(shapes_root, text_folder, tmp_path_factory):
    base = tmp_path_factory.mktemp("fault_inputs")
    return {
        "text": text_folder,
        "clip": make_clip_folder(base / "clip"),
        "singularity_text": make_singularity_text(shapes_root, base / "bert"),
    }


def _config(recipe: str, shapes_root: Path, folders: dict[str, Path], out: Path) -> tuple[Path, int]:
    """The recipe's tiny config with a checkpoint every step (one kept) and TensorBoard on; its step count."""
    config = {
        "fit": lambda: fit_config(shapes_root, folders["text"], out),
        "clip": lambda: {**clip_tiny_config(shapes_root, folders["text"], out), "trainer": {"accelerator": "cpu", "max_epochs": 2}},
        "evl": lambda: evl_config(shapes_root, folders["clip"], out),
        "singularity": lambda: singularity_config(shapes_root, folders["singularity_text"], out),
        "gdt": lambda: {
            **gdt_config(shapes_root, out), "loss": {"hypothesis": 2},
            "trainer": {"accelerator": "cpu", "max_epochs": 2, "log_every_n_steps": 1},
        },
    }[recipe]()
    config["checkpoint"] = {"every_n_steps": 1, "keep": 1}
    config["logging"] = {"tensorboard": True, "progress_bar": False}
    config["trainer"] = {**config["trainer"], "log_every_n_steps": 1}
    steps = config["data"]["steps_per_epoch"] * config["trainer"].get("max_epochs", 1)
    path = out / f"{recipe}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, steps


def _killed(config: Path, run_dir: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(KILLER), str(config), f"run_dir={run_dir}", "resume=auto", *args],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


@pytest.mark.parametrize("recipe", ["fit", "clip", "evl", "singularity", "gdt"])
def test_killed_at_a_random_step_and_during_a_checkpoint_write_resumes_exactly(recipe, shapes_root, folders, tmp_path):
    config, steps = _config(recipe, shapes_root, folders, tmp_path)
    straight = train(load_train_config(config, [f"run_dir={tmp_path / 'straight'}"]))
    run_dir = tmp_path / "killed"
    kill_step = random.Random(recipe).randint(1, steps - 1)
    _killed(config, run_dir, "--step", str(kill_step))
    stage = next(run_dir.glob("*-*"))
    assert {p.name for p in (stage / "checkpoints").glob("step*.ckpt")} == {f"step{kill_step:07d}.ckpt"}  # keep=1
    _killed(config, run_dir, "--write", "1")  # the resumed run dies writing its first checkpoint
    assert list((stage / "checkpoints").glob(".*.tmp-*")), "the killed write left its temporary file"

    resumed = train(load_train_config(config, [f"run_dir={run_dir}", "resume=auto"]))
    assert not list((stage / "checkpoints").glob(".*.tmp-*"))  # removed when the stage went on
    assert len(list((stage / "checkpoints").glob("step*.ckpt"))) == 1
    a, b = read_weights(straight.model_dir), read_weights(resumed.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # every step logged once, with the straight run's values, although steps after a checkpoint ran twice
    straight_curve = loss_curve(next(straight.run_dir.glob("*-*")) / "tensorboard")
    assert loss_curve(stage / "tensorboard") == straight_curve and len(straight_curve) == steps


@pytest.fixture
def small_disk(tmp_path):
    """A size-limited tmpfs (root only); yields (mount point, resize(bytes))."""
    import os

    if os.geteuid() != 0:
        pytest.skip("a full-disk test mounts a size-limited tmpfs, which needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this machine does not let root mount a tmpfs")

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_training_with_one_line_and_loses_nothing(shapes_root, folders, tmp_path, small_disk):
    from vidlab.engine.checkpointing import CheckpointWriteError, readable_checkpoint

    mount, resize = small_disk
    config, _ = _config("fit", shapes_root, folders, tmp_path)
    every_step = ["checkpoint.keep=-1", "logging.tensorboard=false"]
    straight = train(load_train_config(config, [f"run_dir={tmp_path / 'straight'}", *every_step]))
    checkpoint_bytes = max(p.stat().st_size for p in (straight.run_dir / "0-train" / "checkpoints").glob("step*.ckpt"))
    resize(int(2.5 * checkpoint_bytes) + 2**20)  # room for two checkpoints and the configs
    run_dir = mount / "run"
    with pytest.raises(CheckpointWriteError) as full:
        train(load_train_config(config, [f"run_dir={run_dir}", *every_step]))
    assert "No space left on device" in str(full.value) and "\n" not in str(full.value)
    checkpoints = run_dir / "0-train" / "checkpoints"
    written = list(checkpoints.glob("*.ckpt"))
    assert written and all(readable_checkpoint(p) for p in written)  # what is there is complete
    assert not list(checkpoints.glob(".*.tmp-*"))  # and no half-written temporary is left

    resize(256 * 2**20)  # space freed
    resumed = train(load_train_config(config, [f"run_dir={run_dir}", "resume=auto", *every_step]))
    a, b = read_weights(straight.model_dir), read_weights(resumed.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
