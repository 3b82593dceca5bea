"""The shared experiment helpers of vidlab.experiments.measure."""

from __future__ import annotations

import pytest

from vidlab.errors import ConfigError
from vidlab.experiments.measure import replacing, set_aside


def test_an_earlier_run_is_set_aside_not_deleted(tmp_path):
    run_dir = tmp_path / "retrieval"
    assert set_aside(run_dir) is None
    for number in (1, 2):
        (run_dir / "0-train" / "model").mkdir(parents=True)
        (run_dir / "0-train" / "model" / "model.safetensors").write_text(f"weights {number}")
        assert set_aside(run_dir) == tmp_path / f"retrieval.earlier-{number}" and not run_dir.exists()
    assert (tmp_path / "retrieval.earlier-2" / "0-train" / "model" / "model.safetensors").read_text() == "weights 2"
    assert (tmp_path / "retrieval.earlier-1" / "0-train" / "model" / "model.safetensors").read_text() == "weights 1"


def test_an_earlier_run_comes_back_when_its_replacement_fails_before_writing(tmp_path):
    """A config error of the new run (found before training writes anything) must not leave the finished run aside."""
    run_dir = tmp_path / "templates"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "model.safetensors").write_text("finished")
    with pytest.raises(ConfigError), replacing(run_dir):
        assert not run_dir.exists()
        raise ConfigError("19 samples cannot fill one batch of 32")
    assert (run_dir / "model" / "model.safetensors").read_text() == "finished"
    assert not (tmp_path / "templates.earlier-1").exists()
    with pytest.raises(RuntimeError), replacing(run_dir):  # a failure after the new run wrote its folder
        (run_dir / "0-train").mkdir(parents=True)
        raise RuntimeError("step 300: NaN loss")
    assert (tmp_path / "templates.earlier-1" / "model" / "model.safetensors").read_text() == "finished"
    assert (run_dir / "0-train").is_dir()
