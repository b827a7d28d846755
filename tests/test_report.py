"""The HTML report: valid, self-contained, every table and plot present, outside text escaped."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from crossdistill.errors import DataError
from crossdistill.evaluate import metrics as M
from crossdistill.evaluate.report import read_train_log, render_report, table_html, write_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
EVIL = '<script>alert("x")</script>'


class Checker(HTMLParser):
    """Collects tags, image sources and text; fails on unbalanced tags and on scripts or external URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.text: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "script":
            self.problems.append("script tag")
        for key in ("src", "href"):
            if key in a and not a[key].startswith("data:"):
                self.problems.append(f"external {key}: {a[key]}")
        if tag == "img":
            self.imgs.append(a)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Checker:
    c = Checker()
    c.feed(page)
    c.close()
    assert c.problems == [] and c.stack == [], (c.problems, c.stack)
    return c


def _metrics(class_names: list[str]) -> dict:
    rng = np.random.default_rng(0)
    k = len(class_names)
    y = rng.integers(0, k, 200)
    logits = rng.normal(size=(200, k))
    logits[np.arange(150), y[:150]] += 4.0  # 75%+ right
    student = {"name": "student", "uri": "file:///runs/s/model.pt",
               **M.classification_report(logits, y, k, ece_bins=10),
               "num_parameters": 12345, "size_bytes": 51234, "teacher_agreement": 0.8,
               "latency": {"device": "cpu", "threads": 1,
                           "batches": [{"batch_size": 1, "median_ms": 0.1, "p90_ms": 0.2},
                                       {"batch_size": 32, "median_ms": 0.9, "p90_ms": 1.1}]}}
    few = {"name": "few-label", **M.classification_report(rng.normal(size=(200, k)), y, k, ece_bins=10)}
    return {
        "title": "t", "created": "2025-01-01T00:00:00+00:00",
        "dataset": {"uri": "file:///runs/data/test", "num_examples": 200, "num_classes": k,
                    "class_names": class_names},
        "student": student, "baselines": {"few-label": few}, "teacher": None,
        "comparison": [
            {"name": "student", "role": "student", "accuracy": student["accuracy"], "ece": student["ece"],
             "num_parameters": 12345, "size_bytes": 51234, "latency_b1_ms": 0.1},
            {"name": "few-label", "role": "baseline", "accuracy": few["accuracy"], "ece": few["ece"],
             "num_parameters": 12345, "size_bytes": 51234, "latency_b1_ms": None},
            {"name": "teacher", "role": "teacher", "accuracy": 0.99, "num_parameters": 1_234_567,
             "size_bytes": 5 << 20, "latency_b1_ms": 3.5},
        ],
        "exports": {"onnx": {"uri": "file:///runs/e/student.onnx", "max_abs_diff": 1e-6}},
    }


def test_report_has_tables_images_and_is_valid_html(tmp_path):
    names = [f"class {i}" for i in range(10)]
    log = [{"step": s, "loss": 2.0 / (s + 1), "soft_loss": 1.0 / (s + 1)} for s in range(30)]
    uri = write_report(str(tmp_path / "report.html"), _metrics(names), title="Digits KD",
                       notes="first run\nsecond line", train_log=log)
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and uri.endswith("report.html")
    doc = parse(page)
    text = " ".join(doc.text)
    for heading in ("Summary", "Comparison", "Per class", "Calibration", "Training", "Exports", "Notes"):
        assert heading in text
    assert doc.tags.count("table") == 3  # summary, comparison, per-class
    assert "1,234,567" in text and "5.0 MiB" in text and "50.0 KiB" in text
    assert "second line" in text and "class 9" in text
    # confusion matrix, per-class bars, reliability diagram, loss curve: four real PNGs
    assert len(doc.imgs) == 4
    for img in doc.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert img["alt"]


def test_report_escapes_outside_text():
    names = [EVIL] + [str(i) for i in range(1, 5)]
    m = _metrics(names)
    m["comparison"][1]["name"] = "<b>few</b>"
    page = render_report(m, title="<i>title</i>", notes="a & b <img src=x onerror=alert(1)>")
    doc = parse(page)  # would record a <script> tag or an external img src if anything leaked
    assert EVIL not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    text = " ".join(doc.text)
    assert EVIL in text and "<b>few</b>" in text and "<i>title</i>" in text
    assert "b" not in doc.tags and "i" not in doc.tags
    assert "a & b <img src=x onerror=alert(1)>" in text


def test_report_without_optional_sections():
    m = _metrics(["a", "b"])
    m["comparison"] = []
    m.pop("exports")
    doc = parse(render_report(m))
    text = " ".join(doc.text)
    assert "Comparison" not in text and "Training" not in text and "Notes" not in text
    assert len(doc.imgs) == 3


def test_table_formats_known_columns_and_highlights():
    html = table_html([{"name": "s", "accuracy": 0.5, "size_bytes": 2048, "nll": None},
                       {"name": "t", "accuracy": 1.0, "size_bytes": 10, "nll": 0.25}], highlight="t")
    assert "50.00%" in html and "2.0 KiB" in html and "10 B" in html and "0.2500" in html and "–" in html
    assert '<tr class="best"><td class="text">t</td>' in html


def test_read_train_log(tmp_path):
    p = tmp_path / "train_log.jsonl"
    p.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n\n" + json.dumps({"step": 2, "loss": 0.5}) + "\n")
    assert [r["step"] for r in read_train_log(str(p))] == [1, 2]
    p.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(DataError, match="train_log.jsonl:2"):
        read_train_log(str(p))
