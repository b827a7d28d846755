"""A self-contained HTML report of an evaluation: tables, plots as embedded PNGs, notes.

One file, no external assets (no scripts, fonts or stylesheets fetched), so it opens from a bucket, a
KFP artifact viewer or an e-mail attachment alike. Every piece of text from the outside world (class
names, model names, notes, URIs) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from crossdistill import storage
from crossdistill.errors import DataError

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f3f3f3}td.text,th.text{text-align:left}
tr.best td{font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}figcaption{font-size:.85em;color:#555}
img{max-width:100%;height:auto;border:1px solid #eee}
.notes{white-space:pre-wrap;background:#fafafa;border-left:3px solid #aaa;padding:.6em 1em}
"""

# How known metric keys are labelled and formatted in tables; unknown keys are shown as they come.
_LABELS = {
    "name": "model", "role": "role", "accuracy": "accuracy", "ece": "ECE", "nll": "NLL",
    "teacher_agreement": "agreement with teacher", "num_parameters": "parameters",
    "size_bytes": "size on disk", "latency_b1_ms": "latency b=1 (median ms)",
    "latency_bN_ms": "latency b=N (median ms)", "latency_batch": "N", "threads": "threads",
    "num_examples": "examples", "perplexity": "perplexity", "next_token_accuracy": "next-token accuracy",
    "tokens": "tokens scored",
}


