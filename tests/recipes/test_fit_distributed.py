"""Two processes (torchrun, gloo on loopback, CPU) train like one process at the same global batch."""

from __future__ import annotations

import pytest
import torch
from _fit_setup import loss_curve, read_weights, tiny_config, write_config
from _torchrun import torchrun_train

from vidlab.engine.config import load_train_config
from vidlab.engine.runner import train


def test_two_processes_match_one_process(tmp_path, shapes_root, text_folder_no_dropout):
    config = tiny_config(shapes_root, text_folder_no_dropout, tmp_path / "runs")
    config["logging"]["tensorboard"] = True
    # FiT's zero-initialised time attention has exactly-zero gradients that the two layouts round to
    # different ~1e-9 noise, which Adam turns into full-size steps; a random init has none of those.
    config["model"]["video"]["time_init"] = "rand"
    path = write_config(tmp_path / "ddp.yaml", config)

    done = torchrun_train(path, tmp_path / "two")
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
