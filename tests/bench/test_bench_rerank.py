"""`vidlab bench rerank` on the tiny config: an ITC-only row and a row per re-ranked k."""

import pytest

from vidlab.bench.common import BenchError
from vidlab.bench.rerank import render, singularity_rerank_benchmark
from vidlab.cli.main import main


def test_rerank_scores_top_k_pairs_in_both_directions():
    common = dict(num_videos=5, num_texts=4, num_frames=2, device="cpu", precision="32")
    itc = singularity_rerank_benchmark("singularity-tiny", k=0, **common)
    top3 = singularity_rerank_benchmark("singularity-tiny", k=3, **common)
    everything = singularity_rerank_benchmark("singularity-tiny", k=10, **common)
    assert itc.itm_pairs == 0
    assert top3.itm_pairs == 5 * 3 + 4 * 3  # each video's 3 texts + each text's 3 videos
    assert everything.itm_pairs == 5 * 4 + 4 * 5  # k capped at the candidates
    assert top3.total_s == pytest.approx(top3.features_s + top3.scoring_s)
    assert top3.ms_per_query == pytest.approx(1000 * top3.scoring_s / 9)
    table = render([itc, top3])
    assert "ITC only" in table and "ITC + ITM top-3" in table and "1.00x" in table


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(BenchError, match="precision"):
        singularity_rerank_benchmark("singularity-tiny", num_videos=2, num_texts=2, num_frames=1, k=1, device="cpu", precision="fp8")
    with pytest.raises(BenchError, match="k must be"):
        singularity_rerank_benchmark("singularity-tiny", num_videos=2, num_texts=2, num_frames=1, k=-1, device="cpu", precision="32")
    with pytest.raises(SystemExit) as usage:
        main(["bench", "rerank", "--k", "0"])
    assert usage.value.code == 2 and "argument --k: must be >= 1, got 0" in capsys.readouterr().err


def test_cli_prints_one_row_per_k_each_measured_in_its_own_process(capsys):
    assert main(["bench", "rerank", "--k", "2", "--videos", "4", "--texts", "4"]) == 0
    out = capsys.readouterr().out
    assert "ITC + ITM top-2" in out and "ITC only" in out
    rows = [line for line in out.splitlines() if line.startswith("| singularity-tiny")]
    assert len(rows) == 2
    assert all(float(row.split("|")[-3]) > 100 for row in rows)  # peak RSS MiB of a process with torch loaded