def _fmt(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key in ("accuracy", "teacher_agreement") or key.endswith("_accuracy"):
        return f"{100 * float(value):.2f}%"
    if key in ("ece", "nll"):
        return f"{float(value):.4f}"
    if key == "num_parameters":
        return f"{int(value):,}"
    if key == "size_bytes":
        return human_bytes(int(value))
    if key.endswith("_ms"):
        return f"{float(value):.3f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
               labels: Mapping[str, str] | None = None, highlight: str | None = None) -> str:
    """An HTML table of ``rows`` (dicts); columns default to the union of keys in first-seen order.

    ``labels`` overrides column headings; ``highlight`` names the row (by its ``name``) to set in bold,
    e.g. the student under evaluation. Text columns are left-aligned, numbers right-aligned.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    heads = {**_LABELS, **(labels or {})}
    text_cols = {c for c in columns
                 if c in ("name", "role") or all(isinstance(r.get(c), str) for r in rows if r.get(c) is not None)}
    head = "".join(f'<th class="{"text" if c in text_cols else "num"}">{_esc(heads.get(c, c))}</th>'
                   for c in columns)
    body = []
    for row in rows:
        cls = ' class="best"' if highlight is not None and row.get("name") == highlight else ""
        cells = "".join(f'<td class="{"text" if c in text_cols else "num"}">{_esc(_fmt(c, row.get(c)))}</td>'
                        for c in columns)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ---------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def confusion_png(cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> str:
    """Heatmap of a confusion matrix (rows true, columns predicted) as base64 PNG."""
    import numpy as np

    plt = _pyplot()
    m = np.asarray(cm, dtype=np.int64)
    k = len(m)
    side = min(max(3.5, 0.3 * k + 1.8), 11.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(k)
    labels = [_short(c) for c in class_names] if len(class_names) == k else [str(i) for i in ticks]
    tilt = k > 6 and max(len(s) for s in labels) > 2
    ax.set_xticks(ticks, labels, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        threshold = m.max() / 2 if m.size else 0
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > threshold else "black")
    ax.set_title(title)
    return _png(fig)


def per_class_png(series: Mapping[str, Sequence[float | None]], class_names: Sequence[str]) -> str:
    """Grouped bars of per-class accuracy, one colour per model."""
    import numpy as np

    plt = _pyplot()
    k = len(class_names)
    n = max(len(series), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.6 * k * max(1, n / 2)), 14.0), 3.6))
    x = np.arange(k)
    for i, (name, values) in enumerate(series.items()):
        vals = [np.nan if v is None else float(v) for v in values]
        ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=_short(name, 30))
    names = [_short(c) for c in class_names]
    tilt = k > 8 and max(len(s) for s in names) > 2
    ax.set_xticks(x, names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(series), 4),
                  frameon=False)
    return _png(fig)


def reliability_png(curves: Mapping[str, Mapping[str, Any]]) -> str:
    """Reliability diagram: mean accuracy vs mean confidence per bin, with bin counts underneath."""
    import numpy as np

    plt = _pyplot()
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5.2, 5.4), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for name, rel in curves.items():
        conf = np.array([np.nan if v is None else v for v in rel["confidence"]], dtype=float)
        acc = np.array([np.nan if v is None else v for v in rel["accuracy"]], dtype=float)
        keep = ~np.isnan(conf)
        ece = rel.get("ece")
        label = _short(name, 30) + (f" (ECE {ece:.3f})" if isinstance(ece, (int, float)) else "")
        ax.plot(conf[keep], acc[keep], marker="o", ms=4, label=label)
        edges = np.asarray(rel["bin_edges"], dtype=float)
        count = np.asarray(rel["count"], dtype=float)
        share = count / max(count.sum(), 1.0)
        axc.stairs(share, edges, alpha=0.9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    axc.set_xlabel("confidence (top-1 probability)")
    axc.set_ylabel("share")
    axc.set_ylim(0, None)
    axc.grid(alpha=0.3)
    return _png(fig)


def loss_curve_png(log: Sequence[Mapping[str, Any]]) -> str | None:
    """Every numeric ``*loss*`` field of a training log against ``step`` (or line number); None if none."""
    plt = _pyplot()
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, rec in enumerate(log):
        x = rec.get("step", rec.get("global_step", i))
        if not isinstance(x, (int, float)):
            x = i
        for key, val in rec.items():
            if "loss" in key and isinstance(val, (int, float)) and not isinstance(val, bool) \
                    and math.isfinite(val):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(x))
                ys.append(float(val))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for key, (xs, ys) in series.items():
        ax.plot(xs, ys, label=key, lw=1.4, marker="." if len(xs) < 40 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for _, ys in series.values() for v in ys):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _short(text: Any, n: int = 14) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


# ---------------------------------------------------------------- train log


def read_train_log(uri: str) -> list[dict[str, Any]]:
    """Records of a ``train_log.jsonl`` (one JSON object per line; blank lines skipped)."""
    out = []
    for lineno, line in enumerate(storage.read_text(uri).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{uri}:{lineno}: not a JSON object: {exc}") from None
        if not isinstance(rec, dict):
            raise DataError(f"{uri}:{lineno}: expected a JSON object per line, got {type(rec).__name__}")
        out.append(rec)
    return out


# ---------------------------------------------------------------- the page


def _img(b64: str, alt: str, caption: str) -> str:
    return (f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _models_with(metrics: Mapping[str, Any], key: str) -> dict[str, Mapping[str, Any]]:
    """Models (student first, then the teacher(s), then baselines) whose metrics carry ``key``."""
    found: dict[str, Mapping[str, Any]] = {}
    student = metrics.get("student") or {}
    if student.get(key) is not None:
        found[student.get("name", "student")] = student
    for teacher in [metrics.get("teacher") or {}, *(metrics.get("teachers") or [])]:
        if teacher.get(key) is not None:
            found[teacher.get("name", "teacher")] = teacher
    for name, base in (metrics.get("baselines") or {}).items():
        if base.get(key) is not None:
            found[base.get("name", name)] = base
    return found


_SUMMARY_KEYS = ("num_examples", "tokens", "accuracy", "perplexity", "next_token_accuracy", "teacher_agreement", "ece",
                 "nll", "num_parameters", "size_bytes")


def render_report(metrics: Mapping[str, Any], *, title: str | None = None, notes: str = "",
                  train_log: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The report page for a ``metrics.json``-shaped dict (see ``crossdistill.evaluate.run``)."""
    title = title or metrics.get("title") or "crossdistill evaluation"
    student = metrics.get("student") or {}
    dataset = metrics.get("dataset") or {}
    class_names = list(dataset.get("class_names") or [])
    num_classes = int(dataset.get("num_classes") or len(student.get("per_class_accuracy") or []))
    if len(class_names) != num_classes:
        class_names = [str(i) for i in range(num_classes)]

    parts = [f"<h1>{_esc(title)}</h1>"]
    meta = [f"created {_esc(metrics.get('created') or datetime.now(timezone.utc).isoformat(timespec='seconds'))}"]
    if dataset.get("uri"):
        meta.append(f"test data <code>{_esc(dataset['uri'])}</code> ({_esc(dataset.get('num_examples', '?'))} examples, "
                    f"{num_classes} classes)")
    if student.get("uri"):
        meta.append(f"student <code>{_esc(student['uri'])}</code>")
    parts.append(f'<p class="meta">{" · ".join(meta)}</p>')

    # summary
    parts.append("<h2>Summary</h2>")
    summary = [{"metric": _LABELS.get(k, k), "value": _fmt(k, student.get(k))}
               for k in _SUMMARY_KEYS if k in student]
    lat = student.get("latency") or {}
    for row in lat.get("batches", []):
        summary.append({"metric": f"CPU latency, batch {row['batch_size']} (median / p90 ms)",
                        "value": f"{row['median_ms']:.3f} / {row['p90_ms']:.3f}"})
    if lat.get("threads") is not None:
        summary.append({"metric": "CPU threads (pinned)", "value": str(lat["threads"])})
    parts.append(table_html(summary, ["metric", "value"]))

    comparison = metrics.get("comparison") or []
    if comparison:
        parts.append("<h2>Comparison</h2>")
        batches = {row.get("latency_batch") for row in comparison}
        columns = list(dict.fromkeys(k for row in comparison for k in row))
        labels = {}
        if len(batches) == 1 and None not in batches:  # one N for all: say it in the heading
            columns.remove("latency_batch")
            labels["latency_bN_ms"] = f"latency b={batches.pop()} (median ms)"
        parts.append(table_html(comparison, columns, labels=labels, highlight=student.get("name", "student")))
        parts.append('<p class="meta">Teacher latency is the round trip through its inference endpoint '
                     "(network + serving); student latency is in-process CPU time. The teacher's size comes "
                     "from its server's metadata.</p>")

    # per-class
    per_class = {name: m["per_class_accuracy"] for name, m in _models_with(metrics, "per_class_accuracy").items()}
    cm = student.get("confusion_matrix")
    if per_class or cm:
        parts.append("<h2>Per class</h2><div class=\"figs\">")
        if cm:
            parts.append(_img(confusion_png(cm, class_names, "student"), "confusion matrix",
                              "Confusion matrix of the student (rows: true class, columns: predicted)."))
        if per_class:
            parts.append(_img(per_class_png(per_class, class_names), "per-class accuracy",
                              "Accuracy per class (recall)."))
        parts.append("</div>")
        if per_class:
            support = [sum(r) for r in cm] if cm else None
            rows = []
            for i, cname in enumerate(class_names):
                row: dict[str, Any] = {"name": cname}
                if support is not None:
                    row["examples"] = support[i]
                for model_name, vals in per_class.items():
                    row[f"{model_name}_accuracy"] = vals[i] if i < len(vals) else None
                rows.append(row)
            heads = {"name": "class", **{f"{m}_accuracy": f"{m} accuracy" for m in per_class}}
            parts.append(table_html(rows, labels=heads))

    rel = {name: m["reliability"] for name, m in _models_with(metrics, "reliability").items()}
    if rel:
        parts.append("<h2>Calibration</h2>")
        bins = len(next(iter(rel.values()))["count"])
        parts.append(_img(reliability_png(rel), "reliability diagram",
                          f"Reliability diagram ({bins} equal-width confidence bins); "
                          "ECE = sum over bins of (bin share) × |accuracy − confidence|."))

    if train_log:
        png = loss_curve_png(train_log)
        if png:
            parts.append("<h2>Training</h2>")
            parts.append(_img(png, "training loss", f"Training log: {len(train_log)} records."))

    exports = metrics.get("exports") or {}
    if exports:
        parts.append("<h2>Exports</h2><ul>")
        for fmt, info in exports.items():
            extra = f" (max |Δ| vs torch {info['max_abs_diff']:.2g})" if "max_abs_diff" in info else ""
            parts.append(f"<li>{_esc(fmt)}: <code>{_esc(info.get('uri', ''))}</code>{_esc(extra)}</li>")
        parts.append("</ul>")

    if notes:
        parts.append(f'<h2>Notes</h2><div class="notes">{_esc(notes)}</div>')

    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report(uri: str, metrics: Mapping[str, Any], *, title: str | None = None, notes: str = "",
                 train_log: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Render the report and write it atomically to ``uri``; returns ``uri``."""
    storage.write_text(uri, render_report(metrics, title=title, notes=notes, train_log=train_log))
    return uri
