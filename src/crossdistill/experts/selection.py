"""Per-label experts (seed 001, FIG. 3): judge every teacher label by label on the labeled validation part.

A teacher is judged only on the labels it covers: precision, recall and F1 of its decisions "this is
label ``l``" against the ground truth. The expert(s) of a label are the best teacher by ``metric`` and
every teacher within ``margin`` of it, provided the score reaches ``min_score``. Labels nobody covers,
labels without validation examples and labels where nobody is good enough are reported as gaps.
Without labels the consensus mode (``consensus.py``) picks the experts instead.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.data.shards import Dataset, DatasetReader, read_dataset
from crossdistill.errors import ConfigError, DataError
from crossdistill.experts.consensus import consensus_experts, decision_f1
from crossdistill.experts.tables import PredictionTable, TeacherSource, load_source, stack_tables

Metric = Literal["f1", "precision", "recall"]
REPORT_JSON = "experts.json"


class ExpertEvaluateConfig(StrictConfig):
    """Configuration of `crossdistill expert-evaluate`."""

    teachers: list[TeacherSource] = Field(..., min_length=1)
    val: str | None = Field(None, description="labeled validation dataset (id, y; x for endpoints)")
    unlabeled: str | None = Field(None, description="unlabeled dataset, used by the consensus mode")
    num_classes: int | None = Field(None, gt=0, description="global classes; default: the dataset's meta")
    mode: Literal["labeled", "consensus", "auto"] = Field(
        "auto", description="auto: labeled when the validation part has labels, else consensus")
    metric: Metric = "f1"
    margin: float = Field(0.0, ge=0, le=1, description="also keep teachers this close to the best score")
    min_score: float = Field(0.5, ge=0, le=1, description="a best score below this leaves the label a gap")
    consensus_threshold: float = Field(0.5, ge=0, le=1, description="max deviation from the consensus")
    sole_coverer_is_expert: bool = True
    batch_size: int = Field(256, gt=0)
    out: str = Field("runs/experts", description="where experts.json/.md/.html are written")


def per_label_scores(probs: np.ndarray, covered: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """``precision``/``recall``/``f1`` ``[T, C]`` (NaN where a teacher does not cover the label or it is
    undefined), ``support`` ``[C]`` (validation examples per label) and ``predicted`` ``[T, C]``."""
    n_teachers, n, num_classes = probs.shape
    y = np.asarray(y, dtype=np.int64)
    if len(y) != n:
        raise DataError(f"validation labels: {len(y)} values for {n} examples")
    out = {k: np.full((n_teachers, num_classes), np.nan) for k in ("precision", "recall", "f1")}
    out["predicted"] = np.zeros((n_teachers, num_classes), dtype=np.int64)
    for t in range(n_teachers):
        pred = np.argmax(probs[t], axis=1)
        p, r, f = decision_f1(pred, y, num_classes)
        out["predicted"][t] = np.bincount(pred, minlength=num_classes)
        covered_t = covered[t]
        # a covered label nobody predicted scores 0 precision/F1 (not undefined) when it has support
        support = np.bincount(y, minlength=num_classes).astype(np.float64)
        for key, arr in (("precision", p), ("recall", r), ("f1", f)):
            arr = np.where(np.isnan(arr) & (support > 0), 0.0, arr)
            out[key][t] = np.where(covered_t, arr, np.nan)
    out["support"] = np.bincount(y, minlength=num_classes)
    return out


def select_experts(scores: np.ndarray, covered: np.ndarray, support: np.ndarray, *, margin: float = 0.0,
                   min_score: float = 0.5) -> tuple[list[list[int]], list[str | None]]:
    """Teacher indices per label (best first) and a gap reason per label (None when it has experts)."""
    experts: list[list[int]] = []
    reasons: list[str | None] = []
    for label in range(scores.shape[1]):
        coverers = np.flatnonzero(covered[:, label])
        if len(coverers) == 0:
            experts.append([])
            extra = f" ({int(support[label])} validation examples have it)" if support[label] else ""
            reasons.append(f"no teacher covers this label{extra}")
            continue
        if support[label] == 0:
            experts.append([])
            reasons.append("no validation examples of this label: cannot judge its teachers")
            continue
        col = scores[coverers, label]
        best = np.nanmax(col) if np.isfinite(col).any() else np.nan
        if not np.isfinite(best) or best < min_score:
            experts.append([])
            reasons.append(f"best score {best:.3f} is below min_score {min_score}")
            continue
        chosen = [int(t) for t in coverers if np.isfinite(scores[t, label]) and scores[t, label] >= best - margin]
        chosen.sort(key=lambda t: -scores[t, label])
        experts.append(chosen)
        reasons.append(None)
    return experts, reasons


def _finite(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


def build_report(tables: list[PredictionTable], experts: list[list[int]], reasons: list[str | None], *,
                 mode: str, class_names: list[str], scores: dict[str, np.ndarray] | None = None,
                 deviation: np.ndarray | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: per label, every covering teacher's scores, the experts and any gap."""
    names = [t.teacher for t in tables]
    per_label = []
    for label, name in enumerate(class_names):
        entry: dict[str, Any] = {"label": label, "name": name, "covered_by": [n for n, t in zip(names, tables, strict=True)
                                                                              if t.covered[label]]}
        teacher_scores = {}
        for ti, tname in enumerate(names):
            if not tables[ti].covered[label]:
                continue
            row: dict[str, Any] = {}
            if scores is not None:
                row.update({k: _finite(scores[k][ti, label]) for k in ("precision", "recall", "f1")})
            if deviation is not None:
                row["deviation"] = _finite(deviation[ti, label])
            teacher_scores[tname] = row
        if scores is not None:
            entry["support"] = int(scores["support"][label])
        entry["scores"] = teacher_scores
        entry["experts"] = [names[t] for t in experts[label]]
        entry["expert_weights"] = {names[t]: _expert_weight(t, label, scores, deviation) for t in experts[label]}
        entry["gap"] = reasons[label]
        per_label.append(entry)
    return {
        "mode": mode,
        "num_classes": len(class_names),
        "class_names": class_names,
        "teachers": [{"name": t.teacher, "label_map": t.label_map.tolist()} for t in tables],
        "per_label": per_label,
        "experts": {str(e["label"]): e["experts"] for e in per_label},
        "gaps": [{"label": e["label"], "name": e["name"], "reason": e["gap"]} for e in per_label if e["gap"]],
        "settings": settings or {},
    }


