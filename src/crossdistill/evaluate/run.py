"""The evaluate step: score a student (and baselines, and teachers) on test data, streamed.

The test split is read fragment by fragment (``crossdistill.evaluate.data``): labels and predictions
are kept, inputs are not. ``teacher`` is the one teacher of online/offline distillation (the student's
agreement with it is reported); ``teachers`` are the several teachers of a multi-teacher run,
specialists included, with their average and majority vote. Both are scored by the same path
(``crossdistill.evaluate.teachers.score_teacher``), over an OIP endpoint or ``inprocess:<model uri>``,
with their outputs mapped to the data's classes by name. The number of classes is that of the test
data's ``class_names``.

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
from crossdistill.data.shards import DatasetReader
from crossdistill.errors import ModelFormatError
from crossdistill.evaluate import latency as L
from crossdistill.evaluate import metrics as M
from crossdistill.evaluate.data import EvalData, load_test, predict
from crossdistill.evaluate.export import export_student
from crossdistill.evaluate.report import read_train_log, write_report
from crossdistill.evaluate.summary import scalar_metrics, summary_markdown
from crossdistill.evaluate.teachers import EvaluateTeacher, name_teachers, score_ensembles, score_teacher
from crossdistill.teacher.client import TeacherClientConfig

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


def _score_student(name: str, uri: str, test: EvalData,
                   cfg: EvaluateConfig) -> tuple[dict[str, Any], Any, np.ndarray, tuple[int, ...]]:
    """Metrics, footprint and CPU latency of one saved student; also its model, predictions, input shape."""
    import torch

    from crossdistill.train.models import load_student

    model, info = load_student(uri)
    want = tuple(int(s) for s in info.get("input_shape") or ())

    def check(shape: tuple[int, ...]) -> None:
        if want and shape != want:
            raise ModelFormatError(f"{uri}: student '{name}' expects inputs {want}, test data has {shape}")

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(x)))
        return (out[0] if isinstance(out, (tuple, list)) else out).float().numpy()

    logits, shape = predict(forward, test, cfg.batch_size, check)
    if logits.ndim != 2 or logits.shape[1] != test.num_classes:
        raise ModelFormatError(f"{uri}: student '{name}' outputs shape {logits.shape}, expected "
                               f"[N, {test.num_classes}] for the test data's classes {test.class_names}")
    result: dict[str, Any] = {"name": name, "uri": uri, "spec": _jsonable(info.get("spec")),
                              **M.classification_report(logits, test.y, test.num_classes, ece_bins=cfg.ece_bins),
                              "num_parameters": L.count_parameters(model),
                              "size_bytes": L.size_on_disk(uri)}
    result["latency"] = L.torch_cpu_latency(model, shape, batch_sizes=_batch_sizes(cfg),
                                            repeats=cfg.latency_repeats, warmup=cfg.latency_warmup,
                                            threads=cfg.threads)
    return result, model, logits.argmax(axis=1), shape


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
        row = {"name": res.get("name", role), "role": role}
        if "perplexity" in res:  # a language model: next-token scores
            row.update({key: res.get(key) for key in ("perplexity", "next_token_accuracy")})
        else:
            row["accuracy"] = res.get("accuracy")
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
    """Evaluate, export, write ``report.html`` and finally ``metrics.json`` under ``cfg.out``; return the metrics
    (``crossdistill.evaluate.summary.terminal_summary`` shortens them for a terminal)."""
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
    if DatasetReader(cfg.test_data).meta.get("kind") == "text":
        return _run_language(cfg)
    test = load_test(cfg.test_data)
    _forget_previous_result(cfg.out)

    student, student_model, student_pred, input_shape = _score_student(cfg.student_name, cfg.student, test, cfg)
    baselines: dict[str, dict[str, Any]] = {}
    baseline_preds: dict[str, np.ndarray] = {}
    for name, uri in cfg.baselines.items():
        baselines[name], _, baseline_preds[name], _ = _score_student(name, uri, test, cfg)

    teacher, teacher_pred, teachers, ensembles = _score_teachers(cfg, test, input_shape, student_pred,
                                                                 baseline_preds)
    if teacher_pred is not None:
        student["teacher_agreement"] = M.agreement(teacher_pred, student_pred)
        for name, pred in baseline_preds.items():
            baselines[name]["teacher_agreement"] = M.agreement(teacher_pred, pred)

    models: list[tuple[str, Mapping[str, Any]]] = [("student", student)]
    models += [("baseline", b) for b in baselines.values()]
    if teacher is not None:
        models.append(("teacher", teacher))
    models += [("teacher", t) for t in teachers] + [("ensemble", e) for e in ensembles]

    dataset = {"uri": cfg.test_data, "num_examples": int(len(test.y)), "num_classes": test.num_classes,
               "class_names": test.class_names, "name": test.meta.get("name")}
    parts = {"dataset": dataset, "student": student, "baselines": baselines, "teacher": teacher, "teachers": teachers,
             "ensembles": ensembles, "comparison": comparison_rows(models, cfg.latency_batch)}
    return _finish(cfg, parts, export_student(student_model, input_shape, cfg.out, cfg.export,
                                              torchscript_method=cfg.torchscript_method))


def _run_language(cfg: EvaluateConfig) -> dict[str, Any]:
    """A language-model student on held-out text (:mod:`crossdistill.evaluate.language`)."""
    from crossdistill.evaluate.language import evaluate_language

    _forget_previous_result(cfg.out)
    scored = evaluate_language(cfg, _batch_sizes(cfg))
    student, baselines, teacher = scored["student"], scored["baselines"], scored["teacher"]
    models: list[tuple[str, Mapping[str, Any]]] = [("student", student)]
    models += [("baseline", b) for b in baselines.values()] + ([("teacher", teacher)] if teacher else [])
    parts = {"dataset": scored["dataset"], "student": student, "baselines": baselines, "teacher": teacher,
             "teachers": [], "ensembles": [], "comparison": comparison_rows(models, cfg.latency_batch)}
    return _finish(cfg, parts, export_student(scored["student_model"], scored["input_shape"], cfg.out, cfg.export,
                                              torchscript_method=cfg.torchscript_method,
                                              vocab_size=scored["vocab_size"]))


def _finish(cfg: EvaluateConfig, parts: dict[str, Any], exports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The result from its scored ``parts`` and the student's ``exports``: report.html, then metrics.json last."""
    for info in exports.values():
        info["size_bytes"] = L.size_on_disk(info["uri"])
    result: dict[str, Any] = {
        "title": cfg.title,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **parts,
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


def _score_teachers(cfg: EvaluateConfig, test: EvalData, input_shape: tuple[int, ...], student_pred: np.ndarray,
                    baseline_preds: Mapping[str, np.ndarray],
                    ) -> tuple[dict[str, Any] | None, np.ndarray | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """Every teacher scored by one path: ``teacher`` (the student's own, named ``teacher``; its result
    and predictions, for the agreement columns) and each of ``teachers``; then, with two or more of
    ``teachers``, their average and majority vote."""
    specs = ([EvaluateTeacher(name="teacher", client=cfg.teacher)] if cfg.teacher is not None else []) + \
        list(cfg.teachers)
    preds = {cfg.student_name: student_pred, **baseline_preds}
    common = {"student_name": cfg.student_name, "ece_bins": cfg.ece_bins}
    scored = [score_teacher(spec, test, preds, input_shape=input_shape, batch_size=cfg.batch_size,
                            ready_timeout_s=cfg.teacher_ready_timeout_s, batch_sizes=_batch_sizes(cfg),
                            repeats=cfg.latency_repeats, warmup=cfg.latency_warmup, **common) for spec in specs]
    teacher, teacher_pred = None, None
    if cfg.teacher is not None:
        (teacher, table), scored = scored[0], scored[1:]
        teacher_pred = table.predictions()
    tables = [table for _, table in scored]
    ensembles = score_ensembles(tables, test.ids, test.y, test.num_classes, preds, **common) \
        if len(tables) > 1 else []
    return teacher, teacher_pred, [res for res, _ in scored], ensembles
