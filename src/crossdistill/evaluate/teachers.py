"""Teachers on the test split, one or several by the same path: label spaces, specialists, plain ensembles.

Every teacher (``EvaluateConfig.teacher`` and each of ``teachers``) is scored as the student side sees
it, through the one teacher interface (an OIP endpoint or ``inprocess:<model uri>``). Its outputs are
put in the data's class order by the names it declares, and may cover only some classes: a
specialist's ``label_map`` (teacher output index -> global class id) lifts them onto the global
classes through ``crossdistill.experts.tables``, so it is compared with the student on the same
footing. With two or more teachers, the plain average of their
distributions and their majority vote (``crossdistill.experts.baselines``) are scored as well: what a
student distilled from all of them should at least match.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from crossdistill.config import StrictConfig
from crossdistill.data.classes import teacher_order
from crossdistill.errors import ConfigError, DataError
from crossdistill.evaluate import latency as L
from crossdistill.evaluate import metrics as M
from crossdistill.evaluate.data import EvalData
from crossdistill.experts.tables import PredictionTable
from crossdistill.teacher.client import TeacherClientConfig


class EvaluateTeacher(StrictConfig):
    """One teacher of ``EvaluateConfig.teachers``: its endpoint, the classes it outputs, its name."""

    name: str | None = Field(None, min_length=1, description="name in tables and metric keys (default teacher<i>)")
    client: TeacherClientConfig = Field(..., description="the teacher's endpoint (client config, or just its URL)")
    label_map: list[int] | None = Field(
        None, description="teacher output index -> global class id (a specialist); default: every class in order")

    @model_validator(mode="before")
    @classmethod
    def _just_a_url(cls, value: Any) -> Any:
        return {"client": {"url": value}} if isinstance(value, str) else value

    @field_validator("client", mode="before")
    @classmethod
    def _client_url(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value


def name_teachers(teachers: list[EvaluateTeacher]) -> list[EvaluateTeacher]:
    """Give unnamed teachers ``teacher<i>`` (their position) and insist on distinct names."""
    for i, teacher in enumerate(teachers):
        if teacher.name is None:
            teacher.name = f"teacher{i}"
    names = [t.name for t in teachers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"teacher names must be distinct, got duplicates {dupes}")
    return teachers


def endpoint_teachers(urls: Sequence[str], label_maps: Sequence[Sequence[int] | None] = ()) -> list[dict[str, Any]]:
    """``EvaluateConfig.teachers`` entries for endpoints ``urls`` with their label maps (same order; empty = none).

    This is how the evaluate component turns its ``teacher_endpoints`` / ``teacher_label_maps``
    (train-teacher's ``label_map`` outputs) into config.
    """
    if label_maps and len(label_maps) != len(urls):
        raise ConfigError(f"evaluate: {len(label_maps)} teacher_label_maps for {len(urls)} teacher endpoints "
                          "(one per teacher expected, in the same order)")
    maps = list(label_maps) or [None] * len(urls)
    return [{"client": {"url": url}, **({"label_map": [int(c) for c in m]} if m else {})}
            for url, m in zip(urls, maps, strict=True)]


def score_teacher(teacher: EvaluateTeacher, test: EvalData, preds: Mapping[str, np.ndarray], *,
                  student_name: str, input_shape: Sequence[int], batch_size: int, ready_timeout_s: float,
                  ece_bins: int, batch_sizes: Sequence[int], repeats: int,
                  warmup: int) -> tuple[dict[str, Any], PredictionTable]:
    """Metrics of one teacher on the labelled rows of ``test`` and its prediction table (on those rows).

    The teacher is reached through the one teacher interface (an OIP endpoint or ``inprocess:<uri>``)
    and asked about the test split by ``label_dataset``, streamed. Its outputs are mapped to the
    data's classes by its ``label_map``, else by the class names it declares (``teacher_order``).
    ``accuracy`` counts every example (a specialist is wrong on classes it cannot name);
    ``covered_accuracy`` only those of its own classes. ``agreement`` is with each model of ``preds``
    (student and baselines), ``student_agreement`` with ``student_name``. ECE and NLL are of its
    global distribution: not for top-k answers (the distribution outside the top k is unknown), and
    NLL only for a teacher that covers every class (elsewhere it would be -log 0).
    """
    from crossdistill.experts.tables import table_from_teacher
    from crossdistill.teacher.labeling import open_teacher

    name = str(teacher.name)
    with open_teacher(teacher.client) as client:
        client.wait_ready(ready_timeout_s)
        meta = client.metadata()
        label_map = teacher_label_map(teacher, meta, test.class_names)
        table = table_from_teacher(client, test.reader, name=name, num_classes=test.num_classes,
                                   label_map=label_map, batch_size=batch_size).align(test.ids)
        timing = L.teacher_latency(client, tuple(input_shape), batch_sizes=batch_sizes, repeats=repeats,
                                   warmup=warmup)
    pred = table.predictions()
    y = test.y
    own = np.isin(y, table.label_map)
    agreement = {model: M.agreement(pred, p) for model, p in preds.items()}
    report = M.classification_report(table.global_probs(), y, test.num_classes, ece_bins=ece_bins, from_probs=True)
    if table.meta.get("mode") == "topk":
        report = {k: v for k, v in report.items() if k not in ("ece", "nll", "reliability")}
    elif not table.covered.all():
        report["nll"] = None
    result: dict[str, Any] = {
        "name": name, "url": teacher.client.url, "model_name": teacher.client.model_name,
        "label_map": table.label_map.tolist(), "num_outputs": int(len(table.label_map)), **report,
        "covered_accuracy": M.accuracy(y[own], pred[own]) if own.any() else None,
        "agreement": agreement, "student_agreement": agreement.get(student_name),
        **L.teacher_footprint(meta), "latency": timing, "metadata": _jsonable(meta)}
    return M.json_ready(result), table


def teacher_label_map(teacher: EvaluateTeacher, meta: Mapping[str, Any], names: Sequence[str]) -> list[int] | None:
    """Teacher output index -> data class index: the configured ``label_map`` (checked against the
    teacher's declared class names, if any), else by name (None: outputs already in the data's order)."""
    where = f"evaluate: teacher '{teacher.name}' ({teacher.client.url})"
    declared = meta.get("class_names")
    if teacher.label_map is None:
        order = teacher_order(names, declared, meta.get("num_classes"), where)
        return None if order is None else np.argsort(order).tolist()
    if declared is not None:
        mapped = [names[c] if 0 <= c < len(names) else f"<class {c}>" for c in teacher.label_map]
        if [str(n) for n in declared] != mapped:
            raise DataError(f"{where}: its label_map {teacher.label_map} names the data's classes {mapped}, but the "
                            f"teacher declares its outputs as {list(declared)} (data's classes: {list(names)})")
    return list(teacher.label_map)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str)) if obj is not None else None


def score_ensembles(tables: Sequence[PredictionTable], ids: np.ndarray, y: np.ndarray, num_classes: int,
                    preds: Mapping[str, np.ndarray], *, student_name: str, ece_bins: int) -> list[dict[str, Any]]:
    """The plain average of the teachers' distributions and their majority vote, scored like a model.

    Calibration is reported for the average only: a vote share is not a probability.
    """
    from crossdistill.experts.baselines import average, majority_vote
    from crossdistill.experts.tables import stack_tables

    stacked, _ = stack_tables(tables, ids, where="(evaluate) ")
    teachers = [t.teacher for t in tables]
    results = []
    for method, label, combine in (("average", "average of teachers", average),
                                   ("majority_vote", "majority vote of teachers", majority_vote)):
        probs = combine(stacked)
        report = M.classification_report(probs, y, num_classes, ece_bins=ece_bins, from_probs=True)
        if method == "majority_vote":
            report = {k: v for k, v in report.items() if k not in ("ece", "nll", "reliability")}
        pred = probs.argmax(axis=1)
        agreement = {model: M.agreement(pred, p) for model, p in preds.items()}
        results.append(M.json_ready({"name": label, "method": method, "teachers": teachers, **report,
                                     "agreement": agreement, "student_agreement": agreement.get(student_name)}))
    return results
