"""Short forms of an evaluation result: flat scalar metrics (for KFP's Metrics artifact) and a Markdown summary.

Both read the ``run_evaluate`` result (the ``metrics.json`` shape) and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def _numbers(values: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """The top-level int/float entries of ``values`` (no bools, no None), keys prefixed."""
    return {f"{prefix}{k}": float(v) for k, v in (values or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def metric_key(name: str) -> str:
    """A model name as a metric-key prefix: ``"few labels only"`` -> ``few_labels_only``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "model"


def scalar_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Every single number of the result, flat: the student's bare (``accuracy``), the others prefixed.

    ``teacher_<k>`` for the single ``teacher``; ``<name>_<k>`` for each of ``teachers`` (default names
    ``teacher0``, ``teacher1``, ...); ``ensemble_<method>_<k>`` for the teachers' average and
    majority vote; ``baseline_<name>_<k>`` for the baselines.
    """
    out = _numbers(result.get("student"))
    if result.get("teacher"):
        out.update(_numbers(result["teacher"], "teacher_"))
    for teacher in result.get("teachers") or []:
        out.update(_numbers(teacher, f"{metric_key(teacher['name'])}_"))
    for ensemble in result.get("ensembles") or []:
        out.update(_numbers(ensemble, f"ensemble_{ensemble['method']}_"))
    for name, baseline in (result.get("baselines") or {}).items():
        out.update(_numbers(baseline, f"baseline_{metric_key(name)}_"))
    return dict(sorted(out.items()))


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


# comparison-row key -> (column heading, format); the optional ones appear only when a row has them
_COLUMNS = [("accuracy", "accuracy", "{:.4f}"), ("perplexity", "perplexity", "{:.3f}"),
            ("next_token_accuracy", "next-token accuracy", "{:.4f}"),
            ("covered_accuracy", "accuracy on own classes", "{:.4f}"),
            ("teacher_agreement", "teacher agreement", "{:.4f}"),
            ("student_agreement", "agreement with student", "{:.4f}"),
            ("num_parameters", "parameters", "{}"), ("latency_b1_ms", "latency b=1 (ms)", "{:.3f}")]
_OPTIONAL = {"accuracy", "perplexity", "next_token_accuracy", "covered_accuracy", "student_agreement"}


def summary_markdown(result: Mapping[str, Any], scalars: Mapping[str, float] | None = None) -> str:
    """A Markdown page: the comparison table (one row per model) and every scalar metric."""
    rows = result.get("comparison") or []
    columns = [c for c in _COLUMNS if c[0] not in _OPTIONAL or any(r.get(c[0]) is not None for r in rows)]
    lines = [f"# {result.get('title') or 'crossdistill evaluation'}", "",
             "| model | role | " + " | ".join(head for _, head, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for row in rows:
        cells = " | ".join(_cell(row.get(key), fmt) for key, _, fmt in columns)
        lines.append(f"| {row['name']} | {row['role']} | {cells} |")
    scalars = scalar_metrics(result) if scalars is None else scalars
    lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in sorted(scalars.items())]
    return "\n".join(lines) + "\n"


def terminal_summary(result: Mapping[str, Any]) -> str:
    """A few lines for a terminal: accuracy, parameters and latency of every model, then where the report is."""
    rows = result.get("comparison") or []
    batch = next((r.get("latency_batch") for r in rows if r.get("latency_batch")), None)
    text = any("perplexity" in r for r in rows)  # a language model: perplexity in the accuracy column
    score, score_fmt = ("perplexity", "{:.3f}") if text else ("accuracy", "{:.4f}")
    head = ["model", "role", score, "parameters", "latency b=1 (ms)"]
    if batch and batch != 1:
        head.append(f"latency b={batch} (ms)")
    table = [head]
    for r in rows:
        cells = [str(r["name"]), str(r["role"]), _cell(r.get(score), score_fmt), _cell(r.get("num_parameters"), "{:,}"),
                 _cell(r.get("latency_b1_ms"), "{:.3f}")]
        if len(head) == 6:
            cells.append(_cell(r.get("latency_bN_ms"), "{:.3f}"))
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]
    dataset = result.get("dataset") or {}
    title = f"{result.get('title') or 'evaluation'}: {dataset.get('num_examples')} test examples, " + \
        (f"{dataset.get('num_tokens')} tokens" if text else f"{dataset.get('num_classes')} classes")
    return "\n".join([title, *lines, f"report:  {result.get('report')}", f"metrics: {result.get('metrics')}"])
