"""Data-parallel training: the process group torchrun sets up, and the few collectives the trainer needs.

Started by torchrun (``WORLD_SIZE`` > 1 in the environment), every process is one rank: it streams
its own part of the data (:meth:`BatchStream` ``rank``/``world``), asks the teacher for its own
batches and trains a replica of the model wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL
on GPUs), which averages gradients across ranks during ``backward``. Ranks step in lockstep: an epoch
has as many steps as the largest part has batches, and a rank whose part has run out takes part in
the remaining steps with an empty batch (no row, zero gradient), so every row is used once per epoch
and no rank waits on a collective that never comes (the same contract as ``torch.distributed``'s
``Join``, without its divergence of optimizer state).

Each step the ranks exchange one small vector (:meth:`Parallel.step_totals`): rows, loss sums and
whether a rank's teacher failed. The rows weight each rank's loss so the averaged gradient is that of
the mean over the global batch, whatever each rank held; the loss sums make the logged loss global;
the failure flag stops every rank at the same step, so rank 0 can checkpoint a consistent state.
Without torchrun (one process) every method is the identity and nothing is exchanged.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossdistill.errors import ConfigError

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)  # longer than the teacher's default outage deadline


@dataclass
class Parallel:
    """This process's place in a data-parallel run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def start(cls, device: str, workers: int) -> Parallel:
        """Join the process group torchrun describes in the environment (or stay alone) and pick the device:
        ``cuda:<LOCAL_RANK>`` with NCCL where CUDA is asked for or available, else the CPU with gloo."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if workers not in (1, world):
            raise ConfigError(f"workers={workers} but torchrun started {world} process(es): leave workers unset "
                              "under torchrun, or set it to the number of processes")
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch sees no CUDA device (use device=auto or cpu)")
        if world == 1:
            return cls(device=torch.device("cuda" if cuda else "cpu"))
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
        return cls(rank=dist.get_rank(), world=dist.get_world_size(),
                   device=torch.device(f"cuda:{local}" if cuda else "cpu"))

    @property
    def primary(self) -> bool:
        """Rank 0: the one that writes checkpoints, the model and the log."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (which first broadcasts rank 0's weights), or itself."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def step_totals(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (one all-reduce)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def max_int(self, value: int) -> int:
        """The largest ``value`` over the ranks."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def average_gradients(self, module: nn.Module | None) -> None:
        """Average the gradients of a module outside DDP (the feature projections) over the ranks."""
        if self.world == 1 or module is None:
            return
        import torch.distributed as dist

        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Leave the process group (every rank, at the end of the run)."""
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
