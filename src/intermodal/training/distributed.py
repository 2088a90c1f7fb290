"""Data-parallel training when launched by ``torchrun``; a no-op in a single process.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address);
with ``WORLD_SIZE > 1`` the process group is started with NCCL on CUDA and Gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from intermodal.errors import IntermodalError

__all__ = ["Distributed", "setup_distributed"]


@dataclass
class Distributed:
    """This process's place in the run.

    Attributes:
        rank: global rank (0 writes files and logs).
        world_size: number of processes.
        device: the torch device this process trains on.
        owns_group: whether :func:`setup_distributed` started the process group (and so
            :meth:`close` ends it).
    """

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes (in place), a no-op in one process."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise IntermodalError(
            f"environment variable {name} must be an integer, not {value!r}"
        ) from None


def setup_distributed(device: str = "auto") -> Distributed:
    """Pick the device and, under ``torchrun`` with several processes, join the group.

    Args:
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``. With CUDA and several
            processes, each uses ``cuda:LOCAL_RANK``.

    Returns:
        A :class:`Distributed`.

    Raises:
        IntermodalError: CUDA asked for but absent, or more processes on a node than GPUs.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise IntermodalError("device cuda was asked for, but no CUDA device is available")
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise IntermodalError(
                f"LOCAL_RANK {local_rank} needs a GPU of its own, but this node has "
                f"{torch.cuda.device_count()}"
            )
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device(device)
    if world_size <= 1:
        return Distributed(0, 1, torch_device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        owns = True
    return Distributed(dist.get_rank(), dist.get_world_size(), torch_device, owns)
