"""benchmarks/latency.py end to end at a tiny size: it serves, proxies, trains and writes its tables."""

from __future__ import annotations

import json
import sys

import pytest


@pytest.mark.slow
def test_latency_benchmark_runs_through_the_delay_proxy_and_writes_its_table(tmp_path, monkeypatch):
    from benchmarks import latency

    results = tmp_path / "latency"
    monkeypatch.setattr(sys, "argv", ["latency", "--epochs", "2", "--rtt-ms", "0,40", "--fixed", "2",
                                      "--work", str(tmp_path / "work"), "--results", str(results)])
    latency.main()
    runs = json.loads(results.with_suffix(".json").read_text())["runs"]
    assert [(r["rtt_ms"], r["max_in_flight"]) for r in runs] == [(0.0, "auto"), (0.0, 2), (40.0, "auto"), (40.0, 2)]
    assert all(r["samples"] == runs[0]["samples"] > 0 for r in runs)
    assert "at 50 ms" not in results.with_suffix(".md").read_text()  # no 50 ms run, no target line
