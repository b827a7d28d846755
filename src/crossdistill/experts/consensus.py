"""Label-free experts: teachers that agree with the rest of the population on a label.

Deviation, precisely: for teacher ``t`` and a label ``l`` it covers, take the leave-one-out consensus
of the other teachers on every example (``argmax`` of the plain mean of their global distributions,
where a teacher puts 0 on the classes it does not cover). Teacher ``t``'s label-``l`` decisions are
the examples it assigns to ``l``; the consensus decisions are the examples the others assign to
``l``. ``deviation[t, l] = 1 - F1`` of the first set against the second (0 = identical decisions,
1 = no overlap). A teacher is an expert for ``l`` when its deviation is at most ``threshold``. It is
the labeled per-label F1 with the others' consensus standing in for the missing ground truth.
A label that only one teacher covers has no population to compare with: that teacher is its expert
only when ``sole_coverer_is_expert`` (reported as unchecked).
"""

from __future__ import annotations

import numpy as np

from crossdistill.errors import DataError


def decision_f1(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 ``[C]`` of ``pred`` against ``ref`` (NaN where undefined)."""
    pred = np.asarray(pred, dtype=np.int64)
    ref = np.asarray(ref, dtype=np.int64)
    tp = np.bincount(pred[pred == ref], minlength=num_classes)[:num_classes].astype(np.float64)
    n_pred = np.bincount(pred, minlength=num_classes)[:num_classes].astype(np.float64)
    n_ref = np.bincount(ref[ref >= 0], minlength=num_classes)[:num_classes].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp / n_pred, np.nan)
        recall = np.where(n_ref > 0, tp / n_ref, np.nan)
        denom = n_pred + n_ref
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return precision, recall, f1


def consensus_deviation(probs: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """``[T, C]`` deviation of each teacher from the leave-one-out consensus (NaN: not covered/undefined)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise DataError(f"teacher outputs must be [teachers, examples, classes], got shape {probs.shape}")
    n_teachers, n, num_classes = probs.shape
    if n_teachers < 2:
        raise DataError(f"consensus needs at least 2 teachers, got {n_teachers}")
    if n == 0:
        raise DataError("consensus needs examples to compare teachers on, got an empty set")
    total = probs.sum(axis=0)
    dev = np.full((n_teachers, num_classes), np.nan)
    for t in range(n_teachers):
        others = (total - probs[t]) / (n_teachers - 1)
        consensus = np.argmax(others, axis=1)
        own = np.argmax(probs[t], axis=1)
        _, _, f1 = decision_f1(own, consensus, num_classes)
        dev[t] = np.where(covered[t], 1.0 - f1, np.nan)
    return dev


def consensus_experts(probs: np.ndarray, covered: np.ndarray, *, threshold: float = 0.5,
                      sole_coverer_is_expert: bool = True) -> tuple[list[list[int]], np.ndarray, list[str | None]]:
    """Experts per label (teacher indices, lowest deviation first), the deviations, and a gap reason per label."""
    covered = np.asarray(covered, dtype=bool)
    dev = consensus_deviation(probs, covered)
    experts: list[list[int]] = []
    reasons: list[str | None] = []
    for label in range(dev.shape[1]):
        coverers = np.flatnonzero(covered[:, label])
        if len(coverers) == 0:
            experts.append([])
            reasons.append("no teacher covers this label")
            continue
        if len(coverers) == 1:
            if sole_coverer_is_expert:
                experts.append([int(coverers[0])])
                reasons.append(None)
            else:
                experts.append([])
                reasons.append("only one teacher covers this label: no population to compare with")
            continue
        ok = [int(t) for t in coverers if np.isfinite(dev[t, label]) and dev[t, label] <= threshold]
        ok.sort(key=lambda t: dev[t, label])
        experts.append(ok)
        reasons.append(None if ok else f"no teacher within deviation {threshold} of the consensus")
    return experts, dev, reasons
