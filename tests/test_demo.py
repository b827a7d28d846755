"""`make run`'s job, small: the online pipeline through kfp.local with its baseline branch, one seed."""

import json
from pathlib import Path

import pytest

from crossdistill.cli import main


@pytest.mark.slow
def test_demo_runs_the_online_pipeline_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "seeds=[0]", "teacher_epochs=15", "student_epochs=20"]) == 0
    printed = capsys.readouterr().out
    for row in ("teacher (Keras, served over gRPC)", "student, 64 labels only",
                "student distilled online (64 labels + teacher)", "student, all labels (reference)"):
        assert row in printed
    summary = json.loads((out / "summary.json").read_text())
    acc = {r["name"]: r["accuracy_mean"] for r in summary["rows"]}
    assert len(acc) == 4
    few, distilled = acc["student, 64 labels only"], acc["student distilled online (64 labels + teacher)"]
    assert distilled > few + 0.05, acc  # the teacher's answers on unlabeled inputs are worth something
    assert Path(summary["report"]).is_file() and str(out) in summary["report"]


def test_demo_config_is_strict(capsys):
    assert main(["demo", "--print-config", "seed=[0]"]) == 1
    assert "unknown key 'seed'" in capsys.readouterr().err
