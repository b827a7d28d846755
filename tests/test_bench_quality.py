"""Smoke runs of the quality suite's machinery (benchmarks/quality.py) on sklearn digits, in seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from benchmarks.quality import QualityConfig, best_bias, parse_args, run_suite, wire_bytes
from benchmarks.quality_models import random_shift

from crossdistill.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(tmp_path, sections: list[int]) -> QualityConfig:
    return QualityConfig(dataset="digits", work=str(tmp_path / "work"), results=str(tmp_path / "quality"),
                         sections=sections, seeds=[0, 1], sweep_seeds=[0], threads=1, teacher_epochs=2, epochs=2,
                         student_hidden=[16], large_hidden=[32], small_hidden=[4], temperatures=[2.0],
                         bias_val=100, label_fraction=0.05, online_subset=150, topk=[1], left_out_class=3)


def test_best_bias_recovers_a_known_offset():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=400)
    logits = rng.normal(size=(400, 4)).astype(np.float32)
    logits[np.arange(400), y] += 3.0
    logits[:, 2] -= 5.0  # class 2 suppressed, as after training without it
    bias, errors = best_bias(logits, y, 2, np.arange(0.0, 10.01, 0.5))
    assert 3.0 <= bias <= 7.0
    assert errors < int((logits.argmax(1) != y).sum())


def test_wire_bytes_and_random_shift():
    assert wire_bytes(10, 0, False) == 40 and wire_bytes(10, 0, True) == 20
    assert wire_bytes(10, 3, False) == 36 and wire_bytes(10, 5, True) == 50
    x = np.zeros((3, 1, 6, 6), np.float32)
    x[:, 0, 3, 3] = 1.0
    out = random_shift(x, 1, np.random.default_rng(1))
    assert out.shape == x.shape and np.all(out.sum(axis=(1, 2, 3)) == 1.0)  # moved by at most 1 px, not lost
    ys, xs = np.nonzero(out[:, 0].max(axis=0))
    assert set(ys) <= {2, 3, 4} and set(xs) <= {2, 3, 4}
    np.testing.assert_array_equal(random_shift(x, 0, np.random.default_rng(1)), x)


def test_parse_args_quick_sections_and_overrides():
    cfg = parse_args(["--quick", "--sections", "1,4", "--seeds", "3,4", "epochs=2"])
    assert cfg.sections == [1, 4] and cfg.seeds == [3, 4] and cfg.epochs == 2 and cfg.limit_train == 6000
    with pytest.raises(ConfigError, match="unknown section"):
        parse_args(["--sections", "9"])
    with pytest.raises(ConfigError, match="no_such_field"):
        parse_args(["no_such_field=1"])


def test_suite_runs_sections_and_reuses_the_cached_teacher(tmp_path):
    cfg = _tiny(tmp_path, [1, 3, 4, 5, 7])
    lines: list[str] = []
    results = run_suite(cfg, "test", log=lines.append)
    assert sorted(results["sections"]) == ["1", "3", "4", "5", "7"]
    assert not results.get("failed"), {k: v["rows"] for k, v in results["sections"].items() if k in
                                       [str(f) for f in results.get("failed", [])]}
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["config"]["dataset"] == "digits" and saved["status"].startswith("finished")
    s1 = saved["sections"]["1"]
    assert len(s1["data"]["hard"]) == 2 and len(s1["data"]["distilled"]) == 2
    n_test = saved["sections"]["1"]["data"]["teacher"]["test_errors"]
    assert 0 <= n_test < 540  # 30% of 1,797 digits are test images; the CNN beats chance after 2 epochs
    assert [r[1] for r in saved["sections"]["3"]["rows"]][:1] == ["before"]
    assert len(saved["sections"]["4"]["rows"]) == 4 and len(saved["sections"]["5"]["rows"]) == 4
    assert [r[0] for r in saved["sections"]["7"]["rows"]] == ["dense, FP32", "dense, FP16", "top-1, FP32",
                                                             "top-1, FP16"]
    md = (tmp_path / "quality.md").read_text()
    assert "## 1. Hinton's MNIST rows" in md and "Command: `test`" in md
    assert any("teacher: training the CNN" in line for line in lines)

    again: list[str] = []
    run_suite(cfg.model_copy(update={"sections": [1], "seeds": [0]}), "again", log=again.append)
    assert not any("teacher: training" in line or "pseudo-labelled" in line for line in again)


@pytest.mark.slow
def test_cross_framework_section_keras_grpc_matches_onnx(tmp_path):
    cfg = _tiny(tmp_path, [6]).model_copy(update={"keras_epochs": 2, "keras_hidden": [32]})
    results = run_suite(cfg, "test", log=lambda _: None)
    assert not results.get("failed"), results["sections"]["6"]["rows"]
    data = results["sections"]["6"]["data"]
    assert data["max_abs_logit_diff"] < 1e-3 and data["top1_agreement"] == 1.0
    assert max(abs(d) for d in data["paired_diff"]) < 0.05
