from vidlab.cli.main import main


def test_demo_runs_the_pipeline_on_shapesbench(shapesbench_tiny, capsys):
    args = ["demo", "--data", str(shapesbench_tiny), "--size", "tiny", "--batches", "1", "--workers", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "batch video (16, 4, 3, 64, 64) torch.float32" in out
    assert "bad samples: 0 of 16 reads" in out
    motion = next(line for line in out.splitlines() if line.startswith("| motion"))
    assert "| yes " in motion  # the motion task is marked as needing time


def test_demo_reports_a_bad_data_folder(tmp_path, capsys):
    (tmp_path / "junk.txt").write_text("not a dataset")
    assert main(["demo", "--data", str(tmp_path), "--size", "tiny"]) == 2
    assert "vidlab: error:" in capsys.readouterr().err
