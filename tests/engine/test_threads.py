"""A run gives PyTorch the intra-op threads `trainer.threads` asks for (else the cores its loader workers leave)."""

from __future__ import annotations

import torch

from vidlab.engine.config import load_train_config
from vidlab.engine.runner import train


def test_a_run_uses_trainer_threads(evl_dummy_config, monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: seen.append(torch.get_num_threads()) or closure())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train(load_train_config(evl_dummy_config(trainer={"threads": 1})))
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1, 1, 1]  # every optimizer step of the run
