"""The evaluate step: score a student (and baselines, and teachers through their endpoints) on test data.

``teacher`` is the one teacher of online/offline distillation (accuracy, calibration, latency, the
student's agreement with it); ``teachers`` are the several teachers of a multi-teacher run, specialists
included (``crossdistill.evaluate.teachers``), with their average and majority vote.

Writes to ``<out>``: the exported student (``student.torchscript.pt``, ``student.onnx``), then
``report.html``, then ``metrics.json`` last. ``metrics.json`` is the mark of a finished evaluation:
when anything fails (an export that does not load or match, a teacher that does not answer) it is not
written, so no reader mistakes a half-done run for a result.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.data.shards import Dataset, read_dataset
from crossdistill.errors import DataError, ModelFormatError, TeacherResponseError
from crossdistill.evaluate import latency as L
from crossdistill.evaluate import metrics as M
from crossdistill.evaluate.export import export_student
from crossdistill.evaluate.report import read_train_log, write_report
from crossdistill.evaluate.summary import scalar_metrics, summary_markdown
from crossdistill.evaluate.teachers import EvaluateTeacher, name_teachers, score_ensembles, score_teacher
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig
from crossdistill.teacher.protocol import LOGITS

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


class EvaluateConfig(StrictConfig):
    """What to evaluate, against what, and where the results go."""

    test_data: str = Field(..., description="URI of the test dataset (shards with x and y)")
    student: str = Field(..., description="URI of the student file (model.pt from student-train)")
    student_name: str = Field("student", min_length=1, description="the student's name in tables")
    teacher: TeacherClientConfig | None = Field(
        None, description="teacher endpoint (client config, or just its URL) for agreement, accuracy, latency")
    teachers: list[EvaluateTeacher] = Field(
        default_factory=list, description="further teachers (multi-teacher): each a URL or {client, label_map, "
                                          "name}; a specialist's outputs map to global classes by its label_map")
    teacher_ready_timeout_s: float = Field(60.0, gt=0, description="wait this long for a teacher to be ready")
    baselines: dict[str, str] = Field(default_factory=dict,
                                      description="extra students to compare: name -> model.pt URI")
    train_log: str | None = Field(None, description="URI of the student's train_log.jsonl (loss curve)")
    out: str = Field("runs/evaluate", description="output folder (any fsspec URI)")
    ece_bins: int = Field(15, ge=1, le=1000)
    batch_size: int = Field(256, ge=1, description="inference batch size for scoring")
    latency_batch: int = Field(32, ge=1, description="the larger batch size N timed besides batch 1")
    latency_repeats: int = Field(50, ge=1, description="timed calls per batch size, after warm-up")
    latency_warmup: int = Field(5, ge=0)
    threads: int = Field(1, ge=1, description="torch CPU threads while scoring and timing (reported)")
    export: list[Literal["torchscript", "onnx"]] = Field(default_factory=lambda: ["torchscript", "onnx"])
    torchscript_method: Literal["trace", "script"] = "trace"
    title: str = "crossdistill evaluation"
    notes: str = ""

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_url(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value

    @field_validator("teachers")
    @classmethod
    def _teacher_names(cls, value: list[EvaluateTeacher]) -> list[EvaluateTeacher]:
        return name_teachers(value)

    @field_validator("baselines")
    @classmethod
    def _baseline_names(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not name.strip() for name in value):
            raise ValueError("baseline names must be non-empty")
        return value


def _load_test(uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    ds = read_dataset(uri, columns=["id", "x", "y"])
    keep = ds.labeled_mask()
    if not keep.any():
        raise DataError(f"{uri}: no labeled examples (column 'y' is all -1); evaluation needs labels")
    x = ds["x"][keep].astype(np.float32, copy=False)
    return ds.ids[keep], x, ds["y"][keep].astype(np.int64), dict(ds.meta)


def _predict(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    import torch

    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out = model(torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])))
            outs.append((out[0] if isinstance(out, (tuple, list)) else out).float().numpy())
    return np.concatenate(outs)


def _score_student(name: str, uri: str, x: np.ndarray, y: np.ndarray, num_classes: int,
                   cfg: EvaluateConfig) -> tuple[dict[str, Any], Any, np.ndarray]:
    """Metrics, footprint and CPU latency of one saved student; also returns the model and predictions."""
    from crossdistill.train.models import load_student

    model, info = load_student(uri)
    shape = tuple(int(s) for s in info.get("input_shape") or x.shape[1:])
    if shape != tuple(x.shape[1:]):
        raise ModelFormatError(f"{uri}: student '{name}' expects inputs {shape}, test data has {tuple(x.shape[1:])}")
    logits = _predict(model, x, cfg.batch_size)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ModelFormatError(f"{uri}: student '{name}' outputs shape {logits.shape}, "
                               f"expected [N, {num_classes}] for the test data's {num_classes} classes")
    result: dict[str, Any] = {"name": name, "uri": uri, "spec": _jsonable(info.get("spec")),
                              **M.classification_report(logits, y, num_classes, ece_bins=cfg.ece_bins),
                              "num_parameters": L.count_parameters(model),
                              "size_bytes": L.size_on_disk(uri)}
    result["latency"] = L.torch_cpu_latency(model, shape, batch_sizes=_batch_sizes(cfg),
                                            repeats=cfg.latency_repeats, warmup=cfg.latency_warmup,
                                            threads=cfg.threads)
    return result, model, logits.argmax(axis=1)


def _score_teacher(cfg: EvaluateConfig, ids: np.ndarray, x: np.ndarray, y: np.ndarray,
                   num_classes: int) -> tuple[dict[str, Any], np.ndarray]:
    """The teacher as the student side sees it: predictions, round-trip latency and metadata footprint."""
    assert cfg.teacher is not None
    url = cfg.teacher.url
    with TeacherClient(cfg.teacher) as client:
        client.wait_ready(cfg.teacher_ready_timeout_s)
        meta = client.metadata()
        starts = range(0, len(x), cfg.batch_size)
        batches = ((ids[s:s + cfg.batch_size], x[s:s + cfg.batch_size], s) for s in starts)
        logits = np.full((len(x), num_classes), np.nan, dtype=np.float32)
        top1 = np.full(len(x), -1, dtype=np.int64)
        dense = cfg.teacher.top_k == 0
        for out, start in client.stream(batches):
            rows = slice(start, start + len(out))
            if not np.array_equal(np.asarray(out.ids), ids[rows]):
                raise TeacherResponseError(f"teacher {url}: response ids do not match the request's")
            if out.logits is not None:
                if out.logits.shape[1] != num_classes:
                    raise TeacherResponseError(f"teacher {url}: logits have {out.logits.shape[1]} classes, "
                                               f"the test data {num_classes}")
                logits[rows] = out.logits
            elif out.topk_indices is not None:
                top1[rows] = np.asarray(out.topk_indices)[:, 0]
            else:
                raise TeacherResponseError(f"teacher {url}: response has neither '{LOGITS}' nor top-k tensors")
        result: dict[str, Any] = {"name": "teacher", "url": url, "model_name": cfg.teacher.model_name}
        if dense:
            result.update(M.classification_report(logits, y, num_classes, ece_bins=cfg.ece_bins))
            pred = logits.argmax(axis=1)
        else:
            # top-k mode: the top-1 class is known, calibrated probabilities are not (temperature applied)
            pred = top1
            result.update(M.json_ready({
                "num_examples": int(len(pred)), "accuracy": M.accuracy(y, pred),
                "per_class_accuracy": M.per_class_accuracy(y, pred, num_classes).tolist(),
                "confusion_matrix": M.confusion_matrix(y, pred, num_classes).tolist()}))
        result.update(L.teacher_footprint(meta))
        result["latency"] = L.teacher_latency(client, x.shape[1:], batch_sizes=_batch_sizes(cfg),
                                              repeats=cfg.latency_repeats, warmup=cfg.latency_warmup)
        result["metadata"] = _jsonable(meta)
    return result, pred


def _batch_sizes(cfg: EvaluateConfig) -> tuple[int, ...]:
    return (1,) if cfg.latency_batch == 1 else (1, cfg.latency_batch)


def _median(result: Mapping[str, Any], batch: int) -> float | None:
    for row in (result.get("latency") or {}).get("batches", []):
        if row["batch_size"] == batch:
            return float(row["median_ms"])
    return None


def comparison_rows(models: Sequence[tuple[str, Mapping[str, Any]]], latency_batch: int) -> list[dict[str, Any]]:
    """One row per model (role, metrics result) for the comparison table and ``metrics.json``.

    Rows of the several ``teachers`` and their ensembles also carry ``covered_accuracy`` (a
    specialist's accuracy on its own classes) and ``student_agreement``.
    """
    rows = []
    for role, res in models:
        row = {"name": res.get("name", role), "role": role, "accuracy": res.get("accuracy")}
        row.update({key: res[key] for key in ("covered_accuracy", "student_agreement") if key in res})
        row.update({"teacher_agreement": res.get("teacher_agreement"), "ece": res.get("ece"),
                    "nll": res.get("nll"), "num_parameters": res.get("num_parameters"),
                    "size_bytes": res.get("size_bytes"), "latency_b1_ms": _median(res, 1),
                    "latency_bN_ms": _median(res, latency_batch), "latency_batch": latency_batch})
        rows.append(row)
    return rows


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return json.loads(json.dumps(obj, default=str)) if obj is not None else None


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate, export, write ``report.html`` and finally ``metrics.json`` under ``cfg.out``; return the metrics."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(previous_threads)


def _forget_previous_result(out: str) -> None:
    """A re-run into the same folder first drops the old metrics.json, so a failure cannot leave it
    standing beside half-replaced exports as if it described them."""
    fs, path = storage.filesystem(storage.join(out, METRICS_FILE))
    if fs.exists(path):
        fs.rm(path)


def _run(cfg: EvaluateConfig) -> dict[str, Any]:
    ids, x, y, meta = _load_test(cfg.test_data)
    _forget_previous_result(cfg.out)
    num_classes = int(meta.get("num_classes") or int(y.max()) + 1)
    if y.max() >= num_classes:
        raise DataError(f"{cfg.test_data}: label {int(y.max())} >= num_classes {num_classes} in the manifest meta")
    class_names = [str(c) for c in meta.get("class_names") or []]
    if len(class_names) != num_classes:
        class_names = [str(i) for i in range(num_classes)]

    student, student_model, student_pred = _score_student(cfg.student_name, cfg.student, x, y, num_classes, cfg)
    baselines: dict[str, dict[str, Any]] = {}
    baseline_preds: dict[str, np.ndarray] = {}
    for name, uri in cfg.baselines.items():
        baselines[name], _, baseline_preds[name] = _score_student(name, uri, x, y, num_classes, cfg)

    teacher = None
    if cfg.teacher is not None:
        teacher, teacher_pred = _score_teacher(cfg, ids, x, y, num_classes)
        student["teacher_agreement"] = M.agreement(teacher_pred, student_pred)
        for name, pred in baseline_preds.items():
            baselines[name]["teacher_agreement"] = M.agreement(teacher_pred, pred)

    teachers, ensembles = _score_teachers(cfg, ids, x, y, num_classes, student_pred, baseline_preds)

    models: list[tuple[str, Mapping[str, Any]]] = [("student", student)]
    models += [("baseline", b) for b in baselines.values()]
    if teacher is not None:
        models.append(("teacher", teacher))
    models += [("teacher", t) for t in teachers] + [("ensemble", e) for e in ensembles]

    exports = export_student(student_model, x.shape[1:], cfg.out, cfg.export,
                             torchscript_method=cfg.torchscript_method)
    for info in exports.values():
        info["size_bytes"] = L.size_on_disk(info["uri"])

    result: dict[str, Any] = {
        "title": cfg.title,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"uri": cfg.test_data, "num_examples": int(len(y)), "num_classes": num_classes,
                    "class_names": class_names, "name": meta.get("name")},
        "student": student,
        "baselines": baselines,
        "teacher": teacher,
        "teachers": teachers,
        "ensembles": ensembles,
        "comparison": comparison_rows(models, cfg.latency_batch),
        "exports": exports,
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "torch_threads": cfg.threads, "processor": platform.processor() or None},
        "config": cfg.model_dump(mode="json"),
    }
    result = M.json_ready(result)
    train_log = read_train_log(cfg.train_log) if cfg.train_log else None
    report_uri = storage.join(cfg.out, REPORT_FILE)
    write_report(report_uri, result, title=cfg.title, notes=cfg.notes, train_log=train_log)
    result["report"] = report_uri
    result["metrics"] = storage.join(cfg.out, METRICS_FILE)
    result["scalars"] = scalar_metrics(result)
    storage.write_text(result["metrics"], json.dumps(result, indent=2, allow_nan=False) + "\n")
    # for a Markdown artifact or a terminal; metrics.json holds the data it is made of
    result["summary_markdown"] = summary_markdown(result, result["scalars"])
    return result


def _score_teachers(cfg: EvaluateConfig, ids: np.ndarray, x: np.ndarray, y: np.ndarray, num_classes: int,
                    student_pred: np.ndarray, baseline_preds: Mapping[str, np.ndarray],
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``cfg.teachers`` scored one by one, then (with two or more) their average and majority vote."""
    if not cfg.teachers:
        return [], []
    test = Dataset({"id": ids, "x": x})
    preds = {cfg.student_name: student_pred, **baseline_preds}
    common = {"student_name": cfg.student_name, "ece_bins": cfg.ece_bins}
    teachers, tables = [], []
    for spec in cfg.teachers:
        res, table = score_teacher(spec, test, y, num_classes, preds, batch_size=cfg.batch_size,
                                   ready_timeout_s=cfg.teacher_ready_timeout_s, batch_sizes=_batch_sizes(cfg),
                                   repeats=cfg.latency_repeats, warmup=cfg.latency_warmup, **common)
        teachers.append(res)
        tables.append(table)
    ensembles = score_ensembles(tables, ids, y, num_classes, preds, **common) if len(tables) > 1 else []
    return teachers, ensembles
