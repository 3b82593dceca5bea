"""`vidlab train` in several CPU processes started by torchrun (gloo on loopback), for the distributed tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(config: Path, run_dir: Path, processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `vidlab train CONFIG run_dir=RUN_DIR` in `processes` processes; the caller checks the return code."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "vidlab.cli.main", "train", str(config), f"run_dir={run_dir}",
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
