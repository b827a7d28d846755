"""benchmarks/replicas.py at a tiny size: accelerator-teacher replicas start, teach through one list, stop."""

from __future__ import annotations

import json
import sys

import pytest


@pytest.mark.slow
def test_replicas_benchmark_scales_a_pool_of_accelerator_teachers(tmp_path, monkeypatch):
    from benchmarks import replicas

    results = tmp_path / "replicas"
    monkeypatch.setattr(sys, "argv", ["replicas", "--replicas", "1,2", "--epochs", "8", "--hold-ms", "30", "--repeats", "1",
                                      "--work", str(tmp_path / "work"), "--results", str(results)])
    replicas.main()
    out = json.loads(results.with_suffix(".json").read_text())
    one, two = (r["samples_per_s"] for r in out["runs"])
    # one replica holds each request 30 ms: it cannot beat that ceiling (the margin: answers that arrived
    # while the first logging window warmed up are consumed at training speed in the measured windows)
    assert one <= 256 / 0.030 * 1.25, f"one replica at {one:.0f} samples/s beats its 30 ms ceiling"
    assert two > 1.3 * one, f"a second replica should add capacity: {one:.0f} -> {two:.0f} samples/s"
    assert not list((tmp_path / "work").glob("*.ready.tmp"))
