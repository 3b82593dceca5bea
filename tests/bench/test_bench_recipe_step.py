"""`vidlab bench model CONFIG`: a recipe's own training step on its own batch, one row per variant."""

from __future__ import annotations

from pathlib import Path

from vidlab.cli.main import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "fit" / "shapes_tiny.yaml"


def test_a_config_and_its_variants_are_timed_side_by_side(tmp_path, capsys):
    args = ["bench", "model", str(CONFIG), f"data.root={tmp_path / 'shapes'}", "data.train.0.batch_size=4",
            "--compare", "model.video.num_frames=2 data.num_frames=2", "--steps", "1", "--warmup", "0"]
    assert main(args) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][2:]
    assert [r[1].strip() for r in rows] == ["config", "model.video.num_frames=2 data.num_frames=2"]
    assert all(r[2].strip() == "fit" and r[5].strip() == "4" and float(r[8]) > 0 and float(r[10]) > 0 for r in rows)
