"""Joining a torchrun process group (or standing alone as one process)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from convscope.errors import ConvscopeError
from convscope.train.common import resolve_device

__all__ = ["Process", "setup_distributed"]


@dataclass
class _Dist:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor, op: Any = None) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op)
        return t

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for alone)."""
        if self.active:
            dist.barrier()

    def leave(self) -> None:
        """Leave the process group, if this process joined it."""
        if self.owns_group:
            dist.destroy_process_group()
            self.owns_group = False


def _setup_distributed(device_spec: str) -> _Dist:
    """Join the torchrun process group when there is one; otherwise one process."""
    initialized = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialized else int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(device=resolve_device(device_spec))
    if not dist.is_available():
        raise ConvscopeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = resolve_device(device_spec)
    if device.type == "cuda":
        # one GPU per process, the one torchrun assigned
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if initialized:
        return _Dist(dist.get_rank(), world, device, owns_group=False)
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ConvscopeError(
                f"WORLD_SIZE={world} but {var} is not set: launch with torchrun "
                "(torchrun --nproc_per_node=N -m convscope train ...)"
            )
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), device, owns_group=True)


setup_distributed = _setup_distributed
"""Join the torchrun process group when there is one (public name, for the dataset runs)."""

Process = _Dist
"""This process in a (possibly one-process) torchrun run (public name, for the dataset runs)."""
