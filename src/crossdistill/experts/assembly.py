"""Build the distillation dataset (seed 001, FIG. 2): keep only trusted teacher outputs per example.

For every unlabeled example each teacher gets a weight ``W[t, i]``:

- ``experts``: teacher ``t`` *claims* example ``i`` when it is an expert of the label it predicts
  there; the weight is its expert weight for that label (validation precision, or agreement with the
  consensus in consensus mode), 0 otherwise;
- ``trust``: the trust model's probability that ``t`` is right on ``i``, kept when >= ``min_trust``;
- ``experts+trust``: the trust probability, but only for claims of experts.

The target is the ``W``-weighted arithmetic mean of the kept teachers' global distributions; the
example's ``weight`` is the largest kept ``W`` (how much the best kept output is trusted). Examples
with no kept output have no inferred label: they are dropped (or kept with weight 0). The dataset is
a dense soft-label dataset: ``logits`` = log-probabilities of the target, plus ``weight``, and the
kept rows' inputs (``x`` or ``image``), so it is a training dataset of its own for student-train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from crossdistill.config import StrictConfig
from crossdistill.data.preprocess import INPUT_COLUMNS
from crossdistill.data.shards import Dataset, DatasetReader, read_dataset, write_dataset
from crossdistill.errors import ConfigError, DataError
from crossdistill.experts.selection import load_report
from crossdistill.experts.tables import PredictionTable, TeacherSource, load_source, stack_tables
from crossdistill.experts.trust import load_trust_models

Method = Literal["experts", "trust", "experts+trust"]
LOG_FLOOR = 1e-8


class AssembleConfig(StrictConfig):
    """Configuration of the distillation-set assembly (the last part of the multi-teacher flow)."""

    teachers: list[TeacherSource] = Field(..., min_length=1)
    unlabeled: str = Field(..., description="dataset of the inputs to label (id, x)")
    method: Method = "trust"
    experts: str | None = Field(None, description="experts.json (or its folder) from expert-evaluate")
    trust_models: str | None = Field(None, description="trust_models.pkl (or its folder) from trust-model-train")
    trust_source: Literal["per_teacher", "joint"] = "per_teacher"
    min_trust: float = Field(0.5, ge=0, le=1)
    keep_uncovered: bool = Field(False, description="keep examples without an inferred label (weight 0)")
    num_classes: int | None = Field(None, gt=0)
    batch_size: int = Field(256, gt=0)
    num_shards: int = Field(1, ge=1)
    out: str = Field("runs/distill-set", description="where the soft-label dataset is written")

    @model_validator(mode="after")
    def _needs(self) -> AssembleConfig:
        if "experts" in self.method and not self.experts:
            raise ValueError(f"method={self.method} needs 'experts' (the expert-evaluate report)")
        if "trust" in self.method and not self.trust_models:
            raise ValueError(f"method={self.method} needs 'trust_models' (the trust-model-train output)")
        return self


@dataclass
class Assembled:
    """The assembled targets of the covered examples (or all, with ``keep_uncovered``)."""

    ids: np.ndarray
    probs: np.ndarray  # [N, C]
    weight: np.ndarray  # [N]
    coverage: dict[str, Any]


def expert_weights(report: dict[str, Any], teachers: list[str], num_classes: int) -> np.ndarray:
    """``[T, C]`` weight of each teacher's claims per label from an experts report (0: not an expert)."""
    if report.get("num_classes") != num_classes:
        raise DataError(f"experts report is for {report.get('num_classes')} classes, the tables have {num_classes}")
    known = {t["name"] for t in report["teachers"]}
    missing = sorted(known - set(teachers))
    unknown_experts = sorted({n for e in report["per_label"] for n in e["experts"]} - set(teachers))
    if unknown_experts:
        raise DataError(f"experts report names teachers {unknown_experts} that were not given "
                        f"(given: {teachers}; report teachers: {sorted(known)}; missing: {missing})")
    w = np.zeros((len(teachers), num_classes))
    for entry in report["per_label"]:
        for name, weight in entry.get("expert_weights", {n: 1.0 for n in entry["experts"]}).items():
            w[teachers.index(name), entry["label"]] = float(weight)
    return w


def claim_weights(probs: np.ndarray, label_weights: np.ndarray) -> np.ndarray:
    """``W[t, i]`` = ``label_weights[t, argmax p_t(i)]``: a teacher counts where it predicts its expert label."""
    pred = np.argmax(probs, axis=2)  # [T, N]
    return np.take_along_axis(label_weights, pred, axis=1)


