"""Keras teachers for the multi-teacher scenario: a specialist outputs only its classes and records its
label map, which pseudo-label carries into the tables the expert steps read; a weak teacher sees few examples."""

from __future__ import annotations

import numpy as np
import pytest

from crossdistill import storage
from crossdistill.errors import ConfigError, DataError
from crossdistill.experts.tables import load_table
from crossdistill.teacher.adapters import load_teacher
from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label
from crossdistill.teacher.train_keras import TeacherTrainConfig, train_keras_teacher

SPECIALIST = [6, 7, 8, 9, 0]


@pytest.fixture(scope="module")
def specialist(digits_uri, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("specialist") / "teacher.keras")
    cfg = TeacherTrainConfig(train=digits_uri, out=out, classes=SPECIALIST, hidden=[32], epochs=15, threads=1)
    return {"path": out, "result": train_keras_teacher(cfg), "cfg": cfg}


def test_specialist_outputs_only_its_classes_and_records_its_label_map(specialist, digits):
    result = specialist["result"]
    assert result["label_map"] == SPECIALIST and result["num_outputs"] == 5 and result["num_classes"] == 10
    adapter = load_teacher(specialist["path"], threads=1)
    assert adapter.num_classes == 5
    # Trained only on its classes: about half of digits' examples, minus the held-out validation share.
    covered = np.isin(digits["y"], SPECIALIST)
    assert result["train_examples"] + result["val_examples"] == covered.sum()
    logits = adapter.predict(digits["x"][covered])["logits"]
    assert logits.shape == (covered.sum(), 5)
    mapped = np.asarray(SPECIALIST)[logits.argmax(axis=1)]
    assert (mapped == digits["y"][covered]).mean() > 0.85  # output i means global class SPECIALIST[i]
    assert result["val_accuracy"] > 0.8


def test_pseudo_label_writes_the_label_map_the_expert_tables_read(specialist, serve_teacher, digits, digits_uri,
                                                                   tmp_path):
    endpoint = serve_teacher(specialist["path"], name="specialist-teacher")
    out = str(tmp_path / "table")
    run_pseudo_label(PseudoLabelConfig(data=digits_uri, teacher_url=endpoint.grpc, out=out, label_map=SPECIALIST,
                                       progress=False))
    table = load_table(out, teacher="specialist")
    assert table.num_classes == 10 and table.label_map.tolist() == SPECIALIST
    assert table.covered.tolist() == [c in SPECIALIST for c in range(10)]
    order = np.argsort(table.ids)
    pred, y = table.predictions()[order], digits["y"]
    assert set(np.unique(pred)) <= set(SPECIALIST)
    covered = np.isin(y, SPECIALIST)
    assert (pred[covered] == y[covered]).mean() > 0.85

    wrong = str(tmp_path / "wrong")
    with pytest.raises(DataError, match=r"label_map has 4 entries.*outputs 5"):
        run_pseudo_label(PseudoLabelConfig(data=digits_uri, teacher_url=endpoint.grpc, out=wrong,
                                           label_map=[6, 7, 8, 9], progress=False))
    with pytest.raises(DataError, match=r"outside 0\.\.9"):
        run_pseudo_label(PseudoLabelConfig(data=digits_uri, teacher_url=endpoint.grpc, out=wrong,
                                           label_map=[6, 7, 8, 9, 10], progress=False))
    assert not storage.exists(wrong)


def test_max_examples_makes_a_weak_teacher_on_a_stratified_handful(digits_uri, tmp_path):
    cfg = TeacherTrainConfig(train=digits_uri, out=str(tmp_path / "weak.keras"), max_examples=30, hidden=[16],
                             epochs=5, threads=1)
    result = train_keras_teacher(cfg)
    assert result["train_examples"] == 30 and result["label_map"] == list(range(10))
    assert result["val_examples"] == round(0.15 * 1797)  # the validation part is not cut
    assert load_teacher(cfg.out, threads=1).num_classes == 10


def test_bad_classes_are_rejected(digits_uri, tmp_path):
    with pytest.raises(ValueError, match="distinct"):
        TeacherTrainConfig(train=digits_uri, out=str(tmp_path / "t.keras"), classes=[3, 3])
    with pytest.raises(ConfigError, match="must be < 10"):
        train_keras_teacher(TeacherTrainConfig(train=digits_uri, out=str(tmp_path / "t.keras"), classes=[3, 12],
                                               epochs=1))
