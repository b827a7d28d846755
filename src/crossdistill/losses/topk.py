"""Top-k teacher outputs: the k largest log-probabilities at a temperature plus their class indices.

Log-probabilities (not raw logits) travel so the student knows exactly how much mass lies outside
the top k: ``1 - sum(exp(topk_logprobs))``. Rebuilding spreads that mass evenly over the other
classes, i.e. it assumes the tail classes share one logit; with ``k == num_classes`` it is exact.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from crossdistill.errors import ConfigError, DataError

ArrayLike = torch.Tensor | np.ndarray


def logits_to_topk(logits: ArrayLike, k: int, T: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_softmax(logits / T) of the k largest classes, their indices)``, both ``[B, k]``."""
    z = torch.as_tensor(logits, dtype=torch.float32)
    if z.ndim != 2:
        raise DataError(f"logits must be [batch, num_classes], got shape {tuple(z.shape)}")
    if not 1 <= k <= z.shape[-1]:
        raise ConfigError(f"top_k={k} must be between 1 and num_classes={z.shape[-1]}")
    if T <= 0:
        raise ConfigError(f"temperature must be > 0, got {T}")
    values, indices = F.log_softmax(z / T, dim=-1).topk(k, dim=-1)
    return values, indices


def topk_to_probs(topk_logprobs: ArrayLike, topk_indices: ArrayLike, num_classes: int) -> torch.Tensor:
    """Full ``[B, num_classes]`` distribution: the top-k probabilities, the rest spread evenly."""
    lp = torch.as_tensor(topk_logprobs, dtype=torch.float32)
    idx = torch.as_tensor(topk_indices, dtype=torch.int64, device=lp.device)
    if lp.ndim != 2 or lp.shape != idx.shape:
        raise DataError(f"topk_logprobs {tuple(lp.shape)} and topk_indices {tuple(idx.shape)} "
                        "must both be [batch, k]")
    k = lp.shape[-1]
    if k > num_classes:
        raise DataError(f"top-k width {k} exceeds num_classes={num_classes}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        raise DataError(f"topk_indices hold class {int(idx.max())}/{int(idx.min())}, "
                        f"outside 0..{num_classes - 1} (teacher and student disagree on num_classes?)")
    top = lp.exp()
    rest = (1.0 - top.sum(dim=-1, keepdim=True)).clamp_min(0.0)
    fill = rest / (num_classes - k) if num_classes > k else torch.zeros_like(rest)
    probs = fill.expand(lp.shape[0], num_classes).clone()
    probs.scatter_(-1, idx, top)
    return probs / probs.sum(dim=-1, keepdim=True)


def teacher_probs_at(T: float, *, logits: ArrayLike | None = None, topk_logprobs: ArrayLike | None = None,
                     topk_indices: ArrayLike | None = None, topk_temperature: float | None = None,
                     num_classes: int | None = None) -> torch.Tensor:
    """The teacher's distribution at training temperature ``T`` from dense logits or a top-k pair.

    Top-k log-probabilities were computed at their own temperature ``topk_temperature`` (dataset meta
    ``temperature``, or the one the client asked for). When it equals ``T`` the rebuilt distribution is
    used as is. When it differs, the rebuilt distribution ``p`` is re-tempered as ``p**(T_k/T)``
    renormalised: exact inside the top k (``log p_i = z_i/T_k - c``, so ratios rescale exactly) and
    exact overall when ``k == num_classes``; for the tail it assumes every tail class shares one logit,
    the same assumption as the even spread. Prefer asking the teacher for top-k at the training ``T``.
    """
    if logits is not None:
        z = torch.as_tensor(logits, dtype=torch.float32)
        return F.softmax(z / T, dim=-1)
    if topk_logprobs is None or topk_indices is None or num_classes is None:
        raise DataError("teacher_probs_at needs logits, or topk_logprobs + topk_indices + num_classes")
    probs = topk_to_probs(topk_logprobs, topk_indices, num_classes)
    t_k = T if topk_temperature is None else float(topk_temperature)
    if abs(t_k - T) <= 1e-9 * max(t_k, T):
        return probs
    tempered = (probs.clamp_min(torch.finfo(probs.dtype).tiny).log() * (t_k / T))
    return F.softmax(tempered, dim=-1)
