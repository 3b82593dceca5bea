"""Running an experiment's steps: in order in this process, or several at once in their own processes, each step
after the ones it starts from, each with its own log; a failure stops what has not started and names its log."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
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


def _sleep(pid_file: Path) -> None:
    pid_file.write_text(str(os.getpid()))
    time.sleep(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


LAUNCHES = {
    "steps": "from vidlab.experiments.steps import Progress, Step, run_steps;"
    "run_steps([Step('s', 's', _sleep, (pid_file,))], Progress(1), jobs=2, logs=Path(sys.argv[3]))",
    "isolated": "from vidlab.bench.common import run_isolated; run_isolated(_sleep, {'pid_file': pid_file})",
}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to tell a zombie from a running process")
@pytest.mark.parametrize("launch", sorted(LAUNCHES))
def test_a_killed_experiment_leaves_no_step_running(tmp_path: Path, launch: str):
    """`timeout 590 vidlab experiment ...` then a rerun: the killed run's steps (`run_steps`' processes, and the
    measured trainings of `run_isolated`) must not train on as orphans."""
    pid_file = tmp_path / "step.pid"
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); from test_steps import _sleep;"
        "pid_file = Path(sys.argv[2]);" + LAUNCHES[launch]
    )
    experiment = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent), str(pid_file), str(tmp_path / "logs")])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        step = int(pid_file.read_text())
        experiment.send_signal(signal.SIGTERM)
        experiment.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(step) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(step), "the step process outlived the experiment"
    finally:
        experiment.kill()
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
