"""Everything a run carries from step to step, in one object that is checkpointed and restored whole.

``TrainingState`` holds the model, the feature projections, optimizer, scheduler, the position in the
data stream (epoch, batch inside it), optimizer steps, samples, the log so far, the loss values since
the last log entry and the run's fingerprint. A checkpoint is its :meth:`state_dict` plus the torch
RNG state (of every rank in a data-parallel run), so a resumed run continues bit for bit; a
checkpoint whose fingerprint differs from the run's (data layout, number of ranks, model, schedule,
seed, ...) is refused, naming what changed. Data-parallel ranks step in lockstep, so one position
(epoch, batch) is every rank's position: rank 0 writes the checkpoint, every rank reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from crossdistill.errors import ConfigError
from crossdistill.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from crossdistill.train.parallel import Parallel


@dataclass
class TrainingState:
    """The whole training state of one student run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    fingerprint: dict[str, Any]
    features: nn.Module | None = None  # cross-layer projections, trained with the model
    step: int = 0
    samples: int = 0
    epoch: int = 0
    batch: int = 0  # next batch inside ``epoch``
    history: list[dict[str, Any]] = field(default_factory=list)
    window: list[dict[str, float]] = field(default_factory=list)  # loss terms of each step since the last entry

    def state_dict(self, rank_rng: list[torch.Tensor] | None = None) -> dict[str, Any]:
        """Everything to continue from; ``rank_rng``: the torch RNG state of each rank (data-parallel)."""
        state = {"step": self.step, "samples_seen": self.samples, "epoch": self.epoch, "batch": self.batch,
                 "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "features": self.features.state_dict() if self.features is not None else {},
                 "history": self.history, "log_window": self.window, "fingerprint": self.fingerprint,
                 "torch_rng": torch.get_rng_state()}
        if rank_rng is not None:
            state["rank_rng"] = rank_rng
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any], where: str, rank: int = 0) -> None:
        """Restore rank ``rank`` from a checkpoint ``state`` read from ``where``; refuse one from a different run."""
        theirs = state.get("fingerprint") or {}
        changed = [k for k in self.fingerprint if theirs.get(k) != self.fingerprint[k]]
        if changed:
            raise ConfigError(f"cannot resume from {where}: {', '.join(changed)} changed since it was written "
                              "(use a new out, or resume=false to start over)")
        self.model.load_state_dict(state["model"])
        if self.features is not None:
            self.features.load_state_dict(state["features"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rank_rng"][rank] if "rank_rng" in state else state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.samples = int(state["step"]), int(state["samples_seen"])
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.history = list(state["history"])
        self.window = [dict(v) for v in state["log_window"]]

    def resume(self, out: str, parallel: Parallel) -> str | None:
        """Load the newest checkpoint under ``out`` (the one rank 0 finds, on every rank); returns its URI,
        or None when there is none."""
        found = latest_checkpoint(out) if parallel.primary else None
        uri = parallel.broadcast(found[0] if found is not None else None)
        if uri is None:
            return None
        self.load_state_dict(found[1] if found is not None else load_checkpoint(uri), uri, parallel.rank)
        return uri

    def save(self, out: str, keep: int, parallel: Parallel) -> str | None:
        """Write a checkpoint (rank 0; every rank must call this: the RNG states are gathered)."""
        rngs = parallel.gather(torch.get_rng_state()) if parallel.world > 1 else None
        if not parallel.primary:
            return None
        return save_checkpoint(out, self.state_dict(rngs), keep=keep)

    def advance(self, epoch: int, batch: int, rows: int, batches_per_epoch: int, losses: dict[str, float]) -> None:
        """Count one optimizer step on batch ``batch`` of ``epoch`` with the given loss values."""
        self.step += 1
        self.samples += rows
        self.window.append(losses)
        self.epoch, self.batch = (epoch, batch + 1) if batch + 1 < batches_per_epoch else (epoch + 1, 0)

    def record(self, epoch: int, samples_per_s: float) -> dict[str, Any] | None:
        """Close the log window into a history entry (mean of each loss value); None when it is empty."""
        if not self.window:
            return None
        entry: dict[str, Any] = {"step": self.step, "epoch": epoch, "samples_seen": self.samples}
        for name in self.window[0]:
            entry[name] = float(np.mean([w[name] for w in self.window]))
        entry.update(lr=float(self.optimizer.param_groups[0]["lr"]), samples_per_s=round(samples_per_s, 1))
        self.history.append(entry)
        self.window = []
        return entry

    @property
    def last_loss(self) -> float:
        if self.window:
            return self.window[-1]["loss"]
        return self.history[-1]["loss"] if self.history else math.nan