def _expert_weight(t: int, label: int, scores: dict[str, np.ndarray] | None, deviation: np.ndarray | None) -> float:
    """How far a claim of expert ``t`` for ``label`` is trusted in assembly: its validation precision
    (labeled mode) or its agreement with the consensus (consensus mode)."""
    if scores is not None and np.isfinite(scores["precision"][t, label]):
        return round(float(scores["precision"][t, label]), 6)
    if deviation is not None and np.isfinite(deviation[t, label]):
        return round(1.0 - float(deviation[t, label]), 6)
    return 1.0


def evaluate_experts(tables: list[PredictionTable], val: Dataset | None, *, unlabeled: Dataset | None = None,
                     mode: str = "auto", metric: Metric = "f1", margin: float = 0.0, min_score: float = 0.5,
                     consensus_threshold: float = 0.5, sole_coverer_is_expert: bool = True,
                     class_names: list[str] | None = None) -> dict[str, Any]:
    """Pick the experts of every label from in-memory tables; returns the report dict."""
    num_classes = tables[0].num_classes
    names = class_names or [str(c) for c in range(num_classes)]
    labeled = val.take(np.flatnonzero(val.labeled_mask())) if val is not None else None
    has_labels = labeled is not None and len(labeled) > 0
    if mode == "auto":
        mode = "labeled" if has_labels else "consensus"
    settings = {"metric": metric, "margin": margin, "min_score": min_score,
                "consensus_threshold": consensus_threshold}
    if mode == "labeled":
        if not has_labels:
            what = "no validation dataset was given" if val is None else \
                f"the validation part has no labeled examples ({len(val)} rows, all y=-1 or none)"
            raise DataError(f"expert-evaluate in labeled mode: {what}; give a labeled 'val' or use mode=consensus")
        y = labeled["y"]
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(f"validation labels must lie in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}")
        probs, covered = stack_tables(tables, labeled.ids, where="in the validation part ")
        scores = per_label_scores(probs, covered, y)
        experts, reasons = select_experts(scores[metric], covered, scores["support"], margin=margin,
                                          min_score=min_score)
        return build_report(tables, experts, reasons, mode=mode, class_names=names, scores=scores,
                            settings=settings)
    if mode == "consensus":
        parts = [d for d in (val, unlabeled) if d is not None and len(d)]
        if not parts:
            raise DataError("expert-evaluate in consensus mode: no examples (val and unlabeled are empty or missing)")
        ids = np.unique(np.concatenate([d.ids for d in parts]))
        probs, covered = stack_tables(tables, ids)
        experts, dev, reasons = consensus_experts(probs, covered, threshold=consensus_threshold,
                                                  sole_coverer_is_expert=sole_coverer_is_expert)
        return build_report(tables, experts, reasons, mode=mode, class_names=names, deviation=dev,
                            settings={**settings, "examples": int(len(ids))})
    raise ConfigError(f"mode must be 'labeled', 'consensus' or 'auto', got {mode!r}")


