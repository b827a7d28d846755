"""benchmarks/serving_cost.py tiny, end to end: a served teacher's CPU split per thread group, and its references."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.serving_cost import GROUPS, cpu_by_group, group_of

ROOT = Path(__file__).resolve().parents[1]


def test_threads_are_grouped_by_role_and_new_threads_count_from_zero():
    pid = 100
    assert group_of(pid, 100, "python", "python") == "event loop"
    assert group_of(pid, 101, "python", "python") == "forward pool (Python)"
    assert group_of(pid, 102, "tf_Compute", "python") == "framework compute"
    assert group_of(pid, 103, "event_engine", "python") == "gRPC threads"
    assert group_of(pid, 104, "jemalloc_bg_thd", "python") == "other"
    before = {100: ("python", 1.0), 102: ("tf_Compute", 2.0)}
    after = {100: ("python", 1.5), 102: ("tf_Compute", 2.25), 103: ("event_engine", 0.125)}
    spent = cpu_by_group(pid, before, after)
    assert spent == {"event loop": 0.5, "forward pool (Python)": 0.0, "framework compute": 0.25,
                     "gRPC threads": 0.125, "other": 0.0}


@pytest.mark.slow
def test_tiny_run_splits_the_served_teachers_cpu(tmp_path):
    results = tmp_path / "cost"
    out = subprocess.run([sys.executable, "-m", "benchmarks.serving_cost", "--rows", "64,512", "--seconds", "1",
                          "--teacher-epochs", "1", "--work", str(tmp_path / "work"), "--results", str(results)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(results.with_suffix(".json").read_text())
    for rows in ("64", "512"):
        served = report["served"][rows]
        assert served["requests_per_s"] > 0 and set(served["ms_per_request"]) == set(GROUPS)
        assert served["ms_per_request"]["event loop"] > 0  # every request passes the event loop
        assert report["bare"][rows]["ms_per_request"] > 0 and report["in_process_ms"][rows] > 0
    assert "| **served, all threads** |" in results.with_suffix(".md").read_text()
    assert not list((tmp_path / "work" / "server").glob("*.pid"))  # the teacher was torn down
