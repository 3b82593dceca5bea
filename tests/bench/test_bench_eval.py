"""`vidlab bench eval`: both methods run interleaved on the same matrices and agree; the table shows each size."""

from __future__ import annotations

import json

import pytest
import torch

from vidlab.bench.eval import METHODS, official_fit_metrics, similarity_matrix
from vidlab.cli.main import main
from vidlab.tasks.retrieval import CaptionIndex, fit_retrieval_metrics


def test_the_benchmark_matrix_has_ties_and_both_methods_agree_on_it():
    sims = similarity_matrix(300, seed=1)
    assert len(set(sims.ravel().tolist())) < sims.size // 10  # rounded: many tied similarities
    ours = fit_retrieval_metrics(torch.from_numpy(sims), CaptionIndex.consecutive(300, 1), chunk_size=64)
    assert ours == official_fit_metrics(sims)


def test_command_prints_every_size_and_records_interleaved_runs(tmp_path, capsys):
    results = tmp_path / "eval.json"
    assert main(["bench", "eval", "--sizes", "40", "90", "--repeats", "2", "--json", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "| 40 x 40 " in printed and "| 90 x 90 " in printed and "transcription" in printed
    runs = json.loads(results.read_text())["runs"]
    assert [(r["size"], r["method"]) for r in runs] == [(s, m) for s in (40, 90) for _ in range(2) for m in METHODS]
    assert all(r["seconds"] > 0 and r["extra_mib"] >= 0 for r in runs)
    with pytest.raises(SystemExit) as usage:  # a usage error naming the option
        main(["bench", "eval", "--sizes", "5"])
    assert usage.value.code == 2 and "--sizes: must be >= 10, got 5" in capsys.readouterr().err