def render_markdown(report: dict[str, Any]) -> str:
    """A short table: label, support, experts, covering teachers' scores, gap."""
    teachers = [t["name"] for t in report["teachers"]]
    key = "f1" if report["mode"] == "labeled" else "deviation"
    head = ["label", "support", "experts", *[f"{t} {key}" for t in teachers], "gap"]
    lines = [f"Experts per label ({report['mode']} mode)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for e in report["per_label"]:
        cells = [e["name"], str(e.get("support", "-")), ", ".join(e["experts"]) or "-"]
        for t in teachers:
            v = e["scores"].get(t, {}).get(key)
            cells.append("n/a" if t not in e["scores"] else ("-" if v is None else f"{v:.3f}"))
        cells.append(e["gap"] or "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_html(report: dict[str, Any]) -> str:
    rows = render_markdown(report).splitlines()[2:]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    body = [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]
    th = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>crossdistill experts</title></head>"
            f"<body><h1>Experts per label ({html.escape(report['mode'])} mode)</h1>"
            f"<table border='1' cellpadding='4'><tr>{th}</tr>{trs}</table></body></html>\n")


def write_report(out: str, report: dict[str, Any]) -> dict[str, str]:
    paths = {"json": storage.join(out, REPORT_JSON), "markdown": storage.join(out, "experts.md"),
             "html": storage.join(out, "experts.html")}
    storage.write_text(paths["json"], json.dumps(report, indent=1))
    storage.write_text(paths["markdown"], render_markdown(report))
    storage.write_text(paths["html"], render_html(report))
    return paths


def load_report(uri: str) -> dict[str, Any]:
    """Read ``experts.json`` (a file URI, or the folder holding it)."""
    target = uri if uri.endswith(".json") else storage.join(uri, REPORT_JSON)
    try:
        return json.loads(storage.read_text(target))
    except json.JSONDecodeError as exc:
        raise DataError(f"{target} is not valid JSON: {exc}") from None


def load_tables(sources: list[TeacherSource], num_classes: int, data: Sequence[DatasetReader],
                batch_size: int = 256) -> list[PredictionTable]:
    return [load_source(s, num_classes=num_classes, data=data, batch_size=batch_size) for s in sources]


def run_expert_evaluate(cfg: ExpertEvaluateConfig) -> dict[str, Any]:
    """Load the teachers' tables (or query their endpoints), pick experts, write the report."""
    val = read_dataset(cfg.val) if cfg.val else None
    unlabeled = read_dataset(cfg.unlabeled) if cfg.unlabeled else None
    meta = (val or unlabeled).meta if (val or unlabeled) is not None else {}
    num_classes = cfg.num_classes or meta.get("num_classes")
    if not num_classes:
        raise ConfigError("expert-evaluate: num_classes is not set and the datasets' meta has none")
    parts = [DatasetReader(uri) for uri in (cfg.val, cfg.unlabeled) if uri]
    tables = load_tables(cfg.teachers, int(num_classes), parts, cfg.batch_size)
    report = evaluate_experts(tables, val, unlabeled=unlabeled, mode=cfg.mode, metric=cfg.metric,
                              margin=cfg.margin, min_score=cfg.min_score,
                              consensus_threshold=cfg.consensus_threshold,
                              sole_coverer_is_expert=cfg.sole_coverer_is_expert,
                              class_names=meta.get("class_names"))
    report["paths"] = write_report(cfg.out, report)
    return report
