"""Running an experiment's steps: in order in this process, or several at once in their own processes, each step
after the ones it starts from, each with its own log; a failure stops what has not started and names its log."""

from __future__ import annotations

import math
import multiprocessing
import os
from pathlib import Path

import pytest

from vidlab.experiments.steps import Progress, Step, StepError, log_file, run_steps


def _record(journal: Path, name: str) -> tuple[str, int]:
    """Appends `name` to the journal; (what the journal held before, this process's id)."""
    before = journal.read_text() if journal.exists() else ""
    journal.write_text(before + name + "\n")
    print(f"step {name} ran")
    return before, os.getpid()


def test_one_job_runs_the_steps_in_order_in_this_process(tmp_path: Path, capsys):
    journal = tmp_path / "journal"
    steps = [Step("a", "first", _record, (journal, "a")), Step("b", "second", _record, (journal, "b"), ("a",))]
    progress = Progress(len(steps))
    done = run_steps(steps, progress, logs=tmp_path / "logs")
    assert done["a"] == ("", os.getpid()) and done["b"] == ("a\n", os.getpid())
    printed = capsys.readouterr().out
    assert "[1/2] first" in printed and "[2/2] second" in printed and "step b ran" in printed
    assert set(progress.seconds) == {"a", "b"} and not (tmp_path / "logs").exists()


def test_several_jobs_run_each_step_after_its_start_in_other_processes(tmp_path: Path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    steps = [
        Step("a", "a", _record, (first, "a")),
        Step("b", "b", _record, (second, "b")),
        Step("a/then", "after a", _record, (first, "a/then"), ("a",)),
        Step("both", "after both", _record, (second, "both"), ("a/then", "b")),
        Step("start method", "how a step's DataLoader workers start", multiprocessing.get_start_method),
    ]
    progress = Progress(len(steps))
    done = run_steps(steps, progress, jobs=2, logs=tmp_path / "logs")
    assert done.pop("start method") == multiprocessing.get_start_method()  # not the 'spawn' the step's process began with
    assert done["a/then"][0] == "a\n" and done["both"][0] == "b\n"
    assert {pid for _, pid in done.values()} - {os.getpid()} == {pid for _, pid in done.values()}
    assert log_file(tmp_path / "logs", "a/then").read_text() == "step a/then ran\n"
    printed = capsys.readouterr().out
    assert "step a ran" not in printed and "(log: " in printed and printed.count("done in") == 5
    assert set(progress.seconds) == {step.key for step in steps}


def test_a_failed_step_names_its_log_and_nothing_after_it_starts(tmp_path: Path):
    journal = tmp_path / "journal"
    steps = [
        Step("bad", "fails", math.sqrt, (-1.0,)),
        Step("after_bad", "never starts", _record, (journal, "after_bad"), ("bad",)),
    ]
    with pytest.raises(StepError, match=r"bad: ValueError: math domain error \(log: .*bad\.log\); 1 step\(s\) not started"):
        run_steps(steps, Progress(len(steps)), jobs=2, logs=tmp_path / "logs")
    assert not journal.exists()
    assert "Traceback" in log_file(tmp_path / "logs", "bad").read_text()


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([Step("a", "a", print), Step("a", "again", print)], "unique"),
        ([Step("a", "a", print, (), ("b",)), Step("b", "b", print)], "not earlier steps"),
    ],
)
def test_a_plan_whose_steps_cannot_run_in_order_is_refused(tmp_path: Path, steps: list[Step], message: str):
    with pytest.raises(ValueError, match=message):
        run_steps(steps, Progress(len(steps)), logs=tmp_path)
