"""benchmarks/data_parallel.py at a tiny size: one process and two torchrun ranks train the same student."""

from __future__ import annotations

import json
import sys

import pytest

from crossdistill.data.sources import FASHION_MNIST_DEBIAN


@pytest.mark.slow
def test_data_parallel_benchmark_runs_one_process_and_two_ranks(tmp_path, monkeypatch):
    from pathlib import Path

    if not Path(FASHION_MNIST_DEBIAN).exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from benchmarks import data_parallel

    results = tmp_path / "dp"
    monkeypatch.setattr(sys, "argv", ["data_parallel", "--rows", "6000", "--epochs", "1", "--repeats", "1",
                                      "--work", str(tmp_path / "work"), "--results", str(results)])
    data_parallel.main()
    runs = json.loads(results.with_suffix(".json").read_text())["runs"]
    assert [(r["workers"], r["threads"]) for r in runs] == [(1, 1), (1, 2), (2, 1)]
    assert all(r["samples"] == 6000 and r["samples_per_s"] > 0 for r in runs)
    # the same 47 steps of 128 rows whether one process or two ranks take them
    assert len({r["steps"] for r in runs}) == 1
    assert all(r["test_accuracy"] > 0.5 for r in runs)  # one epoch of a CNN on 6,000 images: far above 0.1
