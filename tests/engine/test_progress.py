"""What a run prints: progress lines where no bar is seen (stdout not a terminal), and none of Lightning's known
noise."""

from __future__ import annotations

import re
import sys
import warnings
from types import SimpleNamespace

from vidlab.engine.config import load_train_config
from vidlab.engine.progress import ProgressLines
from vidlab.engine.runner import train

LINE = re.compile(r"^step (\d)/4 \(\d+%\) \| [\d.]+ (steps/s|s/step) \| ETA \d+:\d\d \| loss \d+\.\d{4}$")


def test_a_run_without_a_terminal_prints_progress_lines(evl_dummy_config, capsys):
    train(load_train_config(evl_dummy_config(logging={"progress_every_s": 1e-6})))
    out = capsys.readouterr().out.splitlines()
    steps = [int(m.group(1)) for line in out if (m := LINE.match(line))]
    assert steps == [1, 2, 3, 4]  # an interval shorter than a step: a line after each
    ends = [line for line in out if line.startswith("epoch ")]
    assert [e.split(" | ")[:2] for e in ends] == [["epoch 1/2 done", "step 2/4 (50%)"], ["epoch 2/2 done", "step 4/4 (100%)"]]


def test_progress_lines_wait_for_their_interval_and_stay_off_under_a_visible_bar(monkeypatch, capsys):
    now = [0.0]
    lines = ProgressLines(interval_s=30, clock=lambda: now[0])
    trainer = SimpleNamespace(
        progress_bar_callback=None, is_global_zero=True, max_steps=100, global_step=0, callback_metrics={},
        current_epoch=0, max_epochs=1,
    )  # fmt: skip
    lines.on_train_start(trainer, SimpleNamespace())
    for step, at in ((10, 29.0), (20, 40.0)):
        trainer.global_step, now[0] = step, at
        lines.on_train_batch_end(trainer, None, None, None, step)
    assert capsys.readouterr().out == "step 20/100 (20%) | 2.0 s/step | ETA 2:40\n"
    monkeypatch.setattr(sys, "stdout", SimpleNamespace(isatty=lambda: True))
    lines.on_train_start(SimpleNamespace(**{**vars(trainer), "progress_bar_callback": object()}), SimpleNamespace())
    assert not lines.enabled


def test_lightnings_known_noise_is_not_shown(evl_dummy_config):
    config = evl_dummy_config(model={"backbone": {"layers": 2, "freeze": True}})  # frozen: modules in eval mode
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(load_train_config(config))
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "LeafSpec" in m or "in eval mode at the start of training" in m]
