"""scripts/torchrun_train.sh keeps the caller's folder, so a config path relative to it (and relative paths in
overrides) mean what they meant where the command was typed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "torchrun_train.sh"


def test_the_script_runs_torchrun_in_the_callers_folder_with_its_paths(tmp_path):
    fake_python = tmp_path / "python"  # records what torchrun would have been given, and where
    fake_python.write_text('#!/bin/sh\npwd > "$RECORD"\nprintf "%s\\n" "$@" >> "$RECORD"\n')
    fake_python.chmod(0o755)
    user_folder = tmp_path / "experiments"
    (user_folder / "configs").mkdir(parents=True)
    (user_folder / "configs" / "mine.yaml").write_text("recipe: fit\n")
    record = tmp_path / "record.txt"
    env = {**os.environ, "PYTHON": str(fake_python), "RECORD": str(record)}
    done = subprocess.run(
        ["bash", str(SCRIPT), "configs/mine.yaml", "2", "run_dir=runs/a"], cwd=user_folder, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cwd, *args = record.read_text().splitlines()
    assert Path(cwd) == user_folder.resolve()
    assert args[-5:] == ["-m", "vidlab.cli.main", "train", "configs/mine.yaml", "run_dir=runs/a"]
    assert (Path(cwd) / args[-2]).samefile(user_folder / "configs" / "mine.yaml")
    assert args[:3] == ["-m", "torch.distributed.run", "--nnodes"] and "--nproc_per_node" in args
