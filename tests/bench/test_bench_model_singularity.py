"""`vidlab bench model singularity` on the tiny config: training rows per frame setup, re-ranking rows per k."""

import pytest

from vidlab.bench.common import BenchError
from vidlab.bench.model_singularity import (
    parse_train_setup,
    render,
    singularity_rerank_benchmark,
    singularity_step_benchmark,
)
from vidlab.cli.main import main
from vidlab.models import create_model


def _params_m(**overrides) -> float:
    return sum(p.numel() for p in create_model("singularity-tiny", **overrides).parameters()) / 1e6


def test_step_benchmark_builds_the_asked_variant():
    plain = singularity_step_benchmark(
        "singularity-tiny", batch_size=3, num_frames=2, steps=1, warmup=1, device="cpu", precision="32"
    )
    temporal = singularity_step_benchmark(
        "singularity-tiny", batch_size=3, num_frames=2, temporal=True, task="retrieval", steps=1, warmup=0,
        device="cpu", precision="bf16",
    )
    assert plain.params_m == pytest.approx(_params_m(task="pretrain", num_frames=2))  # with the MLM head
    assert temporal.params_m == pytest.approx(
        _params_m(num_frames=2, add_temporal_embed=True, **{"temporal_vision_encoder.enable": True})
    )
    assert temporal.params_m > _params_m(num_frames=2)  # the temporal encoder's parameters
    assert (plain.losses, temporal.losses) == ("ITC+ITM+MLM", "ITC+ITM")
    assert (plain.num_frames, plain.image_size, plain.batch_size) == (2, 32, 3)
    assert plain.step_ms > 0 and plain.clips_per_s == pytest.approx(3000 / plain.step_ms)
    table = render([plain, temporal], [])
    assert "| singularity-tiny | cpu    | 32        | ITC+ITM+MLM |" in table
    assert "ITC+ITM " in table and "True" in table


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
    table = render([], [itc, top3])
    assert "ITC only" in table and "ITC + ITM top-3" in table and "1.00x" in table


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(BenchError, match="precision"):
        singularity_step_benchmark("singularity-tiny", batch_size=2, num_frames=1, steps=1, warmup=0, device="cpu", precision="fp8")
    with pytest.raises(BenchError, match="temporal encoder"):
        singularity_step_benchmark("singularity-tiny", batch_size=2, num_frames=1, temporal=True, steps=1, warmup=0, device="cpu", precision="32")
    with pytest.raises(BenchError, match="k must be"):
        singularity_rerank_benchmark("singularity-tiny", num_videos=2, num_texts=2, num_frames=1, k=-1, device="cpu", precision="32")
    assert parse_train_setup("4t") == (4, True) and parse_train_setup("1") == (1, False)
    with pytest.raises(BenchError, match="frame count"):
        parse_train_setup("t")
    assert main(["bench", "model", "singularity", "--frames", "x4", "--k"]) == 2
    assert "x4" in capsys.readouterr().err


def test_cli_prints_both_tables(capsys):
    """One training setup and one k, each row in its own measurement process (peak RSS measured)."""
    args = ["bench", "model", "singularity", "--frames", "1", "--steps", "1", "--warmup", "0", "--batch-size", "2",
            "--k", "2", "--videos", "4", "--texts", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ITC+ITM+MLM" in out and "ITC + ITM top-2" in out and "ITC only" in out
    rows = [line for line in out.splitlines() if line.startswith("| singularity-tiny")]
    assert len(rows) == 3
    assert all(float(row.split("|")[-3]) > 100 for row in rows)  # peak RSS MiB of a process with torch loaded
