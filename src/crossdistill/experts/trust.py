"""Trust models (seed 001, FIG. 4): learn from the labeled validation part when to trust each teacher.

Per teacher, a binary classifier reads the input and the teacher's own output (its global
distribution, top probability and entropy) and predicts "this teacher is right here". One joint
multi-label model reads the input and every teacher's output and predicts, for each teacher at
once, whether to trust it on this input. Both are scored on a held-out part of the validation set
(AUC, accuracy next to the constant majority predictor), then refit on all of it and saved.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.data.shards import DatasetReader, read_dataset
from crossdistill.errors import ConfigError, DataError
from crossdistill.experts.tables import PredictionTable, TeacherSource, load_source, stack_tables

ModelKind = Literal["logreg", "gbdt", "mlp"]
MODELS_FILE = "trust_models.pkl"
METRICS_FILE = "trust_metrics.json"


class TrustModelTrainConfig(StrictConfig):
    """Configuration of `crossdistill trust-model-train`."""

    teachers: list[TeacherSource] = Field(..., min_length=1)
    val: str = Field(..., description="labeled validation dataset (id, x, y)")
    num_classes: int | None = Field(None, gt=0)
    model: ModelKind = Field("logreg", description="per-teacher binary trust model")
    joint_model: ModelKind | Literal["none"] = Field("mlp", description="single multi-label trust model")
    use_inputs: bool = Field(True, description="feed the (flattened) input besides the teachers' outputs")
    holdout_fraction: float = Field(0.3, gt=0, lt=1, description="validation share held out for the metrics")
    seed: int = 0
    batch_size: int = Field(256, gt=0)
    out: str = Field("runs/trust", description=f"where {MODELS_FILE} and {METRICS_FILE} are written")


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)


def teacher_features(x: np.ndarray | None, probs_t: np.ndarray) -> np.ndarray:
    """Features of one teacher's trust model: input, the teacher's distribution, its max and entropy."""
    parts = [] if x is None else [np.asarray(x, dtype=np.float64).reshape(len(probs_t), -1)]
    parts += [probs_t, probs_t.max(axis=1, keepdims=True), _entropy(probs_t)[:, None]]
    return np.concatenate(parts, axis=1)


def joint_features(x: np.ndarray | None, probs: np.ndarray) -> np.ndarray:
    """Features of the joint trust model: input and every teacher's distribution, max and entropy."""
    n = probs.shape[1]
    parts = [] if x is None else [np.asarray(x, dtype=np.float64).reshape(n, -1)]
    for p in probs:
        parts += [p, p.max(axis=1, keepdims=True), _entropy(p)[:, None]]
    return np.concatenate(parts, axis=1)


def _estimator(kind: ModelKind, seed: int, multilabel: bool = False) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multioutput import MultiOutputClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logreg":
        base: Any = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    elif kind == "gbdt":
        base = HistGradientBoostingClassifier(max_iter=100, max_depth=3, learning_rate=0.1, random_state=seed)
    elif kind == "mlp":
        # a joint MLP handles a multi-label target natively: one network, one shared hidden layer
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2,
                                                             max_iter=800, random_state=seed))
    else:
        raise ConfigError(f"unknown trust model kind {kind!r} (logreg, gbdt, mlp)")
    return MultiOutputClassifier(base) if multilabel else base


@dataclass
class _Constant:
    """The trust model of a teacher that was always (or never) right on the training part."""

    p: float

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.tile([1.0 - self.p, self.p], (len(X), 1))