def combine(probs: np.ndarray, weights: np.ndarray, ids: np.ndarray, *, keep_uncovered: bool = False,
            teachers: list[str] | None = None, class_names: list[str] | None = None) -> Assembled:
    """Weighted mean of teacher distributions per example, per-example weight and coverage stats."""
    probs = np.asarray(probs, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    n_teachers, n, num_classes = probs.shape
    if weights.shape != (n_teachers, n):
        raise DataError(f"weights have shape {weights.shape}, expected {(n_teachers, n)} (teachers, examples)")
    if (weights < 0).any():
        raise DataError("teacher weights must be >= 0")
    total = weights.sum(axis=0)
    covered = total > 0
    safe = np.where(covered, total, 1.0)
    q = np.einsum("tn,tnc->nc", weights, probs) / safe[:, None]
    q[~covered] = 1.0 / num_classes
    example_weight = np.where(covered, weights.max(axis=0), 0.0)
    names = teachers or [f"teacher{t}" for t in range(n_teachers)]
    cls = class_names or [str(c) for c in range(num_classes)]
    label = np.argmax(q, axis=1)
    counts = np.bincount(label[covered], minlength=num_classes)
    coverage = {
        "examples": int(n),
        "covered": int(covered.sum()),
        "share": float(covered.mean()) if n else 0.0,
        "per_label": {cls[c]: float(counts[c] / n) if n else 0.0 for c in range(num_classes)},
        "per_label_counts": {cls[c]: int(counts[c]) for c in range(num_classes)},
        "labels_without_examples": [cls[c] for c in range(num_classes) if counts[c] == 0],
        "per_teacher_used": {names[t]: float((weights[t] > 0).mean()) if n else 0.0 for t in range(n_teachers)},
    }
    keep = np.ones(n, dtype=bool) if keep_uncovered else covered
    return Assembled(np.asarray(ids)[keep], q[keep], example_weight[keep], coverage)


def assemble(tables: list[PredictionTable], ids: np.ndarray, *, method: Method = "trust",
             experts_report: dict[str, Any] | None = None, trust: np.ndarray | None = None,
             min_trust: float = 0.5, keep_uncovered: bool = False,
             class_names: list[str] | None = None) -> Assembled:
    """Assemble targets for ``ids`` from in-memory tables, an experts report and/or trust ``[T, N]``."""
    probs, _ = stack_tables(tables, ids, where="in the unlabeled part ")
    names = [t.teacher for t in tables]
    num_classes = probs.shape[2]
    if method not in ("experts", "trust", "experts+trust"):
        raise ConfigError(f"method must be experts, trust or experts+trust, got {method!r}")
    weights = np.ones(probs.shape[:2])
    if "experts" in method:
        if experts_report is None:
            raise ConfigError(f"method={method} needs an experts report")
        claims = claim_weights(probs, expert_weights(experts_report, names, num_classes))
        weights = claims if method == "experts" else (claims > 0).astype(np.float64)
    if "trust" in method:
        if trust is None:
            raise ConfigError(f"method={method} needs trust probabilities")
        trust = np.asarray(trust, dtype=np.float64)
        if trust.shape != probs.shape[:2]:
            raise DataError(f"trust has shape {trust.shape}, expected {probs.shape[:2]} (teachers, examples)")
        weights = weights * np.where(trust >= min_trust, trust, 0.0)
    out = combine(probs, weights, ids, keep_uncovered=keep_uncovered, teachers=names, class_names=class_names)
    out.coverage["method"] = method
    return out


def to_dataset(assembled: Assembled, *, num_classes: int, teachers: list[str], extra_meta: dict[str, Any],
               inputs: dict[str, np.ndarray] | None = None) -> Dataset:
    """The soft-label dataset: ``logits`` (log-probabilities over the global classes) and ``weight``.

    With ``inputs`` (the assembled rows' input column, e.g. ``{"x": ...}``) the set is also a training
    dataset of its own: ``student-train train_data=<set> soft_labels=<set>`` reads both in one pass.
    """
    q = np.clip(assembled.probs, LOG_FLOOR, None)
    q = q / q.sum(axis=1, keepdims=True)
    meta = {"num_classes": int(num_classes), "mode": "dense", "temperature": 1.0,
            "teacher": "assembled:" + "+".join(teachers), "teachers": teachers,
            "label_map": list(range(num_classes)), "coverage": assembled.coverage, **extra_meta}
    return Dataset({"id": assembled.ids.astype(np.int64), **(inputs or {}), "logits": np.log(q).astype(np.float32),
                    "weight": assembled.weight.astype(np.float32)}, meta)


def run_assemble(cfg: AssembleConfig) -> dict[str, Any]:
    """Load tables (or query endpoints) on the unlabeled part, assemble, write the soft-label dataset."""
    data = read_dataset(cfg.unlabeled)
    if len(data) == 0:
        raise DataError(f"{cfg.unlabeled}: the unlabeled part is empty, nothing to assemble")
    num_classes = cfg.num_classes or data.meta.get("num_classes")
    if not num_classes:
        raise ConfigError(f"assemble: num_classes not set and {cfg.unlabeled} meta has none")
    reader = DatasetReader(cfg.unlabeled)
    tables = [load_source(s, num_classes=int(num_classes), data=reader, batch_size=cfg.batch_size)
              for s in cfg.teachers]
    report = load_report(cfg.experts) if cfg.experts else None
    trust = None
    if cfg.trust_models:
        models = load_trust_models(cfg.trust_models)
        models.check_teachers(tables)
        probs, _ = stack_tables(tables, data.ids)
        x = data["x"] if "x" in data else None
        trust = models.per_teacher_proba(x, probs) if cfg.trust_source == "per_teacher" else \
            models.joint_proba(x, probs)
    result = assemble(tables, data.ids, method=cfg.method, experts_report=report, trust=trust,
                      min_trust=cfg.min_trust, keep_uncovered=cfg.keep_uncovered,
                      class_names=data.meta.get("class_names"))
    names = [t.teacher for t in tables]
    rows = np.flatnonzero(np.isin(data.ids, result.ids))  # the assembled rows, in the unlabeled part's order
    inputs = {c: data[c][rows] for c in INPUT_COLUMNS if c in data}  # none when only tables were given
    inherited = {k: data.meta[k] for k in ("class_names", "preprocess") if data.meta.get(k)}
    ds = to_dataset(result, num_classes=int(num_classes), teachers=names, inputs=inputs,
                    extra_meta={"source": cfg.unlabeled, **inherited,
                                "trust_source": cfg.trust_source if trust is not None else None})
    write_dataset(cfg.out, ds, num_shards=cfg.num_shards)
    return {"uri": cfg.out, "coverage": result.coverage, "examples": len(ds)}
