"""The shipped multi-teacher scenario end to end on digits."""

from __future__ import annotations

import json

import pytest

from crossdistill.data.shards import read_dataset
from crossdistill.experts.scenario import ScenarioConfig, run_scenario


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi-teacher")
    return run_scenario(ScenarioConfig(out=str(out), threads=1)), out


def test_student_beats_every_teacher_and_the_baselines(results):
    res, out = results
    acc = res["test_accuracy"]
    teachers = ["specialist0", "specialist1", "specialist2", "generalist"]
    assert set(teachers) <= set(acc)
    for name in (*teachers, "average", "majority_vote", "label_model"):
        assert acc["student"] > acc[name], (name, acc)
    assert res["student_beats_all"]
    assert json.loads((out / "results.json").read_text())["test_accuracy"] == acc
    assert "| student |" in res["summary"] and "Experts per label" in res["summary"]


def test_scenario_artifacts_are_consistent(results):
    res, out = results
    # specialists cover only their classes, and are judged only there
    experts = json.loads((out / "experts" / "experts.json").read_text())
    lm = {t["name"]: t["label_map"] for t in experts["teachers"]}
    assert lm["specialist0"] == [0, 1, 2, 3] and len(lm["generalist"]) == 10
    for entry in experts["per_label"]:
        for name in entry["scores"]:
            assert entry["label"] in lm[name]
    for name, m in res["trust"]["per_teacher"].items():
        assert m["auc"] is not None and m["auc"] > 0.8, (name, m)
    distill = read_dataset(res["paths"]["distill_set"])
    assert len(distill) == res["coverage"]["covered"] == res["assembled_examples"]
    assert 0.5 < res["coverage"]["share"] <= 1.0
    assert (distill["weight"] >= 0.5).all()  # min_trust: only trusted outputs were kept
