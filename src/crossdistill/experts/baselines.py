"""What the expert/trust selection is measured against: plain average, majority vote, a label model.

All take aligned global distributions ``[T, N, C]`` (``stack_tables``) and return ``[N, C]``.
The weak-supervision label model is Snorkel's ``LabelModel`` (each teacher's argmax is one labeling
function; it learns every teacher's accuracy from their agreements, without labels).
"""

from __future__ import annotations

import numpy as np

from crossdistill.errors import ConfigError, DataError


def _check(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[0] == 0:
        raise DataError(f"teacher outputs must be [teachers, examples, classes], got shape {probs.shape}")
    return probs


def average(probs: np.ndarray) -> np.ndarray:
    """Plain arithmetic mean of the teachers' global distributions (equal weights)."""
    from crossdistill.losses.ensemble import combine_teachers

    probs = _check(probs)
    return combine_teachers(list(probs), method="arithmetic").double().numpy()


def majority_vote(probs: np.ndarray) -> np.ndarray:
    """Share of teachers voting for each class; ties are broken by the summed probabilities."""
    probs = _check(probs)
    n_teachers, n, num_classes = probs.shape
    votes = np.zeros((n, num_classes))
    pred = np.argmax(probs, axis=2)
    for t in range(n_teachers):
        votes[np.arange(n), pred[t]] += 1.0
    # a tiny tie-breaker keeps argmax stable and meaningful without changing any strict majority
    tie = probs.mean(axis=0) * 1e-3
    scores = votes + tie
    return scores / scores.sum(axis=1, keepdims=True)


def label_model(probs: np.ndarray, *, fit_probs: np.ndarray | None = None, epochs: int = 500,
                seed: int = 0) -> np.ndarray:
    """Snorkel LabelModel posteriors: fit on ``fit_probs`` (default ``probs``), predict on ``probs``."""
    probs = _check(probs)
    try:
        from snorkel.labeling.model import LabelModel
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("the label-model baseline needs snorkel (pip install 'snorkel>=0.10,<0.11')") from None
    num_classes = probs.shape[2]
    if probs.shape[0] < 3:
        raise ConfigError(f"the label model needs at least 3 teachers (labeling functions), got {probs.shape[0]}")
    fit = _check(fit_probs) if fit_probs is not None else probs
    votes_fit = np.argmax(fit, axis=2).T.astype(np.int64)  # [N, T], one labeling function per teacher
    votes = np.argmax(probs, axis=2).T.astype(np.int64)
    model = LabelModel(cardinality=num_classes, verbose=False, device="cpu")
    model.fit(votes_fit, n_epochs=epochs, seed=seed, progress_bar=False)
    return np.asarray(model.predict_proba(votes), dtype=np.float64)
