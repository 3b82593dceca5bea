"""Two processes (torchrun, gloo on loopback, CPU) train like one process at the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from _fit_setup import loss_curve, read_weights, tiny_config, write_config

from vidlab.engine.config import load_train_config
from vidlab.engine.runner import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path, shapes_root, text_folder_no_dropout):
    config = tiny_config(shapes_root, text_folder_no_dropout, tmp_path / "runs")
    config["logging"]["tensorboard"] = True
    # FiT's zero-initialised time attention has exactly-zero gradients that the two layouts round to
    # different ~1e-9 noise, which Adam turns into full-size steps; a random init has none of those.
    config["model"]["video"]["time_init"] = "rand"
    path = write_config(tmp_path / "ddp.yaml", config)

    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "vidlab.cli.main", "train", str(path), f"run_dir={tmp_path / 'two'}",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    one = train(load_train_config(path, [f"run_dir={tmp_path / 'one'}"]))

    # the global batch of every step is the same 4 clips: rank r trains on the r-th half of it
    two_curve = loss_curve(tmp_path / "two" / "0-train" / "tensorboard")
    one_curve = loss_curve(one.run_dir / "0-train" / "tensorboard")
    assert [s for s, _ in two_curve] == [s for s, _ in one_curve] == list(range(6))
    assert [v for _, v in two_curve] == pytest.approx([v for _, v in one_curve], abs=1e-5)
    a, b = read_weights(tmp_path / "two" / "0-train" / "model"), read_weights(one.model_dir)
    # a key bias has a mathematically zero gradient (softmax ignores it), so Adam moves it by rounding
    # noise; every other weight agrees closely
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a if not k.endswith("qkv.bias"))
    assert "bad samples: 0 of 12 reads" in done.stdout  # rank 0 read half of the 6 x 4 clips
