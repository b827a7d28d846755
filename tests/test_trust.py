"""Trust models: learn from labeled validation data when a teacher is right."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossdistill.data.shards import write_dataset
from crossdistill.errors import DataError
from crossdistill.experts.tables import PredictionTable, TeacherSource, save_table, softmax, stack_tables
from crossdistill.experts.trust import (
    TrustModelTrainConfig,
    load_trust_models,
    run_trust_model_train,
    train_trust_models,
)


def _specialist(name: str, digits, classes: list[int], train_idx: np.ndarray, seed: int = 0):
    from sklearn.linear_model import LogisticRegression

    x, y = digits["x"].reshape(len(digits), -1), digits["y"]
    keep = train_idx[np.isin(y[train_idx], classes)]
    model = LogisticRegression(max_iter=2000, random_state=seed).fit(x[keep], y[keep])
    return model


def _table(name: str, model, digits, idx: np.ndarray) -> PredictionTable:
    x = digits["x"][idx].reshape(len(idx), -1)
    return PredictionTable(name, digits.ids[idx], softmax(model.decision_function(x).astype(np.float32)),
                           model.classes_, 10)


@pytest.fixture(scope="module")
def setup(digits):
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(digits))
    owners, val = perm[:600], perm[600:1000]
    low = _specialist("low", digits, [0, 1, 2, 3, 4], owners)
    high = _specialist("high", digits, [5, 6, 7, 8, 9], owners)
    tables = [_table("low", low, digits, val), _table("high", high, digits, val)]
    return tables, val


def test_trust_model_beats_constant_predictor_on_held_out(digits, setup):
    tables, val = setup
    models, metrics = train_trust_models(tables, digits["x"][val], digits["y"][val], digits.ids[val],
                                         model="logreg", joint_model="mlp", holdout_fraction=0.3, seed=0)
    assert metrics["holdout_examples"] == 120 and metrics["train_examples"] == 280
    for name in ("low", "high"):
        m = metrics["per_teacher"][name]
        # a specialist is right about half the time: a constant predictor scores ~0.5 and AUC 0.5
        assert m["auc"] > 0.9, m
        assert m["accuracy"] > m["constant_accuracy"] + 0.2, m
        assert metrics["joint"][name]["auc"] > 0.9
    # as a selector, the joint model's most trusted teacher beats either teacher alone
    assert metrics["joint_selected_accuracy"] > metrics["best_single_teacher_accuracy"] + 0.2
    probs, _ = stack_tables(tables, digits.ids[val])
    assert models.per_teacher_proba(digits["x"][val], probs).shape == (2, len(val))
    assert models.joint_proba(digits["x"][val], probs).shape == (2, len(val))


def test_trust_model_without_inputs_still_learns_from_outputs(digits, setup):
    tables, val = setup
    _, metrics = train_trust_models(tables, None, digits["y"][val], digits.ids[val], model="gbdt",
                                    joint_model="none", use_inputs=False)
    assert metrics["per_teacher"]["low"]["auc"] > 0.6
    assert metrics["joint"] == {}


def test_run_trust_model_train_saves_models_and_metrics(tmp_path, digits, setup):
    tables, val = setup
    sources = []
    for t in tables:
        sources.append(TeacherSource(name=t.teacher, table=save_table(str(tmp_path / t.teacher), t)))
    val_uri = write_dataset(str(tmp_path / "val"), digits.take(val))
    out = tmp_path / "trust"
    metrics = run_trust_model_train(TrustModelTrainConfig(teachers=sources, val=val_uri, out=str(out)))
    assert json.loads((out / "trust_metrics.json").read_text())["per_teacher"] == metrics["per_teacher"]
    models = load_trust_models(str(out))
    assert models.teachers == ["low", "high"] and models.label_maps[0] == [0, 1, 2, 3, 4]
    probs, _ = stack_tables(tables, digits.ids[val])
    p = models.per_teacher_proba(digits["x"][val], probs)
    right = np.argmax(probs, axis=2) == digits["y"][val]
    assert ((p >= 0.5) == right).mean() > 0.9  # refit on all of val: it fits it well
    with pytest.raises(DataError, match="trained for teachers"):
        models.check_teachers(tables[::-1])


def test_trust_models_need_labels(digits, setup):
    tables, val = setup
    with pytest.raises(DataError, match="empty"):
        train_trust_models(tables, None, np.zeros(0, np.int64), np.zeros(0, np.int64), use_inputs=False)
