"""`vidlab demo` end to end on ShapesBench tiny with a two-stage tiny config (a few steps per stage)."""

import json
import re
from pathlib import Path

import pytest

from vidlab.cli.main import main

REPO = Path(__file__).resolve().parents[2]
FAST = ["debug=true", "debug_steps=2", "data.num_workers=0", "logging.progress_bar=false", "checkpoint.every_n_steps=100"]


@pytest.fixture(scope="module")
def two_stage_config(tmp_path_factory) -> Path:
    """shapes_tiny with FiT's curriculum: 1 frame, then 4 frames."""
    path = tmp_path_factory.mktemp("config") / "tiny_curriculum.yaml"
    path.write_text(
        f"_base_: {REPO / 'configs' / 'fit' / 'shapes_tiny.yaml'}\n"
        "name: demo_tiny\n"
        "stages:\n"
        "  - {name: 1frame, model: {video: {num_frames: 1}}, data: {num_frames: 1}, trainer: {max_epochs: 1}}\n"
        "  - {name: 4frames, trainer: {max_epochs: 1}}\n"
    )
    return path


@pytest.fixture(scope="module")
def demo_run(shapesbench_tiny, two_stage_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    args = ["demo", "--config", str(two_stage_config), "--data", str(shapesbench_tiny), "--out", str(out), *FAST]
    return main(args), out


def test_demo_writes_the_report(demo_run, capsys):
    code, out = demo_run
    assert code == 0
    (run_dir,) = (out / "demo_tiny").iterdir()
    report = (run_dir / "report.html").read_text()
    for stage in ("1frame", "4frames"):
        for subset in ("all", "temporal"):
            for direction in ("t2v", "v2t"):
                assert re.search(rf"<td>{stage}</td><td>{subset}</td><td>{direction}</td>(<td>[\d.]+</td>){{4}}", report)
    assert (run_dir / "curves.png").stat().st_size > 1000
    thumbs = re.findall(r'<img src="(thumbs/[^"]+\.png)"', report)
    assert len(thumbs) == 2 * 7 * 5  # 2 stages x 7 queries x top-5 (8 test videos)
    assert all((run_dir / t).is_file() for t in thumbs)
    assert "a red square moves left" in report and "a red square moves right" in report


def test_demo_table_matches_each_stage_evaluation(demo_run):
    """The report's numbers are the engine's evaluation of each stage, not recomputed elsewhere."""
    _, out = demo_run
    (run_dir,) = (out / "demo_tiny").iterdir()
    report = (run_dir / "report.html").read_text()
    first = json.loads((run_dir / "0-1frame" / "eval_test.json").read_text())["metrics"]
    last = json.loads((run_dir / "eval_test.json").read_text())["metrics"]
    for stage, metrics in (("1frame", first), ("4frames", last)):
        row = f"<td>{stage}</td><td>temporal</td><td>t2v</td><td>{metrics['temporal/t2v_R1']:.1f}</td><td>{metrics['temporal/t2v_R5']:.1f}</td>"
        assert row in report


def test_demo_reports_a_bad_data_folder(tmp_path, two_stage_config, capsys):
    (tmp_path / "junk.txt").write_text("not a dataset")
    runs = tmp_path / "runs"
    assert main(["demo", "--config", str(two_stage_config), "--data", str(tmp_path), "--out", str(runs), *FAST]) == 2
    assert "vidlab: error:" in capsys.readouterr().err
    assert not runs.exists()


def test_demo_help_names_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    for option in ("--data", "--config", "--out", "KEY=VALUE"):
        assert option in text
