"""A tiny run of the throughput benchmark (benchmarks/throughput.py) end to end, so it cannot rot unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
SETUPS = {"a", "b", "b+", "c", "s", "s+", "i", "s@512", "i@512"}


@pytest.mark.slow
def test_tiny_run_measures_every_setup_and_ratio(tmp_path):
    results = tmp_path / "throughput.json"
    out = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "2", "--repeats", "1", "--load-seconds", "1",
                          "--teacher-epochs", "1", "--sweep-rows", "512", "--work", str(tmp_path / "work"), "--results", str(results)],
                         capture_output=True, text=True, timeout=300, cwd=SCRIPT.parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(results.read_text())
    (run,) = report["repeats"]
    assert set(run) == SETUPS
    assert all(r["samples_per_s"] > 0 and r["samples"] > 0 for r in run.values())
    assert len({run[s]["samples"] for s in ("a", "b", "b+", "c")}) == 1  # every training run sees the same samples
    assert all(run[s]["samples_per_cpu_s"] > 0 for s in ("s", "s+", "i", "s@512", "i@512"))
    assert run["s@512"]["samples"] % 512 == 0 and run["s"]["samples"] % 256 == 0  # rows per request as asked
    sides = report["config"]["cpus"]
    if len(os.sched_getaffinity(0)) >= 2:  # two nodes in one machine: the sides share no CPU
        assert sides["student"] and sides["teacher"] and not set(sides["student"]) & set(sides["teacher"])
    ratios = report["ratios"]
    assert {"s/i: serving overhead", "b/min(c,s): pipeline efficiency", "1 - b+/b: TLS + token cost, training",
            "1 - s+/s: TLS + token cost, served", "s/i at 512 rows per request"} <= set(ratios)
    medians = {s: run[s]["samples_per_s"] for s in SETUPS}
    efficiency = ratios["b/min(c,s): pipeline efficiency"]
    assert efficiency["median"] == pytest.approx(medians["b"] / min(medians["c"], medians["s"]))
    assert efficiency["target"] == ">= 0.9" and efficiency["met"] == (efficiency["median"] >= 0.9)
    assert [w["signal"] for w in report["wire"]][0] == "dense FP32"
    assert "--epochs 2" in report["command"]
    for table_row in ("(s+) = (s) with TLS + token", "s/i: serving overhead", "dense FP16"):
        assert table_row in out.stdout
    assert not list((tmp_path / "work" / "server").glob("*.pid"))  # both servers torn down
