"""The timed training step of `vidlab bench model CONFIG`, and the device helpers every benchmark shares.

A step = forward under autocast at the benchmark's precision, backward (through a GradScaler for fp16), AdamW
step. The mean wall time covers `steps` steps after `warmup` untimed ones (allocator and autotuning settle).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from vidlab.bench.common import BenchError

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_device(device: str, precision: str) -> None:
    """A clear error for a precision we do not run or a GPU torch cannot see."""
    if precision not in PRECISIONS:
        raise BenchError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda asked for, but torch sees no GPU")


def autocast(device: str, precision: str) -> AbstractContextManager[Any]:
    dtype = PRECISIONS[precision]
    return torch.autocast(device.split(":")[0], dtype=dtype) if dtype is not None else nullcontext()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def cuda_peak_mib(device: str) -> float:
    """The CUDA allocator's peak since the last reset; NaN on the CPU (measured there as a process's RSS)."""
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")


def time_training_steps(
    loss_of_batch: Callable[[], torch.Tensor],
    params: Iterable[torch.nn.Parameter],
    *,
    steps: int,
    warmup: int,
    device: str,
    precision: str,
) -> tuple[float, float]:
    """(mean seconds per step, CUDA peak MiB over the timed steps) of AdamW steps on `loss_of_batch()`."""
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-5)
    scaler = torch.amp.GradScaler(enabled=precision == "fp16")

    def step() -> None:
        with autocast(device, precision):
            loss = loss_of_batch()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    reset_peak_memory(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps, cuda_peak_mib(device)
