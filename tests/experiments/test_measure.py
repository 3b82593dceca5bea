"""The shared experiment helpers of vidlab.experiments.measure."""

from __future__ import annotations

from vidlab.experiments.measure import set_aside


def test_an_earlier_run_is_set_aside_not_deleted(tmp_path):
    run_dir = tmp_path / "retrieval"
    assert set_aside(run_dir) is None
    for number in (1, 2):
        (run_dir / "0-train" / "model").mkdir(parents=True)
        (run_dir / "0-train" / "model" / "model.safetensors").write_text(f"weights {number}")
        assert set_aside(run_dir) == tmp_path / f"retrieval.earlier-{number}" and not run_dir.exists()
    assert (tmp_path / "retrieval.earlier-2" / "0-train" / "model" / "model.safetensors").read_text() == "weights 2"
    assert (tmp_path / "retrieval.earlier-1" / "0-train" / "model" / "model.safetensors").read_text() == "weights 1"
