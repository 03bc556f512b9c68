"""The processes of a run: rank, device, and the few collectives the recipe needs.

One process (the default) or `torchrun`'s data parallelism (DDP; gloo on CPU, NCCL on GPU).
Every collective is a no-op on one process, so the recipe never branches on it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """This process's place in the run (from torchrun's environment variables)."""

    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def from_env(cls) -> Processes:
        """Read RANK / WORLD_SIZE / LOCAL_RANK, pick the device, join the process group."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if world_size > 1 and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=30))
        return cls(rank, world_size, device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def all_sum(self, x: Any) -> torch.Tensor:
        """`x` summed over processes (a copy, on this process's device)."""
        x = torch.as_tensor(x, device=self.device).clone()
        if self.distributed:
            dist.all_reduce(x)
        return x

    def agree(self, flag: bool) -> bool:
        """True on every process if `flag` is true on any."""
        return bool(self.all_sum(torch.tensor(int(flag))).item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` under DDP when distributed (it registers the parameters that require grad
        when built: wrap again after unfreezing), else `module` itself."""
        if not self.distributed:
            return module
        return torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def no_sync(self, module: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """DDP's `no_sync` on the micro-batches before a step's last (gradients accumulate
        locally and are averaged once)."""
        if sync or not self.distributed:
            return contextlib.nullcontext()
        return module.no_sync()  # type: ignore[operator]


def close_process_group() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
