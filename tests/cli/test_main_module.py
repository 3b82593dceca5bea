"""`python -m vidlab` is the `vidlab` command: same parser, same exit codes, same one-line errors."""

from __future__ import annotations

import subprocess
import sys


def _python_m_vidlab(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vidlab", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_python_m_vidlab_runs_the_cli(tmp_path):
    done = _python_m_vidlab("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: vidlab") and "convert" in done.stdout


def test_python_m_vidlab_exits_with_the_cli_status_and_one_line_error(tmp_path):
    done = _python_m_vidlab("eval", "no_such_run", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["vidlab: error: no_such_run: no such config, run folder or checkpoint"]
