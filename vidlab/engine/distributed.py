"""Process-group helpers: early initialisation from the launcher's environment, and object gathering.

Every process of a torchrun or SLURM launch runs the same `vidlab train`; they must agree on one run
folder before Lightning starts, so the process group is opened here from the launcher's variables (via
Lightning's cluster environments) and Lightning reuses it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def cluster_environment() -> Any | None:
    """Lightning's environment of the launcher that started this process (torchrun, SLURM), if any."""
    from lightning.fabric.plugins.environments import (
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect():
        return SLURMEnvironment()
    return None


def launcher_world() -> tuple[int, int, int]:
    """(global rank, world size, processes on this node) as the launcher set them; (0, 1, 1) standalone."""
    env = cluster_environment()
    if env is None:
        return 0, 1, 1
    world = env.world_size()
    nodes = max(1, _node_count(env))
    return env.global_rank(), world, max(1, world // nodes)


def _node_count(env: Any) -> int:
    for key in ("SLURM_NNODES", "GROUP_WORLD_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return env.world_size() // int(local) if local.isdigit() and int(local) else 1


def init_process_group(accelerator: str) -> bool:
    """Open the default process group when a launcher started several processes; True if one is open."""
    if dist.is_available() and dist.is_initialized():
        return True
    env = cluster_environment()
    if env is None or env.world_size() <= 1:
        return False
    use_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(env.local_rank())
    init_method = f"tcp://{env.main_address}:{env.main_port}"
    log.debug("process group: %s, rank %d of %d via %s", backend, env.global_rank(), env.world_size(), init_method)
    dist.init_process_group(backend, init_method=init_method, rank=env.global_rank(), world_size=env.world_size())
    return True


def world() -> tuple[int, int]:
    """(rank, world size) of the open process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (tensors travel through the CPU)."""
    if world()[1] == 1:
        return [value]
    out: list[Any] = [None] * world()[1]
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
