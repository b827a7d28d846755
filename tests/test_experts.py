"""Prediction tables, per-label experts and consensus experts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossdistill.data.shards import Dataset, DatasetReader, write_dataset
from crossdistill.errors import ConfigError, DataError
from crossdistill.experts.consensus import consensus_deviation
from crossdistill.experts.selection import ExpertEvaluateConfig, evaluate_experts, run_expert_evaluate
from crossdistill.experts.tables import (
    PredictionTable,
    TeacherSource,
    load_source,
    load_table,
    save_table,
    stack_tables,
    table_from_dataset,
)

C = 5


def _noisy_table(name: str, y: np.ndarray, acc_per_class: np.ndarray, rng: np.random.Generator,
                 classes: list[int] | None = None) -> PredictionTable:
    """A teacher over ``classes`` that is right on class c with probability ``acc_per_class[c]``."""
    classes = classes or list(range(C))
    k = len(classes)
    logits = rng.normal(0, 0.3, size=(len(y), k))
    for i, c in enumerate(y):
        if c in classes and rng.random() < acc_per_class[c]:
            logits[i, classes.index(c)] += 3.0
        else:
            wrong = [j for j in range(k) if classes[j] != c]
            logits[i, rng.choice(wrong)] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return PredictionTable(name, np.arange(len(y)), probs, np.asarray(classes), C)


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, C, size=n)


def test_per_label_selection_finds_planted_expert():
    rng = np.random.default_rng(0)
    y = _labels(400, rng)
    base = np.full(C, 0.6)
    planted = base.copy()
    planted[2] = 0.98  # the expert for label 2
    tables = [_noisy_table("a", y, base, rng), _noisy_table("planted", y, planted, rng),
              _noisy_table("c", y, base, rng)]
    val = Dataset({"id": np.arange(len(y)), "y": y})
    report = evaluate_experts(tables, val, mode="labeled", min_score=0.3)
    assert report["mode"] == "labeled"
    assert report["experts"]["2"] == ["planted"]
    entry = report["per_label"][2]
    assert entry["scores"]["planted"]["f1"] > entry["scores"]["a"]["f1"] + 0.1
    assert entry["support"] == int((y == 2).sum())
    # a wide margin admits the others too, best first
    wide = evaluate_experts(tables, val, mode="labeled", margin=1.0, min_score=0.0)
    assert wide["experts"]["2"][0] == "planted" and set(wide["experts"]["2"]) == {"a", "planted", "c"}


def test_teacher_is_judged_only_on_labels_it_covers():
    rng = np.random.default_rng(1)
    y = _labels(300, rng)
    spec = _noisy_table("spec", y, np.full(C, 0.95), rng, classes=[0, 1])
    gen = _noisy_table("gen", y, np.full(C, 0.7), rng)
    report = evaluate_experts([spec, gen], Dataset({"id": np.arange(len(y)), "y": y}), mode="labeled")
    for label in (2, 3, 4):
        assert "spec" not in report["per_label"][label]["scores"]
        assert report["experts"][str(label)] == ["gen"]
    assert report["per_label"][0]["covered_by"] == ["spec", "gen"]


def test_validation_label_no_teacher_knows_is_a_reported_gap(tmp_path):
    rng = np.random.default_rng(2)
    y = _labels(200, rng)
    tables = [_noisy_table("lo", y, np.full(C, 0.9), rng, classes=[0, 1, 2]),
              _noisy_table("mid", y, np.full(C, 0.9), rng, classes=[1, 2, 3])]
    report = evaluate_experts(tables, Dataset({"id": np.arange(len(y)), "y": y}), mode="labeled")
    gaps = {g["label"]: g["reason"] for g in report["gaps"]}
    assert 4 in gaps and "no teacher covers this label" in gaps[4]
    assert f"{int((y == 4).sum())} validation examples" in gaps[4]
    assert report["experts"]["4"] == []
    assert report["experts"]["0"] == ["lo"] and report["experts"]["3"] == ["mid"]


def test_empty_validation_is_a_clear_error_or_consensus():
    rng = np.random.default_rng(3)
    y = _labels(100, rng)
    tables = [_noisy_table(n, y, np.full(C, 0.8), rng) for n in "abc"]
    empty = Dataset({"id": np.zeros(0, np.int64), "y": np.zeros(0, np.int64)})
    with pytest.raises(DataError, match="no labeled examples.*mode=consensus"):
        evaluate_experts(tables, empty, mode="labeled")
    all_unlabeled = Dataset({"id": np.arange(len(y)), "y": np.full(len(y), -1)})
    with pytest.raises(DataError, match="no labeled examples"):
        evaluate_experts(tables, all_unlabeled, mode="labeled")
    report = evaluate_experts(tables, all_unlabeled, mode="auto")
    assert report["mode"] == "consensus"


def test_consensus_mode_finds_expert_without_labels():
    rng = np.random.default_rng(4)
    y = _labels(600, rng)
    good = np.full(C, 0.85)
    bad = np.full(C, 0.85)
    bad[3] = 0.05  # this teacher gets label 3 wrong: it deviates from everyone else there
    tables = [_noisy_table("g1", y, good, rng), _noisy_table("g2", y, good, rng),
              _noisy_table("g3", y, good, rng), _noisy_table("bad3", y, bad, rng),
              _noisy_table("only01", y, np.full(C, 0.9), rng, classes=[0, 1])]
    unlabeled = Dataset({"id": np.arange(len(y))})
    report = evaluate_experts(tables, None, unlabeled=unlabeled, mode="consensus", consensus_threshold=0.5)
    assert report["mode"] == "consensus"
    assert "bad3" not in report["experts"]["3"]
    assert {"g1", "g2", "g3"} <= set(report["experts"]["3"])
    assert "bad3" in report["experts"]["2"]  # fine elsewhere
    assert "only01" in report["per_label"][0]["scores"] and "only01" not in report["per_label"][2]["scores"]
    dev = report["per_label"][3]["scores"]
    assert dev["bad3"]["deviation"] > 0.8 > 0.5 > dev["g1"]["deviation"]
    # the deviation is exactly 1 - F1 against the others' consensus
    probs, covered = stack_tables(tables, unlabeled.ids)
    d = consensus_deviation(probs, covered)
    assert np.isnan(d[4, 2]) and np.isclose(d[0, 3], dev["g1"]["deviation"], atol=1e-6)


def test_consensus_needs_two_teachers():
    rng = np.random.default_rng(5)
    y = _labels(50, rng)
    with pytest.raises(DataError, match="at least 2 teachers"):
        evaluate_experts([_noisy_table("solo", y, np.full(C, 0.8), rng)], None,
                         unlabeled=Dataset({"id": np.arange(len(y))}), mode="consensus")


def test_bad_label_maps_are_clear_errors():
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(DataError, match="label_map has 2 entries but the teacher outputs 3"):
        PredictionTable("t", np.arange(4), probs, np.array([0, 1]), C)
    with pytest.raises(DataError, match="outside 0..4"):
        PredictionTable("t", np.arange(4), probs, np.array([0, 1, 7]), C)
    with pytest.raises(DataError, match="same class"):
        PredictionTable("t", np.arange(4), probs, np.array([0, 1, 1]), C)
    with pytest.raises(DataError, match="integer class ids"):
        PredictionTable("t", np.arange(4), probs, np.array([0.0, 1.5, 2.0]), C)
    ds = Dataset({"id": np.arange(4), "logits": np.zeros((4, 3), np.float32)}, {"num_classes": 3})
    with pytest.raises(DataError, match="outputs 3 classes but the global label space has 5"):
        table_from_dataset(ds, num_classes=C)
    a = PredictionTable("a", np.arange(4), probs, np.array([0, 1, 2]), C)
    b = PredictionTable("b", np.arange(4), probs, np.array([0, 1, 2]), 6)
    with pytest.raises(DataError, match="disagree on the global number of classes"):
        stack_tables([a, b], np.arange(4))
    with pytest.raises(DataError, match="no prediction for 1 example id"):
        stack_tables([a], np.array([0, 1, 9]))


def test_stored_table_round_trip_and_report_files(tmp_path):
    rng = np.random.default_rng(6)
    y = _labels(120, rng)
    spec = _noisy_table("spec", y, np.full(C, 0.9), rng, classes=[3, 1])
    gen = _noisy_table("gen", y, np.full(C, 0.3), rng)
    uris = {}
    for t in (spec, gen):
        uris[t.teacher] = save_table(str(tmp_path / "tables" / t.teacher), t)
    back = load_table(uris["spec"])
    assert back.teacher == "spec" and back.label_map.tolist() == [3, 1] and back.num_classes == C
    np.testing.assert_allclose(back.global_probs(), spec.global_probs(), rtol=1e-5, atol=1e-6)
    val_uri = write_dataset(str(tmp_path / "val"), Dataset({"id": np.arange(len(y)), "y": y}, {"num_classes": C}))
    cfg = ExpertEvaluateConfig(teachers=[TeacherSource(name=n, table=u) for n, u in uris.items()], val=val_uri,
                               out=str(tmp_path / "experts"), min_score=0.3)
    report = run_expert_evaluate(cfg)
    stored = json.loads((tmp_path / "experts" / "experts.json").read_text())
    assert stored["experts"] == report["experts"] and stored["experts"]["3"] == ["spec"]
    md = (tmp_path / "experts" / "experts.md").read_text()
    assert "| 3 |" in md and "spec" in md
    assert "<table" in (tmp_path / "experts" / "experts.html").read_text()


def test_teacher_source_needs_exactly_one_origin():
    with pytest.raises(ConfigError, match="exactly one of 'table' or 'endpoint'"):
        TeacherSource.parse({"name": "t"})
    with pytest.raises(ConfigError, match="unknown key"):
        TeacherSource.parse({"name": "t", "table": "x", "labelmap": [0]})


@pytest.mark.parametrize("top_k", [0, 3])
def test_stored_table_and_live_endpoint_agree(tmp_path, digits, served_keras_teacher, top_k):
    """The same teacher read back from a pseudo-label dataset and queried live gives the same table."""
    from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label

    part = digits.take(np.arange(0, 300, 3))
    data_uri = write_dataset(str(tmp_path / "part"), part)
    label_map = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # a relabelled teacher: output j means class 9 - j
    stored_uri = run_pseudo_label(PseudoLabelConfig(
        data=data_uri, teacher_url=served_keras_teacher.grpc, model_name=served_keras_teacher.model_name,
        out=str(tmp_path / f"stored-{top_k}"), top_k=top_k, batch_size=32, progress=False))
    stored = load_source(TeacherSource(name="k", table=stored_uri, label_map=label_map), num_classes=10)
    live = load_source(TeacherSource(name="k", label_map=label_map, endpoint={
        "url": served_keras_teacher.grpc, "model_name": served_keras_teacher.model_name, "top_k": top_k}),
        num_classes=10, data=DatasetReader(data_uri), batch_size=32)
    looked_up = load_source(TeacherSource(name="k", table=stored_uri, label_map=label_map), num_classes=10,
                            data=DatasetReader(data_uri))  # the stored table asked like a teacher, by id
    assert np.array_equal(stored.ids, live.ids) and np.array_equal(looked_up.ids, live.ids)
    np.testing.assert_array_equal(stored.probs, live.probs)
    np.testing.assert_array_equal(looked_up.probs, live.probs)
    np.testing.assert_array_equal(stored.global_probs(), live.global_probs())
    # the label map really is applied: predictions are 9 - the served argmax
    assert np.array_equal(live.predictions(), 9 - np.argmax(live.probs, axis=1))
