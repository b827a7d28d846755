"""`crossdistill lm-demo` (what `make run-lm` runs) at a tiny size: corpus, Keras teacher, three students,
evaluation on held-out documents, the table; once with direct calls, once through the online pipeline."""

from __future__ import annotations

import json

import pytest

from crossdistill.lm_demo import LABELS, LMDemoConfig, run_lm_demo

pytest.importorskip("tokenizers")
TINY = dict(max_chars=120_000, vocab_size=300, seq_len=16, val=0.2, test=0.2, teacher_hidden=[32], teacher_heads=2,
            teacher_epochs=1, student={"dim": 16, "layers": 1, "heads": 2}, top_k=8, seeds=[0], threads=1)


def _check(out, summary) -> None:
    names = [r["name"] for r in summary["rows"]]
    assert names == list(LABELS.values())
    for row in summary["rows"]:
        assert 1 < row["test_perplexity_mean"] < 300 and len(row["test_perplexity"]) == 1
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]


def test_lm_demo_with_direct_calls(tmp_path, capsys):
    summary = run_lm_demo(LMDemoConfig(out=str(tmp_path), runner="library", **TINY))
    _check(tmp_path, summary)
    assert "student distilled offline (stored top-k)" in capsys.readouterr().out


@pytest.mark.slow
def test_lm_demo_through_the_online_pipeline(tmp_path):
    summary = run_lm_demo(LMDemoConfig(out=str(tmp_path), runner="kfp-local", **TINY))
    _check(tmp_path, summary)
    assert list((tmp_path / "kfp" / "seed0").rglob("executor_output.json"))  # the pipeline's own steps ran
