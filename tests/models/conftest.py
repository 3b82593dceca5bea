"""Fixtures of the model tests (helpers in _fit_fixtures.py)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
from _fit_fixtures import TINY_OFFICIAL_ARGS, official_fit_state_dict, save_official_checkpoint


@pytest.fixture(scope="session")
def official_4f(tmp_path_factory) -> tuple[Path, OrderedDict]:
    """A 4-frame official trainer checkpoint ('module.' keys) and its state dict."""
    state = official_fit_state_dict(num_frames=4, seed=1)
    path = save_official_checkpoint(tmp_path_factory.mktemp("official") / "model_best.pth", state, TINY_OFFICIAL_ARGS)
    return path, state
