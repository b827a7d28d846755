"""Student training on real digits: offline soft labels, hard-label baseline, online teacher, errors."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch

from crossdistill.data.shards import Dataset, DatasetWriter, read_dataset, write_dataset
from crossdistill.errors import ConfigError, DataError, ModelFormatError, TeacherResponseError
from crossdistill.train import (
    ModelSpec,
    StudentTrainConfig,
    build_model,
    load_student,
    save_student,
    train_student,
)
from crossdistill.train.trainer import TrainingDivergedError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def splits(soft_label_splits):
    """Digits splits plus dense and top-k soft labels (conftest's ``soft_label_splits``)."""
    return soft_label_splits


def accuracy(model_uri: str, test_uri: str) -> float:
    test = read_dataset(test_uri)
    model, _ = load_student(model_uri)
    with torch.no_grad():
        pred = model(torch.from_numpy(test["x"])).argmax(-1).numpy()
    return float((pred == test["y"]).mean())


def _write(uri, data: Dataset, rows_per_shard: int, row_group_rows: int) -> str:
    """``data`` written in shards of ``rows_per_shard`` rows and row groups of ``row_group_rows``."""
    with DatasetWriter(str(uri), data.meta, rows_per_shard=rows_per_shard, row_group_rows=row_group_rows) as w:
        w.write(data.columns)
    return str(uri)


def _cfg(splits, out, **kw) -> StudentTrainConfig:
    base = dict(train_data=splits["student"], soft_labels=splits["dense"], out=str(out), mode="offline",
                epochs=15, batch_size=32, lr=3e-3, temperature=2.0, threads=1, progress=False)
    base.update(kw)
    return StudentTrainConfig.parse(base)


def test_offline_kd_beats_hard_label_baseline(splits, tmp_path):
    kd = train_student(_cfg(splits, tmp_path / "kd"))
    # 64 labels, as many optimizer steps as the KD run
    hard = train_student(_cfg(splits, tmp_path / "hard", mode="hard", soft_labels=None,
                              epochs=kd.steps // 2))
    acc_kd, acc_hard = accuracy(kd.model_uri, splits["test"]), accuracy(hard.model_uri, splits["test"])
    assert acc_kd > 0.85, acc_kd  # chance is 0.10; the teacher about 0.95
    assert acc_kd > acc_hard + 0.05, (acc_kd, acc_hard)
    assert hard.samples_seen == 64 * (kd.steps // 2)  # unlabeled rows are dropped in hard mode
    assert kd.history[0]["loss"] > kd.final_loss
    log = [json.loads(line) for line in (tmp_path / "kd" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == kd.steps and log[-1]["samples_seen"] == kd.samples_seen
    _, info = load_student(kd.model_uri)
    assert info["num_classes"] == 10 and info["input_shape"] == [1, 8, 8]
    assert info["extra"]["finished"] is True


def test_offline_topk_with_cnn_and_unlabeled_only_data(splits, tmp_path, caplog):
    # the 'unlabeled' split has no y column at all: only the soft term trains the student; its top-k soft
    # labels come in the same row order, over more shards and row groups than the inputs
    unlabeled, topk = read_dataset(splits["unlabeled"]), read_dataset(splits["topk"])
    assert "y" not in unlabeled
    rows = np.searchsorted(topk.ids, unlabeled.ids, sorter=np.argsort(topk.ids))
    rows = np.argsort(topk.ids)[rows]
    soft = _write(tmp_path / "soft", topk.take(rows), rows_per_shard=400, row_group_rows=150)
    cfg = _cfg(splits, tmp_path, train_data=splits["unlabeled"], soft_labels=soft,
               model={"name": "cnn", "kwargs": {"channels": [8, 16]}}, epochs=8, schedule="cosine")
    with caplog.at_level("WARNING"):
        result = train_student(cfg)
    assert "re-tempering" in caplog.text  # top-k at T=1, training at T=2
    assert accuracy(result.model_uri, splits["test"]) > 0.8


def test_offline_logit_matching(splits, tmp_path):
    result = train_student(_cfg(splits, tmp_path, loss="logit_matching", optimizer="sgd", lr=0.05,
                                hard_weight=0.0, epochs=10))
    assert accuracy(result.model_uri, splits["test"]) > 0.8


def test_offline_feature_distillation_from_a_hidden_layer(splits, tmp_path):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    train, student = read_dataset(splits["train"]), read_dataset(splits["student"])
    mlp = MLPClassifier(hidden_layer_sizes=(24,), max_iter=200, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(train["x"].reshape(len(train), -1), train["y"])
    flat = student["x"].reshape(len(student), -1)
    hidden = np.maximum(flat @ mlp.coefs_[0] + mlp.intercepts_[0], 0).astype(np.float32)
    logits = (hidden @ mlp.coefs_[1] + mlp.intercepts_[1]).astype(np.float32)
    soft = write_dataset(str(tmp_path / "soft"), Dataset(
        {"id": student.ids, "logits": logits, "layer/hidden": hidden}, {"num_classes": 10}))
    pair = [{"student": "2", "teacher": "hidden"}]  # the student MLP's first ReLU (64 wide) -> teacher's 24
    only_features = train_student(_cfg(splits, tmp_path / "f", soft_labels=soft, features=pair,
                                       soft_weight=0.0, hard_weight=0.0, epochs=6))
    assert only_features.history[-1]["loss"] < 0.3 * only_features.history[0]["loss"]
    both = train_student(_cfg(splits, tmp_path / "kd", soft_labels=soft, features=pair, feature_weight=0.5))
    assert accuracy(both.model_uri, splits["test"]) > 0.85
    with pytest.raises(DataError, match="no column 'layer/conv'"):
        train_student(_cfg(splits, tmp_path / "bad", soft_labels=soft,
                           features=[{"student": "2", "teacher": "conv"}]))
    with pytest.raises(ConfigError, match="no submodule '9'"):
        train_student(_cfg(splits, tmp_path / "bad2", soft_labels=soft,
                           features=[{"student": "9", "teacher": "hidden"}]))


def test_soft_labels_are_read_in_step_and_a_mismatch_is_named(splits, tmp_path):
    student, dense = splits["student_ds"], read_dataset(splits["dense"])
    n = len(student)
    short = write_dataset(str(tmp_path / "short"), dense.take(np.arange(5, n)))
    with pytest.raises(DataError, match=rf"short has {n - 5} rows but .*student has {n}"):
        train_student(_cfg(splits, tmp_path / "run", soft_labels=short))
    swapped = np.arange(n)
    swapped[[700, 701]] = [701, 700]  # two rows out of order, deep inside the second row group
    shuffled = _write(tmp_path / "shuffled", dense.take(swapped), rows_per_shard=n, row_group_rows=300)
    with pytest.raises(DataError, match=rf"shuffled: row 700 has id {student.ids[701]} but row 700 of .*student "
                                        rf"has id {student.ids[700]}"):
        train_student(_cfg(splits, tmp_path / "run2", soft_labels=shuffled))


def test_a_soft_label_set_that_carries_its_inputs_trains_alone(splits, tmp_path):
    """An assembled multi-teacher set (inputs, logits, weight; fewer rows than the pool) is its own train_data."""
    student, dense = splits["student_ds"], read_dataset(splits["dense"])
    keep = np.flatnonzero(np.arange(len(student)) % 4 != 0)
    both = write_dataset(str(tmp_path / "set"), Dataset(
        {"id": student.ids[keep], "x": student["x"][keep], "logits": dense["logits"][keep],
         "weight": np.ones(len(keep), np.float32)}, {"class_names": [str(c) for c in range(10)]}), num_shards=3)
    result = train_student(_cfg(splits, tmp_path / "run", train_data=both, soft_labels=both, epochs=10))
    assert result.samples_seen == 10 * len(keep)
    assert accuracy(result.model_uri, splits["test"]) > 0.85


def test_soft_label_classes_are_mapped_by_name_or_refused(splits, tmp_path):
    dense = read_dataset(splits["dense"])
    names = [str(c) for c in range(10)]
    kw = dict(epochs=2, hard_weight=0.0)
    plain = train_student(_cfg(splits, tmp_path / "plain", **kw))
    # the same teacher declaring its classes in reverse order, with its columns reversed to match
    reverse = write_dataset(str(tmp_path / "reverse"), Dataset(
        {"id": dense.ids, "logits": dense["logits"][:, ::-1].copy()}, {**dense.meta, "class_names": names[::-1]}))
    mapped = train_student(_cfg(splits, tmp_path / "mapped", soft_labels=reverse, **kw))
    assert mapped.history == [{**h, "samples_per_s": m["samples_per_s"]} for h, m in zip(plain.history,
                                                                                       mapped.history, strict=True)]
    other = write_dataset(str(tmp_path / "other"), Dataset(
        {"id": dense.ids, "logits": dense["logits"]}, {**dense.meta, "class_names": [*names[:9], "ten"]}))
    with pytest.raises(DataError, match=r"teacher's classes \['0', .*'ten'\] do not match the data's classes "
                                        r"\['0', .*'9'\] \(only in data: \['9'\]; only in teacher: \['ten'\]\)"):
        train_student(_cfg(splits, tmp_path / "run", soft_labels=other))
    wide = write_dataset(str(tmp_path / "wide"), Dataset(
        {"id": dense.ids, "logits": np.zeros((len(dense), 12), np.float32)}, {"num_classes": 12}))
    with pytest.raises(DataError, match="the teacher has 12 outputs, the data has 10 classes"):
        train_student(_cfg(splits, tmp_path / "run", soft_labels=wide))


def test_each_loss_term_is_logged(splits, tmp_path):
    result = train_student(_cfg(splits, tmp_path, epochs=2, log_every=5, soft_weight=0.7, hard_weight=0.3))
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log == result.history and len(log) > 2
    for entry in log:
        assert {"loss", "loss/soft", "loss/hard", "lr", "samples_per_s"} <= set(entry)
        assert entry["loss"] == pytest.approx(0.7 * entry["loss/soft"] + 0.3 * entry["loss/hard"], rel=1e-5)
    assert log[-1]["loss/soft"] < log[0]["loss/soft"]
    hard = train_student(_cfg(splits, tmp_path / "hard", mode="hard", soft_labels=None, epochs=2))
    assert set(hard.history[0]) == {"step", "epoch", "samples_seen", "loss", "loss/hard", "lr", "samples_per_s"}


def test_nan_loss_stops_with_a_clear_error(splits, tmp_path):
    student = splits["student_ds"]
    x = student["x"].copy()
    x[3] = np.nan
    bad = write_dataset(str(tmp_path / "nan"), student.with_columns(x=x))
    with pytest.raises(TrainingDivergedError, match="loss is nan at step"):
        train_student(_cfg(splits, tmp_path / "run", train_data=bad))


def test_config_errors(splits, tmp_path):
    with pytest.raises(ConfigError, match="needs soft_labels"):
        train_student(_cfg(splits, tmp_path, soft_labels=None))
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        StudentTrainConfig.parse({"train_data": "x", "epoch": 3})
    with pytest.raises(ConfigError, match="needs teacher"):
        train_student(_cfg(splits, tmp_path, mode="online"))
    with pytest.raises(ConfigError, match="neither a registered student"):
        build_model(ModelSpec(name="resnet9000"), (1, 8, 8), 10)


def test_model_registry_factory_and_save_load(tmp_path, monkeypatch):
    (tmp_path / "my_students.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(input_shape, num_classes, width=5):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.Tanh(), nn.Linear(width, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_students", None)
    spec = ModelSpec(name="my_students:tiny", kwargs={"width": 7})
    model = build_model(spec, (1, 8, 8), 10)
    assert model[1].out_features == 7
    uri = save_student(str(tmp_path / "s" / "model.pt"), model, spec, (1, 8, 8), 10, extra={"note": "hi"})
    loaded, info = load_student(uri)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    assert info["spec"] == spec and info["extra"] == {"note": "hi"}
    for name, kwargs in (("mlp", {"hidden": [16]}), ("cnn", {"channels": [4], "hidden": 8})):
        net = build_model(ModelSpec(name=name, kwargs=kwargs), (1, 8, 8), 3)
        assert net(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="junk.pt"):
        load_student(str(tmp_path / "junk.pt"))


# --------------------------------------------------------------------------- online: a real served teacher
# The conftest teacher is a Keras MLP trained on all of digits (test split included), served by a real
# OIP server process on loopback; the student only ever sees its answers over gRPC.

def _online(splits, endpoint, out, **kw) -> StudentTrainConfig:
    teacher = {"url": endpoint.grpc, "model_name": endpoint.model_name, "max_in_flight": 4,
               **kw.pop("teacher", {})}
    return _cfg(splits, out, mode="online", soft_labels=None, teacher=teacher, **{"epochs": 6, **kw})


def test_online_training_against_served_teacher_resumes_exactly(splits, served_keras_teacher, tmp_path):
    full = train_student(_online(splits, served_keras_teacher, tmp_path / "full"))
    acc = accuracy(full.model_uri, splits["test"])
    assert acc > 0.8, acc  # chance is 0.10
    # replies come back in completion order but are trained on in batch order: stop + resume is exact
    part = _online(splits, served_keras_teacher, tmp_path / "part", max_steps=50)
    assert train_student(part).steps == 50
    resumed = train_student(part.model_copy(update={"max_steps": None}))
    assert (resumed.steps, resumed.samples_seen) == (full.steps, full.samples_seen)
    a, _ = load_student(full.model_uri)
    b, _ = load_student(resumed.model_uri)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_online_topk_teacher(splits, served_keras_teacher, tmp_path):
    cfg = _online(splits, served_keras_teacher, tmp_path, teacher={"top_k": 3, "temperature": 2.0, "fp16": True})
    result = train_student(cfg)
    assert accuracy(result.model_uri, splits["test"]) > 0.8


def test_online_teacher_and_data_label_spaces_must_agree(splits, served_keras_teacher, tmp_path):
    student = read_dataset(splits["student"])
    names = [f"c{i}" for i in range(12)]
    twelve = write_dataset(str(tmp_path / "twelve"), Dataset(student.columns, {"class_names": names}))
    with pytest.raises(DataError, match=r"the teacher has 10 outputs, the data has 12 classes \['c0', .*'c11'\]"):
        train_student(_online(splits, served_keras_teacher, tmp_path / "run", train_data=twelve))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training step


def test_online_feature_distillation_requests_teacher_layers(splits, served_keras_teacher, tmp_path):
    cfg = _online(splits, served_keras_teacher, tmp_path, features=[{"student": "2", "teacher": "dense_0"}],
                  soft_weight=0.0, hard_weight=0.0, epochs=3)
    result = train_student(cfg)
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]


def test_teacher_failure_mid_run_keeps_progress_in_a_checkpoint(splits, quirky_teacher, tmp_path):
    from crossdistill.data.stream import BatchStream
    from crossdistill.train.checkpoint import list_checkpoints

    student = read_dataset(splits["student"])
    x = student["x"].copy()
    # the quirky teacher answers NaN logits for a batch whose first row starts with -1: batch 6 of epoch 0
    order = BatchStream(splits["student"], batch_size=32, seed=0, shuffle_buffer=10_000, num_classes=10)
    x[list(order.batch_keys(0))[6][0], 0, 0, 0] = -1.0
    poisoned = write_dataset(str(tmp_path / "poisoned"), student.with_columns(x=x))
    cfg = _online(splits, quirky_teacher["endpoint"], tmp_path / "run", train_data=poisoned)
    with pytest.raises(TeacherResponseError, match="NaN"):
        train_student(cfg)
    saved = [step for step, _ in list_checkpoints(cfg.out)]
    assert len(saved) == 1 and 1 <= saved[0] <= 6, saved


def test_per_example_weights_scale_the_soft_term(splits, tmp_path):
    """An assembled multi-teacher set carries a 'weight' column: weight 0 means 'ignore this target'."""
    soft = read_dataset(splits["dense"])
    zero = write_dataset(str(tmp_path / "w0"), soft.with_columns(weight=np.zeros(len(soft), np.float32)))
    run = train_student(_cfg(splits, tmp_path / "zero", soft_labels=zero, hard_weight=0.0, epochs=1))
    torch.manual_seed(0)
    initial = build_model(ModelSpec(), (1, 8, 8), 10)
    trained, _ = load_student(run.model_uri)
    for a, b in zip(initial.state_dict().values(), trained.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)  # no gradient ever reached the student
    ones = write_dataset(str(tmp_path / "w1"), soft.with_columns(weight=np.ones(len(soft), np.float32)))
    weighted = train_student(_cfg(splits, tmp_path / "ones", soft_labels=ones, epochs=3))
    plain = train_student(_cfg(splits, tmp_path / "plain", epochs=3))
    assert weighted.final_loss == pytest.approx(plain.final_loss, rel=1e-5)
