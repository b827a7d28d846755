"""`make bench-scale` keeps running: the scale benchmark at a tiny size writes its tables (targets not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_benchmark_runs_and_writes_its_tables(tmp_path: Path) -> None:
    results = tmp_path / "results" / "scale"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--rows", "2000", "--fashion", "0",
         "--work", str(tmp_path / "work"), "--results", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

    report = json.loads(results.with_suffix(".json").read_text())
    assert [s["step"] for s in report["steps"]] == ["import-data", "pseudo-label (shard 1 of 4)",
                                                    "student-train offline"]
    for step in report["steps"]:
        assert step["rows"] > 0 and step["samples_per_s"] > 0 and step["peak_rss_mb"] > 0, step
        assert step["rchar"] > 0, step
    shard = report["steps"][1]
    assert shard["rows"] == 500 and 0 < shard["read_fraction"] < 1
    assert report["compare"] is None and "skipped (--fashion 0)" in report["notes"][0]
    assert report["command"].startswith("python -m benchmarks.scale --rows 2000")

    table = results.with_suffix(".md").read_text()
    assert "| tabular 2,000 x 64 | student-train offline | 2,000 |" in table
    assert "read 0." in table and "of the dataset's" in table
    assert table in out.stdout