def _fit_binary(kind: ModelKind, X: np.ndarray, y: np.ndarray, seed: int) -> Any:
    if y.min() == y.max():
        return _Constant(float(y[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _estimator(kind, seed).fit(X, y)


def _fit_joint(kind: ModelKind, X: np.ndarray, Y: np.ndarray, seed: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind != "mlp" and (Y.min(axis=0) == Y.max(axis=0)).any():
            return [_fit_binary(kind, X, Y[:, t], seed) for t in range(Y.shape[1])]
        return _estimator(kind, seed, multilabel=True).fit(X, Y)


def _joint_proba(model: Any, X: np.ndarray, n_teachers: int) -> np.ndarray:
    """``[T, N]`` trust probabilities from a joint model (an MLP, a MultiOutput model or a list)."""
    if isinstance(model, list):
        return np.stack([m.predict_proba(X)[:, 1] for m in model])
    proba = model.predict_proba(X)
    if isinstance(proba, list):  # MultiOutputClassifier: one [N, 2] per teacher
        return np.stack([p[:, 1] if p.shape[1] == 2 else np.full(len(X), float(p[0, 0])) for p in proba])
    return np.asarray(proba).T.reshape(n_teachers, len(X))


@dataclass
class TrustModels:
    """The fitted trust models of a set of teachers, with what they need to compute features."""

    teachers: list[str]
    label_maps: list[list[int]]
    num_classes: int
    use_inputs: bool
    per_teacher: dict[str, Any] = field(default_factory=dict)
    joint: Any = None

    def per_teacher_proba(self, x: np.ndarray | None, probs: np.ndarray) -> np.ndarray:
        """``[T, N]``: each teacher's own trust model's probability that it is right."""
        xin = self._inputs(x)
        return np.stack([self.per_teacher[name].predict_proba(teacher_features(xin, probs[t]))[:, 1]
                         for t, name in enumerate(self.teachers)])

    def joint_proba(self, x: np.ndarray | None, probs: np.ndarray) -> np.ndarray:
        """``[T, N]``: the joint model's trust in each teacher."""
        if self.joint is None:
            raise ConfigError("these trust models were trained without a joint model (joint_model=none)")
        return _joint_proba(self.joint, joint_features(self._inputs(x), probs), len(self.teachers))

    def _inputs(self, x: np.ndarray | None) -> np.ndarray | None:
        if not self.use_inputs:
            return None
        if x is None:
            raise DataError("these trust models read the inputs: give the dataset's 'x' column")
        return x

    def check_teachers(self, tables: list[PredictionTable]) -> None:
        names = [t.teacher for t in tables]
        if names != self.teachers:
            raise DataError(f"trust models were trained for teachers {self.teachers}, got {names} (same order needed)")
        for t, lm in zip(tables, self.label_maps, strict=True):
            if t.label_map.tolist() != lm:
                raise DataError(f"teacher '{t.teacher}': label_map {t.label_map.tolist()} differs from the one "
                                f"its trust model was trained with ({lm})")


def _binary_metrics(y: np.ndarray, p: np.ndarray, train_y: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    majority = float(train_y.mean() >= 0.5)
    return {
        "auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        "accuracy": float(((p >= 0.5) == y).mean()),
        "constant_accuracy": float((y == majority).mean()),
        "positive_rate": float(y.mean()),
        "examples": int(len(y)),
    }


def train_trust_models(tables: list[PredictionTable], x: np.ndarray | None, y: np.ndarray, ids: np.ndarray, *,
                       model: ModelKind = "logreg", joint_model: ModelKind | Literal["none"] = "mlp",
                       use_inputs: bool = True, holdout_fraction: float = 0.3,
                       seed: int = 0) -> tuple[TrustModels, dict[str, Any]]:
    """Fit per-teacher and joint trust models on labeled examples; held-out metrics, then refit on all."""
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise DataError("trust models need a labeled validation part; it is empty")
    if len(y) < 10:
        raise DataError(f"trust models need at least 10 labeled validation examples, got {len(y)}")
    probs, _ = stack_tables(tables, ids, where="in the validation part ")
    correct = np.stack([(np.argmax(p, axis=1) == y) for p in probs]).astype(np.int64)  # [T, N]
    xin = x if use_inputs else None
    if use_inputs and x is None:
        raise DataError("use_inputs=True but the validation dataset has no 'x' column")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    n_hold = max(1, int(round(holdout_fraction * len(y))))
    hold, train = perm[:n_hold], perm[n_hold:]
    names = [t.teacher for t in tables]

    def sub(a: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
        return None if a is None else a[idx]

    metrics: dict[str, Any] = {"per_teacher": {}, "joint": {}, "model": model, "joint_model": joint_model,
                               "train_examples": int(len(train)), "holdout_examples": int(len(hold))}
    for t, name in enumerate(names):
        f_tr = teacher_features(sub(xin, train), probs[t][train])
        f_ho = teacher_features(sub(xin, hold), probs[t][hold])
        m = _fit_binary(model, f_tr, correct[t][train], seed)
        metrics["per_teacher"][name] = _binary_metrics(correct[t][hold], m.predict_proba(f_ho)[:, 1],
                                                       correct[t][train])
    if joint_model != "none":
        jf_tr = joint_features(sub(xin, train), probs[:, train])
        jf_ho = joint_features(sub(xin, hold), probs[:, hold])
        jm = _fit_joint(joint_model, jf_tr, correct[:, train].T, seed)
        jp = _joint_proba(jm, jf_ho, len(names))
        for t, name in enumerate(names):
            metrics["joint"][name] = _binary_metrics(correct[t][hold], jp[t], correct[t][train])
        # as a selector: does the joint model's most trusted teacher get the example right?
        pick = np.argmax(jp, axis=0)
        metrics["joint_selected_accuracy"] = float(correct[pick, hold].mean())
    metrics["best_single_teacher_accuracy"] = float(correct[:, hold].mean(axis=1).max())
    # refit on the whole labeled part for use
    models = TrustModels(names, [t.label_map.tolist() for t in tables], tables[0].num_classes, use_inputs)
    for t, name in enumerate(names):
        models.per_teacher[name] = _fit_binary(model, teacher_features(xin, probs[t]), correct[t], seed)
    if joint_model != "none":
        models.joint = _fit_joint(joint_model, joint_features(xin, probs), correct.T, seed)
    return models, metrics


def save_trust_models(out: str, models: TrustModels, metrics: dict[str, Any]) -> dict[str, str]:
    paths = {"models": storage.join(out, MODELS_FILE), "metrics": storage.join(out, METRICS_FILE)}
    buf = io.BytesIO()
    pickle.dump(models, buf, protocol=pickle.HIGHEST_PROTOCOL)
    storage.write_bytes(paths["models"], buf.getvalue())
    storage.write_text(paths["metrics"], json.dumps(metrics, indent=1))
    return paths


def load_trust_models(uri: str) -> TrustModels:
    """Load ``trust_models.pkl`` (the file, or the folder holding it). Only load files you wrote: pickle."""
    target = uri if uri.endswith(".pkl") else storage.join(uri, MODELS_FILE)
    obj = pickle.loads(storage.read_bytes(target))
    if not isinstance(obj, TrustModels):
        raise DataError(f"{target} does not hold crossdistill trust models (got {type(obj).__name__})")
    return obj


def run_trust_model_train(cfg: TrustModelTrainConfig) -> dict[str, Any]:
    """Train the trust models on the labeled validation part; save models + metrics JSON."""
    val = read_dataset(cfg.val)
    labeled = val.take(np.flatnonzero(val.labeled_mask()))
    num_classes = cfg.num_classes or val.meta.get("num_classes")
    if not num_classes:
        raise ConfigError(f"trust-model-train: num_classes not set and {cfg.val} meta has none")
    if len(labeled) == 0:
        raise DataError(f"{cfg.val}: the validation part has no labeled examples (all y=-1 or empty); "
                        "trust models need ground truth")
    tables = [load_source(s, num_classes=int(num_classes), data=DatasetReader(cfg.val), batch_size=cfg.batch_size)
              for s in cfg.teachers]
    x = labeled["x"] if "x" in labeled else None
    models, metrics = train_trust_models(tables, x, labeled["y"], labeled.ids, model=cfg.model,
                                         joint_model=cfg.joint_model, use_inputs=cfg.use_inputs,
                                         holdout_fraction=cfg.holdout_fraction, seed=cfg.seed)
    metrics["paths"] = save_trust_models(cfg.out, models, metrics)
    return metrics
