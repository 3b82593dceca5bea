"""Shared argparse pieces: counts with a lower bound are usage errors that name their option."""

from __future__ import annotations

import argparse

import pytest

from vidlab.cli._group import at_least
from vidlab.cli.main import main


def test_at_least_parses_counts_and_rejects_smaller_or_non_integers():
    parse = at_least(1)
    assert parse("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="must be >= 1, got 0"):
        parse("0")
    with pytest.raises(ValueError):
        parse("two")
    assert at_least(0)("0") == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "rerank", "--videos", "0"], "argument --videos: must be >= 1, got 0"),
        (["bench", "model", "unused.yaml", "--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
        (["data", "synth", "--out", "unused", "--count", "x"], "argument --count: invalid integer >= 1 value: 'x'"),
        (["experiment", "singularity-direction", "unused", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
    ],
)
def test_bad_counts_on_the_command_line_are_usage_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written
    with pytest.raises(SystemExit) as usage:
        main(argv)
    assert usage.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
