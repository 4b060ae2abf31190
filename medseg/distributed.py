"""Process-group setup for ``torchrun`` (DDP): NCCL on CUDA, gloo on CPU; a no-op in a single process."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medseg.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when running under torchrun with more than one process."""
        return self.world_size > 1

    def gather(self, items: list) -> list:
        """Concatenate every process's ``items`` (in rank order) on every process."""
        if not self.distributed:
            return items
        parts: list[list] = [[] for _ in range(self.world_size)]
        dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]

    def barrier(self) -> None:
        """Wait for every process (no-op when not distributed)."""
        if self.distributed:
            dist.barrier()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else the CPU; ``cpu``, ``cuda`` and ``cuda:N``
    pass through once this machine is known to have them.

    Raises:
        ConfigError: an unknown device name, or a CUDA device that this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        _check_cuda_index(device.index or 0, f"device {name!r}")
    return device


def _check_cuda_index(index: int, what: str) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise ConfigError(f"{what} needs CUDA device {index}, and this machine has {count}; use --device cpu")


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group that ``torchrun`` describes in ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``.

    Each process takes CUDA device ``LOCAL_RANK`` when ``device`` resolves to CUDA (backend NCCL),
    else the CPU (backend gloo).

    Raises:
        ConfigError: ``device`` is unknown or absent, or there are fewer CUDA devices than processes
            on this node.
    """
    requested = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(0, 1, requested)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = requested.type == "cuda"
    if use_cuda:
        _check_cuda_index(local_rank, f"torchrun's process with LOCAL_RANK={local_rank}")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), dev)


def shutdown_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
