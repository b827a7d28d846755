"""Combining several teachers' distributions into one target.

Hinton sec. 5 (eq. 5): the distribution closest to a set of per-model distributions is their
arithmetic mean under ``KL(p, q)`` and their (renormalised) geometric mean under ``KL(q, p)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from crossdistill.errors import ConfigError, DataError


def combine_teachers(probs_list: Sequence[torch.Tensor | np.ndarray],
                     method: Literal["arithmetic", "geometric"] = "arithmetic",
                     weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted arithmetic mean, or normalised weighted geometric mean, of ``[B, C]`` distributions.

    Weights are normalised to sum to 1 (equal by default). In the geometric mean a class any teacher
    gives probability 0 gets (almost) 0; probabilities are floored at the float's smallest normal
    number so teachers with disjoint support still give a defined (uniform over their union) result.
    """
    if not probs_list:
        raise DataError("combine_teachers needs at least one teacher distribution")
    probs = [torch.as_tensor(p, dtype=torch.float32) for p in probs_list]
    shape = probs[0].shape
    for i, p in enumerate(probs):
        if p.shape != shape or p.ndim != 2:
            raise DataError(f"teacher {i} distribution has shape {tuple(p.shape)}, expected "
                            f"{tuple(shape)} like teacher 0 ([batch, num_classes])")
    if weights is None:
        w = torch.full((len(probs),), 1.0 / len(probs))
    else:
        if len(weights) != len(probs):
            raise ConfigError(f"weights has {len(weights)} entries for {len(probs)} teachers")
        w = torch.as_tensor(list(weights), dtype=torch.float32)
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ConfigError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        w = w / w.sum()
    stacked = torch.stack(probs)  # [M, B, C]
    wb = w.view(-1, 1, 1)
    if method == "arithmetic":
        return (wb * stacked).sum(dim=0)
    if method == "geometric":
        log_mean = (wb * stacked.clamp_min(torch.finfo(stacked.dtype).tiny).log()).sum(dim=0)
        return torch.softmax(log_mean, dim=-1)
    raise ConfigError(f"method must be 'arithmetic' or 'geometric', got {method!r}")
