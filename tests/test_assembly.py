"""Distillation-set assembly: weights, coverage and the written soft-label dataset, on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from crossdistill.data.shards import Dataset, read_dataset, write_dataset
from crossdistill.errors import ConfigError, DataError
from crossdistill.experts.assembly import AssembleConfig, assemble, combine, run_assemble
from crossdistill.experts.baselines import average, label_model, majority_vote
from crossdistill.experts.selection import evaluate_experts, write_report
from crossdistill.experts.tables import PredictionTable, TeacherSource, save_table

IDS = np.array([10, 11, 12])


def _tables() -> list[PredictionTable]:
    # global classes 0..2; "a" covers {0, 1}, "b" covers {1, 2}
    a = PredictionTable("a", IDS, np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1]), 3)
    b = PredictionTable("b", IDS, np.array([[0.3, 0.7], [0.5, 0.5], [0.1, 0.9]]), np.array([1, 2]), 3)
    return [a, b]


def _report(experts: dict[int, dict[str, float]]) -> dict:
    return {"num_classes": 3, "teachers": [{"name": "a"}, {"name": "b"}],
            "per_label": [{"label": c, "experts": list(experts.get(c, {})), "expert_weights": experts.get(c, {})}
                          for c in range(3)]}


def test_experts_mode_keeps_claims_of_experts_only():
    # a is expert for 0 (precision 0.9), b for 2 (0.6); nobody for 1
    out = assemble(_tables(), IDS, method="experts", experts_report=_report({0: {"a": 0.9}, 2: {"b": 0.6}}))
    # ex 10: a predicts 0 (claim 0.9), b predicts 2 (claim 0.6) -> weighted mean of both
    # ex 11: a predicts 1, b predicts 1 (tie -> index 0 = class 1): no expert claims -> dropped
    # ex 12: a predicts 0 (claim 0.9), b predicts 2 (claim 0.6)
    assert out.ids.tolist() == [10, 12]
    expected10 = (0.9 * np.array([0.9, 0.1, 0]) + 0.6 * np.array([0, 0.3, 0.7])) / 1.5
    np.testing.assert_allclose(out.probs[0], expected10)
    np.testing.assert_allclose(out.weight, [0.9, 0.9])
    cov = out.coverage
    assert cov["examples"] == 3 and cov["covered"] == 2 and cov["share"] == pytest.approx(2 / 3)
    assert cov["per_label_counts"] == {"0": 2, "1": 0, "2": 0}
    assert cov["per_label"]["0"] == pytest.approx(2 / 3) and cov["labels_without_examples"] == ["1", "2"]
    assert cov["per_teacher_used"] == {"a": pytest.approx(2 / 3), "b": pytest.approx(2 / 3)}


def test_trust_mode_weights_and_threshold():
    trust = np.array([[0.9, 0.4, 0.2],
                      [0.5, 0.3, 0.8]])
    out = assemble(_tables(), IDS, method="trust", trust=trust, min_trust=0.5, keep_uncovered=True)
    assert out.ids.tolist() == [10, 11, 12]
    np.testing.assert_allclose(out.probs[0], (0.9 * np.array([0.9, 0.1, 0]) + 0.5 * np.array([0, 0.3, 0.7])) / 1.4)
    np.testing.assert_allclose(out.probs[1], np.full(3, 1 / 3))  # nobody trusted: uniform, weight 0
    np.testing.assert_allclose(out.probs[2], [0, 0.1, 0.9])  # only b trusted
    np.testing.assert_allclose(out.weight, [0.9, 0.0, 0.8])
    assert out.coverage["covered"] == 2 and out.coverage["per_label_counts"] == {"0": 1, "1": 0, "2": 1}
    both = assemble(_tables(), IDS, method="experts+trust", trust=trust,
                    experts_report=_report({0: {"a": 0.9}, 2: {"b": 0.6}}))
    # ex 12: a claims 0 but is not trusted (0.2); b claims 2 and is trusted (0.8)
    assert both.ids.tolist() == [10, 12]
    np.testing.assert_allclose(both.probs[1], [0, 0.1, 0.9])


def test_combine_rejects_bad_shapes_and_methods():
    probs = np.ones((2, 3, 4)) / 4
    with pytest.raises(DataError, match="expected \\(2, 3\\)"):
        combine(probs, np.ones((3, 2)), np.arange(3))
    with pytest.raises(ConfigError, match="needs trust"):
        assemble(_tables(), IDS, method="trust")
    with pytest.raises(DataError, match="not given"):
        assemble(_tables(), IDS, method="experts",
                 experts_report={"num_classes": 3, "teachers": [{"name": "zz"}],
                                 "per_label": [{"label": 0, "experts": ["zz"], "expert_weights": {"zz": 1.0}}]})


def test_baselines_on_hand_made_case():
    probs = np.stack([t.global_probs() for t in _tables()])
    np.testing.assert_allclose(average(probs), probs.mean(axis=0), atol=1e-6)
    votes = majority_vote(probs)
    # ex 10: a votes 0, b votes 2 -> tie, broken by summed probability (0: 0.9 vs 2: 0.7)
    assert np.argmax(votes, axis=1).tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="at least 3 teachers"):
        label_model(probs)
    three = np.concatenate([probs, probs[:1]])
    lm = label_model(np.repeat(three, 20, axis=1), epochs=50)
    assert lm.shape == (60, 3) and np.allclose(lm.sum(axis=1), 1)


def test_run_assemble_writes_soft_label_dataset(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    ids = np.arange(100, 160)

    def teacher(name: str, classes: list[int], acc: float) -> PredictionTable:
        logits = rng.normal(0, 0.2, size=(60, len(classes)))
        for i, c in enumerate(y):
            j = classes.index(c) if c in classes and rng.random() < acc else rng.integers(len(classes))
            logits[i, j] += 3
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return PredictionTable(name, ids, p, np.array(classes), 3)

    tables = [teacher("a", [0, 1], 0.95), teacher("b", [0, 1, 2], 0.7)]
    sources = [TeacherSource(name=t.teacher, table=save_table(str(tmp_path / t.teacher), t)) for t in tables]
    val = Dataset({"id": ids[:30], "y": y[:30]}, {"num_classes": 3})
    write_report(str(tmp_path / "experts"), evaluate_experts(tables, val, mode="labeled", min_score=0.3))
    unl = write_dataset(str(tmp_path / "unl"), Dataset({"id": ids[30:]}, {"num_classes": 3}))
    res = run_assemble(AssembleConfig(teachers=sources, unlabeled=unl, method="experts",
                                      experts=str(tmp_path / "experts"), out=str(tmp_path / "set")))
    ds = read_dataset(str(tmp_path / "set"))
    assert len(ds) == res["examples"] == res["coverage"]["covered"] > 0
    assert ds["logits"].shape == (len(ds), 3) and ds["logits"].dtype == np.float32
    np.testing.assert_allclose(np.exp(ds["logits"]).sum(axis=1), 1, atol=1e-5)
    assert ds["weight"].shape == (len(ds),) and (ds["weight"] > 0).all()
    assert ds.meta["num_classes"] == 3 and ds.meta["mode"] == "dense" and ds.meta["coverage"]["examples"] == 30
    assert set(ds.ids) <= set(ids[30:].tolist())
    with pytest.raises(ConfigError, match="needs 'trust_models'"):
        AssembleConfig.parse({"teachers": [s.model_dump() for s in sources], "unlabeled": unl, "method": "trust"})
