"""Knowledge-distillation losses (Hinton, Vinyals & Dean 2015).

``soft_target_loss`` is the KL divergence from the teacher's distribution at temperature ``T`` to the
student's softened distribution, multiplied by ``T**2``: the soft-target gradients scale as ``1/T**2``
(Hinton sec. 2), so the factor keeps their magnitude comparable across temperatures and against the
hard-label term. KL differs from the cross-entropy only by the teacher's entropy, a constant for the
student, so the gradients are the same and a perfect match reads as 0.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from crossdistill.errors import DataError

Reduction = Literal["mean", "sum", "none"]


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.ndim != 2 or student.shape != teacher.shape:
        raise DataError(f"{what}: student logits {tuple(student.shape)} and teacher tensor "
                        f"{tuple(teacher.shape)} must both be [batch, num_classes] and equal")


def _reduce(per_example: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    return per_example


def soft_target_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, T: float,
                     reduction: Reduction = "mean") -> torch.Tensor:
    """``T**2 * KL(teacher_probs || softmax(student_logits / T))`` per example, averaged over the batch.

    ``teacher_probs`` must already be the teacher's distribution at the same ``T``
    (see :func:`crossdistill.losses.topk.teacher_probs_at`).
    """
    _check_pair(student_logits, teacher_probs, "soft_target_loss")
    if T <= 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    log_q = F.log_softmax(student_logits / T, dim=-1)
    p = teacher_probs.to(log_q.dtype)
    # xlogy: 0 * log 0 = 0, so classes the teacher rules out (top-k tails of 0) cost nothing.
    per_example = (torch.xlogy(p, p) - p * log_q).sum(dim=-1)
    return _reduce(per_example * (T * T), reduction)


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor,
                    label_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy at T=1 averaged over the labeled examples only (0 when the batch has none)."""
    mask = labels >= 0 if label_mask is None else label_mask.bool()
    if not bool(mask.any()):
        return student_logits.sum() * 0.0  # keeps the graph (and the device) without a contribution
    return F.cross_entropy(student_logits[mask], labels[mask])


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor | None, labels: torch.Tensor,
            label_mask: torch.Tensor | None, T: float, soft_weight: float = 1.0,
            hard_weight: float = 0.0, example_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``soft_weight * soft_target_loss + hard_weight * CE(labeled subset)``.

    ``example_weights`` (``[B]``, e.g. the trust of an assembled multi-teacher target) scale each
    example's soft term: the soft term becomes ``mean(w_i * loss_i)``.

    The soft term averages over every example (unlabeled ones included); the hard term averages over
    the labeled examples of the batch (``label_mask``, or ``labels >= 0`` when it is None), so an
    unlabeled example (``y = -1``) only ever receives the soft term. ``teacher_probs=None`` gives the
    hard term alone.
    """
    loss = student_logits.new_zeros(())
    if teacher_probs is not None and soft_weight:
        if example_weights is None:
            loss = loss + soft_weight * soft_target_loss(student_logits, teacher_probs, T)
        else:
            per_example = soft_target_loss(student_logits, teacher_probs, T, reduction="none")
            loss = loss + soft_weight * (example_weights.to(per_example.dtype) * per_example).mean()
    if hard_weight:
        loss = loss + hard_weight * hard_label_loss(student_logits, labels, label_mask)
    return loss


def logit_matching_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        reduction: Reduction = "mean") -> torch.Tensor:
    """``1/(2C) * sum_i (z_i - v_i)**2`` on per-example zero-meaned logits (Hinton sec. 2.1).

    Caruana's logit matching. The ``1/(2C)`` factor makes its gradient equal the high-temperature
    limit of :func:`soft_target_loss`'s (eq. 4 times ``T**2``: ``(z_i - v_i) / C``), so the two are
    interchangeable in a loss mix with the same weights.
    """
    _check_pair(student_logits, teacher_logits, "logit_matching_loss")
    z = student_logits - student_logits.mean(dim=-1, keepdim=True)
    v = teacher_logits.to(z.dtype)
    v = v - v.mean(dim=-1, keepdim=True)
    per_example = (z - v).pow(2).sum(dim=-1) / (2 * z.shape[-1])
    return _reduce(per_example, reduction)
