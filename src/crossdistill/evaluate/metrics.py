"""Classification metrics on numpy arrays: accuracy, confusion, calibration, agreement, likelihood.

Everything here is pure numpy so a metric can be checked by hand on a few examples. Labels are int
class indices ``[N]``; scores are either logits or probabilities ``[N, C]`` (say which).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from crossdistill.errors import DataError


def _labels(y: np.ndarray, name: str, num_classes: int | None = None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected class indices of shape [N], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise DataError(f"{name}: class indices must lie in [0, {num_classes}), "
                        f"got min {arr.min()} max {arr.max()}")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise DataError(f"{name_a} has {len(a)} rows but {name_b} has {len(b)}; they must match")


def _probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"{name}: expected probabilities of shape [N, C], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name}: holds NaN or Inf")
    return arr


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of examples whose predicted class equals the label (NaN for no examples)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    _same_length(t, p, "y_true", "y_pred")
    return float(np.mean(t == p)) if len(t) else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` counts; row = true class, column = predicted class."""
    t = _labels(y_true, "y_true", num_classes)
    p = _labels(y_pred, "y_pred", num_classes)
    _same_length(t, p, "y_true", "y_pred")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes) \
        .reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class: correct / examples of that class; NaN for a class with no examples."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of examples where two models predict the same top-1 class (e.g. teacher vs student)."""
    a, b = _labels(pred_a, "pred_a"), _labels(pred_b, "pred_b")
    _same_length(a, b, "pred_a", "pred_b")
    return float(np.mean(a == b)) if len(a) else float("nan")


def negative_log_likelihood(probs: np.ndarray, y_true: np.ndarray, eps: float = 1e-12) -> float:
    """Mean ``-log p(label)`` in nats; probabilities are clipped at ``eps`` so a confident miss is finite."""
    p = _probs(probs)
    t = _labels(y_true, "y_true", p.shape[1])
    _same_length(p, t, "probs", "y_true")
    if not len(t):
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(len(t)), t], eps, 1.0))))


@dataclass
class Calibration:
    """Reliability-diagram data over equal-width confidence bins on [0, 1], and the ECE they give.

    ``confidence[b]`` and ``accuracy[b]`` are means over the examples in bin ``b`` (NaN when empty);
    ECE = sum_b (count_b / N) * |accuracy_b - confidence_b|.
    """

    ece: float
    bin_edges: list[float]
    confidence: list[float]
    accuracy: list[float]
    count: list[int]

    def to_dict(self) -> dict[str, Any]:
        return json_ready(asdict(self))


def calibration(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> Calibration:
    """Top-1 confidence calibration. Bin b holds confidences in (edge_b, edge_b+1]; bin 0 also holds 0."""
    if bins < 1:
        raise DataError(f"ece bins must be >= 1, got {bins}")
    p = _probs(probs)
    t = _labels(y_true, "y_true", p.shape[1])
    _same_length(p, t, "probs", "y_true")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right-closed bins: searchsorted(..., "left") puts c == edge_k into bin k-1
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    n = len(t)
    ece = float(np.abs(acc_sum - conf_sum).sum() / n) if n else float("nan")
    return Calibration(ece, edges.tolist(), mean_conf.tolist(), mean_acc.tolist(), count.astype(int).tolist())


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    return calibration(probs, y_true, bins).ece


def classification_report(logits: np.ndarray, y_true: np.ndarray, num_classes: int, *,
                          ece_bins: int = 15, from_probs: bool = False) -> dict[str, Any]:
    """Every single-model metric as a JSON-ready dict (NaN becomes None)."""
    scores = np.asarray(logits)
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise DataError(f"logits: expected shape [N, {num_classes}], got {scores.shape}")
    probs = _probs(scores, "probs") if from_probs else softmax(scores)
    pred = probs.argmax(axis=1)
    cal = calibration(probs, y_true, ece_bins)
    return json_ready({
        "num_examples": int(len(pred)),
        "accuracy": accuracy(y_true, pred),
        "per_class_accuracy": per_class_accuracy(y_true, pred, num_classes).tolist(),
        "confusion_matrix": confusion_matrix(y_true, pred, num_classes).tolist(),
        "ece": cal.ece,
        "nll": negative_log_likelihood(probs, y_true),
        "reliability": cal.to_dict(),
    })


def json_ready(obj: Any) -> Any:
    """JSON has no NaN: replace it by None (null) throughout a nested structure."""
    if isinstance(obj, float):
        return None if np.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj
