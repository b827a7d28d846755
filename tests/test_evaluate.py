"""Evaluation: metrics on hand-made cases, export round trips, latency/footprint, run_evaluate end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from crossdistill.errors import DataError, ModelFormatError
from crossdistill.evaluate import export, latency, metrics

torch.set_num_threads(1)


# ---------------------------------------------------------------- metrics


def test_confusion_matrix_and_per_class_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 1, 0, 1, 1, 0])
    cm = metrics.confusion_matrix(y, p, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    pc = metrics.per_class_accuracy(y, p, 4)
    assert pc[:3].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert math.isnan(pc[3])  # class 3 has no examples: undefined, not 0
    assert metrics.accuracy(y, p) == pytest.approx(4 / 6)


def test_agreement_and_label_validation():
    assert metrics.agreement(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])) == 0.5
    with pytest.raises(DataError, match="pred_a has 3 rows but pred_b has 2"):
        metrics.agreement(np.array([1, 2, 3]), np.array([1, 2]))
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(DataError, match="integer"):
        metrics.accuracy(np.array([0.5]), np.array([0]))


def test_ece_perfectly_calibrated_is_zero():
    # 10 examples at confidence 0.8, 8 right; 10 at confidence 0.6, 6 right -> calibrated in every bin
    probs = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 10)
    y = np.array([0] * 8 + [1] * 2 + [1] * 6 + [0] * 4)
    cal = metrics.calibration(probs, y, bins=10)
    assert cal.ece == pytest.approx(0.0, abs=1e-12)
    # 0.8 lies on an edge: bins are right-closed so it belongs to (0.7, 0.8] = bin 7; 0.6 to bin 5
    assert cal.count[7] == 10 and cal.count[5] == 10 and sum(cal.count) == 20
    assert cal.accuracy[7] == pytest.approx(0.8) and cal.confidence[5] == pytest.approx(0.6)
    assert math.isnan(cal.accuracy[0])


def test_ece_overconfident_by_hand():
    # 4 examples at confidence 0.95 (bin (0.9,1]) with 2 right: |0.5-0.95| = 0.45, weight 4/6;
    # 2 examples at confidence 0.55 (bin (0.5,0.6]) with 1 right: |0.5-0.55| = 0.05, weight 2/6.
    probs = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 2)
    y = np.array([0, 0, 1, 1, 0, 1])
    expected = 4 / 6 * 0.45 + 2 / 6 * 0.05
    assert metrics.expected_calibration_error(probs, y, bins=10) == pytest.approx(expected)
    # one bin: |mean accuracy - mean confidence| = |0.5 - (4*0.95 + 2*0.55)/6|
    assert metrics.expected_calibration_error(probs, y, bins=1) == pytest.approx(abs(0.5 - 4.9 / 6))


def test_nll_and_softmax():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.0, 1.0]])
    y = np.array([0, 1, 0])
    got = metrics.negative_log_likelihood(probs, y)
    assert got == pytest.approx((-math.log(0.5) - math.log(0.1) - math.log(1e-12)) / 3)
    logits = np.array([[1000.0, 1000.0 + math.log(3.0)]])
    assert metrics.softmax(logits)[0].tolist() == pytest.approx([0.25, 0.75])


def test_classification_report_is_json_ready():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    y = np.array([0, 1, 2, 2])
    rep = metrics.classification_report(logits, y, 3, ece_bins=5)
    assert rep["accuracy"] == 0.75 and rep["num_examples"] == 4
    assert rep["per_class_accuracy"] == [1.0, 1.0, 0.5]
    assert rep["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert None in rep["reliability"]["accuracy"]  # empty bins become null, not NaN
    json.dumps(rep, allow_nan=False)
    with pytest.raises(DataError, match=r"\[N, 4\]"):
        metrics.classification_report(logits, y, 4)


# ---------------------------------------------------------------- latency / footprint


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.head(h.flatten(1))


def test_parameter_count_and_size_on_disk(tmp_path):
    m = _mlp()
    assert latency.count_parameters(m) == 64 * 32 + 32 + 32 * 10 + 10
    path = tmp_path / "m.pt"
    torch.save(m.state_dict(), path)
    assert latency.size_on_disk(str(path)) == path.stat().st_size
    with pytest.raises(DataError, match="no such file"):
        latency.size_on_disk(str(tmp_path / "missing.pt"))


def test_cpu_latency_pins_threads_and_restores():
    before = torch.get_num_threads()
    out = latency.torch_cpu_latency(_mlp(), (1, 8, 8), batch_sizes=(1, 16), repeats=5, warmup=1, threads=1)
    assert torch.get_num_threads() == before
    assert out["threads"] == 1 and [b["batch_size"] for b in out["batches"]] == [1, 16]
    for b in out["batches"]:
        assert 0 < b["min_ms"] <= b["median_ms"] <= b["p90_ms"] and b["repeats"] == 5


def test_teacher_footprint_from_metadata():
    assert latency.teacher_footprint({"num_parameters": 123, "size_bytes": "4096"}) == \
        {"num_parameters": 123, "size_bytes": 4096}
    assert latency.teacher_footprint({"parameters": {"num_parameters": {"int64_param": 7}}}) == \
        {"num_parameters": 7, "size_bytes": None}
    meta = {"name": "teacher", "platform": "crossdistill/keras num_parameters=50826 size_bytes=645354"}
    assert latency.teacher_footprint(meta) == {"num_parameters": 50826, "size_bytes": 645354}


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("make", [_mlp, SmallCNN], ids=["mlp", "cnn"])
def test_export_round_trip(tmp_path, make):
    import onnxruntime as ort

    model = make().eval()
    out = export.export_student(model, (1, 8, 8), str(tmp_path), ["torchscript", "onnx"])
    assert set(out) == {"torchscript", "onnx"}
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    scripted = torch.jit.load(out["torchscript"]["uri"])
    np.testing.assert_allclose(scripted(x).detach().numpy(), want, atol=1e-5, rtol=1e-4)
    sess = ort.InferenceSession(out["onnx"]["uri"], providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(["logits"], {"input": x.numpy()})[0], want, atol=1e-4, rtol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx", "student.torchscript.pt"]


def test_scripted_export_serves_as_teacher(tmp_path):
    from crossdistill.teacher.adapters import load_teacher

    model = SmallCNN().eval()
    res = export.export_torchscript(model, export.example_input((1, 8, 8)), str(tmp_path / "s.pt"), method="script")
    teacher = load_teacher(res["uri"])
    assert teacher.input_shape == (1, 8, 8) and teacher.num_classes == 10
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(teacher.predict(x)["logits"], model(torch.from_numpy(x)).numpy(), atol=1e-5)


class DataDependent(torch.nn.Module):
    """Python control flow on tensor values: tracing bakes in one branch, so the check must catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        if bool(flat.sum() > 1e6):
            return flat[:, :10]
        return -flat[:, :10] * len(x)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_trace_that_disagrees_writes_nothing(tmp_path):
    target = tmp_path / "student.torchscript.pt"
    with pytest.raises(ModelFormatError, match="TorchScript, batch 3"):
        export.export_torchscript(DataDependent(), export.example_input((1, 8, 8)), str(target))
    assert not target.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- run_evaluate end to end


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, log_path=None) -> torch.nn.Module:
    """Plain supervised training (full batch Adam): enough for digits in a second."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    lines = []
    for step in range(epochs):
        for i in range(0, len(xt), 128):
            loss = torch.nn.functional.cross_entropy(model(xt[i:i + 128]), yt[i:i + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
        lines.append(json.dumps({"step": step, "epoch": step, "loss": loss.item()}))
    if log_path is not None:
        log_path.write_text("\n".join(lines) + "\n")
    return model.eval()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Test split on disk, a student trained on all labels, a baseline trained on 30 labels, a train log."""
    from crossdistill.data.shards import write_dataset
    from crossdistill.data.sources import load_digits
    from crossdistill.train.models import ModelSpec, build_model, save_student

    root = tmp_path_factory.mktemp("eval")
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data))
    test, train = data.take(np.sort(order[:400])), data.take(np.sort(order[400:]))
    test_uri = write_dataset(str(root / "test"), test, num_shards=2)
    x, y = train["x"], train["y"]
    spec = ModelSpec(name="mlp", kwargs={"hidden": [32]})
    student = _train(build_model(spec, (1, 8, 8), 10), x, y, epochs=15, log_path=root / "train_log.jsonl")
    save_student(str(root / "student" / "model.pt"), student, spec, (1, 8, 8), 10)
    cnn_spec = ModelSpec(name="cnn", kwargs={"channels": [8]})
    few = _train(build_model(cnn_spec, (1, 8, 8), 10), x[:30], y[:30], epochs=15)
    save_student(str(root / "few" / "model.pt"), few, cnn_spec, (1, 8, 8), 10)
    return {"root": root, "test": test_uri, "student": str(root / "student" / "model.pt"),
            "few": str(root / "few" / "model.pt"), "log": str(root / "train_log.jsonl"), "model": student,
            "test_ds": test, "train_ds": train}


def _cfg(run, out, **kw):
    from crossdistill.evaluate.run import EvaluateConfig

    base = {"test_data": run["test"], "student": run["student"], "out": str(out), "latency_repeats": 5,
            "latency_warmup": 1, "latency_batch": 16, "ece_bins": 10}
    return EvaluateConfig.parse({**base, **kw})


def test_run_evaluate_end_to_end(digits_run, tmp_path):
    from html.parser import HTMLParser

    from crossdistill.evaluate.run import run_evaluate

    out = tmp_path / "eval"
    cfg = _cfg(digits_run, out, baselines={"few-label": digits_run["few"]}, train_log=digits_run["log"],
               notes="digits <quick>", title="digits eval")
    res = run_evaluate(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.html", "student.onnx",
                                                     "student.torchscript.pt"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["student"]["accuracy"] == res["student"]["accuracy"]
    student = saved["student"]
    assert student["num_examples"] == 400 and student["accuracy"] > 0.85  # chance is 0.10
    # the numbers agree with an independent computation from the trained model
    x, y = digits_run["test_ds"]["x"], digits_run["test_ds"]["y"]
    with torch.no_grad():
        pred = digits_run["model"](torch.from_numpy(x)).argmax(1).numpy()
    assert student["accuracy"] == pytest.approx(float(np.mean(pred == y)))
    assert np.sum(student["confusion_matrix"]) == 400 and len(student["per_class_accuracy"]) == 10
    assert 0 <= student["ece"] < 1 and student["nll"] > 0
    assert student["num_parameters"] == 64 * 32 + 32 + 32 * 10 + 10
    assert student["size_bytes"] == (digits_run["root"] / "student" / "model.pt").stat().st_size
    assert [b["batch_size"] for b in student["latency"]["batches"]] == [1, 16]
    assert student["latency"]["threads"] == 1
    few = saved["baselines"]["few-label"]
    assert few["accuracy"] < student["accuracy"]
    assert [r["name"] for r in saved["comparison"]] == ["student", "few-label"]
    assert saved["comparison"][0]["latency_b1_ms"] == student["latency"]["batches"][0]["median_ms"]
    assert saved["exports"]["onnx"]["max_abs_diff"] < 1e-4 and saved["teacher"] is None
    page = (out / "report.html").read_text()
    HTMLParser().feed(page)
    assert "digits &lt;quick&gt;" in page and page.count("data:image/png;base64,") == 4
    assert "latency b=16 (median ms)" in page


class BatchScaled(torch.nn.Module):
    """Logits scaled by the batch size: predictions are fine, but a trace bakes the example's size in."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.lin = torch.nn.Linear(int(np.prod(input_shape)), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1)) * len(x)


def batch_scaled(input_shape, num_classes):
    return BatchScaled(input_shape, num_classes)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_failed_export_leaves_no_metrics(digits_run, tmp_path):
    from crossdistill.evaluate.run import run_evaluate
    from crossdistill.train.models import ModelSpec, save_student

    spec = ModelSpec(name=f"{__name__}:batch_scaled")
    uri = save_student(str(tmp_path / "odd" / "model.pt"), batch_scaled((1, 8, 8), 10), spec, (1, 8, 8), 10)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"from": "an earlier run"}')  # must not survive a failed re-run
    with pytest.raises(ModelFormatError, match="TorchScript, batch 3"):
        run_evaluate(_cfg(digits_run, out, student=uri, export=["torchscript"]))
    assert not (out / "metrics.json").exists() and not (out / "report.html").exists()


@pytest.fixture(scope="module")
def served_teacher(digits_run, serve_teacher):
    """A wider MLP trained on the same digits, exported by us to TorchScript and served over OIP on loopback
    (a real server process from conftest's ``serve_teacher``; the framework behind OIP does not matter here)."""
    torch.manual_seed(1)
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, 10))
    train = digits_run["train_ds"]
    teacher = _train(wide, train["x"], train["y"], epochs=20)
    uri = str(digits_run["root"] / "teacher.pt")
    export.export_torchscript(teacher, export.example_input((1, 8, 8)), uri)
    endpoint = serve_teacher(uri, name="eval-test-teacher")
    return {"url": endpoint.grpc, "model": teacher, "uri": uri}


def test_run_evaluate_with_teacher(digits_run, served_teacher, tmp_path):
    from crossdistill.evaluate.run import run_evaluate

    res = run_evaluate(_cfg(digits_run, tmp_path / "eval", teacher={"url": served_teacher["url"]},
                            baselines={"few-label": digits_run["few"]}, export=[]))
    x, y = digits_run["test_ds"]["x"], digits_run["test_ds"]["y"]
    with torch.no_grad():
        t_pred = served_teacher["model"](torch.from_numpy(x)).argmax(1).numpy()
        s_pred = digits_run["model"](torch.from_numpy(x)).argmax(1).numpy()
    teacher = res["teacher"]
    assert teacher["accuracy"] == pytest.approx(float(np.mean(t_pred == y))) and teacher["accuracy"] > 0.85
    assert res["student"]["teacher_agreement"] == pytest.approx(float(np.mean(t_pred == s_pred)))
    assert res["baselines"]["few-label"]["teacher_agreement"] < res["student"]["teacher_agreement"]
    # footprint from the server's metadata only: the teacher's file never reaches this side
    assert teacher["num_parameters"] == 64 * 128 + 128 + 128 * 10 + 10
    assert teacher["size_bytes"] == (digits_run["root"] / "teacher.pt").stat().st_size
    assert [b["batch_size"] for b in teacher["latency"]["batches"]] == [1, 16]
    rows = {r["name"]: r for r in res["comparison"]}
    assert rows["teacher"]["role"] == "teacher" and rows["teacher"]["latency_b1_ms"] > 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["teacher"]["url"] == served_teacher["url"]
    assert "agreement with teacher" in (tmp_path / "eval" / "report.html").read_text()


def test_run_evaluate_with_topk_teacher(digits_run, served_teacher, tmp_path):
    from crossdistill.evaluate.run import run_evaluate

    res = run_evaluate(_cfg(digits_run, tmp_path / "eval", export=[], latency_repeats=2, latency_batch=1,
                            teacher={"url": served_teacher["url"], "top_k": 3, "temperature": 4.0}))
    x, y = digits_run["test_ds"]["x"], digits_run["test_ds"]["y"]
    with torch.no_grad():
        t_pred = served_teacher["model"](torch.from_numpy(x)).argmax(1).numpy()
    teacher = res["teacher"]
    assert teacher["accuracy"] == pytest.approx(float(np.mean(t_pred == y)))
    assert "ece" not in teacher and sum(map(sum, teacher["confusion_matrix"])) == len(y)
    assert [b["batch_size"] for b in teacher["latency"]["batches"]] == [1]


def test_config_is_strict_and_takes_a_teacher_url(digits_run, tmp_path):
    from crossdistill.errors import ConfigError

    cfg = _cfg(digits_run, tmp_path, teacher="127.0.0.1:8081")
    assert cfg.teacher.url == "127.0.0.1:8081"
    with pytest.raises(ConfigError, match="unknown key 'ece_bin'"):
        _cfg(digits_run, tmp_path, ece_bin=3)
    with pytest.raises(ConfigError, match="export"):
        _cfg(digits_run, tmp_path, export=["tflite"])


# ---------------------------------------------------------------- several teachers, specialists, ensembles

SPECIALIST = [6, 7, 8, 9, 0]


@pytest.fixture(scope="module")
def served_specialist(digits_uri, serve_teacher, tmp_path_factory):
    """A Keras specialist that outputs only SPECIALIST's classes (label map), behind a real OIP server."""
    from crossdistill.teacher.train_keras import TeacherTrainConfig, train_keras_teacher

    out = str(tmp_path_factory.mktemp("eval-specialist") / "teacher.keras")
    train_keras_teacher(TeacherTrainConfig(train=digits_uri, out=out, classes=SPECIALIST, hidden=[32],
                                           epochs=15, threads=1))
    return {"path": out, "url": serve_teacher(out, name="eval-specialist").grpc}


def _global_probs(adapter, x, label_map=None):
    """A teacher's softmax lifted onto the 10 global classes (0 where it has no output), computed here."""
    logits = adapter.predict(x)["logits"].astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out = np.zeros((len(x), 10))
    out[:, label_map if label_map is not None else np.arange(10)] = p
    return out


def test_run_evaluate_with_several_teachers_a_specialist_and_ensembles(
        digits_run, served_teacher, served_keras_teacher, keras_adapter, served_specialist, tmp_path):
    from crossdistill.evaluate.run import run_evaluate
    from crossdistill.teacher.adapters import load_teacher
    from crossdistill.train.models import load_student

    out = tmp_path / "eval"
    res = run_evaluate(_cfg(digits_run, out, export=[], latency_repeats=2, latency_batch=1,
                            teacher=served_teacher["url"], baselines={"few-label": digits_run["few"]},
                            teachers=[served_keras_teacher.grpc,  # just a URL: named teacher0, every class
                                      {"client": served_specialist["url"], "label_map": SPECIALIST,
                                       "name": "specialist"}]))
    x, y = digits_run["test_ds"]["x"], digits_run["test_ds"]["y"]
    with torch.no_grad():
        s_pred = digits_run["model"](torch.from_numpy(x)).argmax(1).numpy()
    general = _global_probs(keras_adapter, x)
    special = _global_probs(load_teacher(served_specialist["path"], threads=1), x, SPECIALIST)

    t0, spec = res["teachers"]
    assert [t0["name"], spec["name"]] == ["teacher0", "specialist"]
    assert t0["accuracy"] == pytest.approx(float(np.mean(general.argmax(1) == y))) and t0["accuracy"] > 0.85
    assert t0["student_agreement"] == pytest.approx(float(np.mean(general.argmax(1) == s_pred)))
    assert t0["num_outputs"] == 10 and t0["covered_accuracy"] == t0["accuracy"] and t0["nll"] > 0
    # the specialist: judged on every example, so it cannot beat its share of the classes...
    spec_pred = special.argmax(1)
    own = np.isin(y, SPECIALIST)
    assert spec["accuracy"] == pytest.approx(float(np.mean(spec_pred == y)))
    assert spec["accuracy"] <= own.mean() + 1e-9
    # ...and on its own classes it is good
    assert spec["covered_accuracy"] == pytest.approx(float(np.mean(spec_pred[own] == y[own])))
    assert spec["covered_accuracy"] > 0.85
    assert spec["num_outputs"] == 5 and spec["label_map"] == SPECIALIST and spec["nll"] is None
    few_net, _ = load_student(digits_run["few"])
    with torch.no_grad():
        few_pred = few_net(torch.from_numpy(x)).argmax(1).numpy()
    assert spec["agreement"]["few-label"] == pytest.approx(float(np.mean(spec_pred == few_pred)))
    assert t0["num_parameters"] == keras_adapter.num_parameters and spec["latency"]["batches"][0]["median_ms"] > 0

    # ensembles of the two `teachers` (the single `teacher` stays apart, as before)
    avg, vote = res["ensembles"]
    assert (avg["method"], vote["method"]) == ("average", "majority_vote")
    assert avg["teachers"] == ["teacher0", "specialist"]
    assert avg["accuracy"] == pytest.approx(float(np.mean(((general + special) / 2).argmax(1) == y)))
    # two voters: agreement wins outright, a split goes to the larger summed probability
    votes = np.zeros((len(y), 10))
    votes[np.arange(len(y)), general.argmax(1)] += 1
    votes[np.arange(len(y)), spec_pred] += 1
    vote_pred = (votes + 1e-3 * (general + special) / 2).argmax(1)
    assert vote["accuracy"] == pytest.approx(float(np.mean(vote_pred == y)))
    assert "ece" not in vote and avg["ece"] is not None

    # the single teacher keeps its place and the student's agreement with it
    assert res["teacher"]["name"] == "teacher" and res["student"]["teacher_agreement"] > 0.5
    rows = {r["name"]: r for r in res["comparison"]}
    assert [r["role"] for r in res["comparison"]] == ["student", "baseline", "teacher", "teacher", "teacher",
                                                      "ensemble", "ensemble"]
    assert rows["specialist"]["covered_accuracy"] == spec["covered_accuracy"]
    assert rows["majority vote of teachers"]["student_agreement"] == vote["student_agreement"]
    assert "covered_accuracy" not in rows["student"]

    sc = res["scalars"]
    assert sc["accuracy"] == res["student"]["accuracy"] and sc["teacher_accuracy"] == res["teacher"]["accuracy"]
    assert sc["teacher0_student_agreement"] == t0["student_agreement"]
    assert sc["specialist_covered_accuracy"] == spec["covered_accuracy"] and "specialist_nll" not in sc
    assert sc["ensemble_average_accuracy"] == avg["accuracy"]
    assert sc["baseline_few_label_accuracy"] == res["baselines"]["few-label"]["accuracy"]
    md = res["summary_markdown"]
    assert "accuracy on own classes" in md and f"| specialist | teacher | {spec['accuracy']:.4f} |" in md
    assert f"| ensemble_majority_vote_accuracy | {vote['accuracy']:.4g} |" in md
    saved = json.loads((out / "metrics.json").read_text())
    assert [t["name"] for t in saved["teachers"]] == ["teacher0", "specialist"]
    assert saved["scalars"] == sc
    page = (out / "report.html").read_text()
    assert "majority vote of teachers" in page and "specialist accuracy" in page  # per-class table column


def test_teachers_config_names_and_endpoint_lists(digits_run, tmp_path):
    from crossdistill.errors import ConfigError
    from crossdistill.evaluate.teachers import endpoint_teachers

    cfg = _cfg(digits_run, tmp_path, teachers=["h:1", {"client": {"url": "h:2", "timeout_s": 5}, "label_map": [3, 4]},
                                               {"client": "h:3", "name": "weak"}])
    assert [t.name for t in cfg.teachers] == ["teacher0", "teacher1", "weak"]
    assert cfg.teachers[1].client.timeout_s == 5 and cfg.teachers[1].label_map == [3, 4]
    assert cfg.teachers[0].label_map is None and cfg.teachers[2].client.url == "h:3"
    with pytest.raises(ConfigError, match=r"duplicates \['a'\]"):
        _cfg(digits_run, tmp_path, teachers=[{"client": "h:1", "name": "a"}, {"client": "h:2", "name": "a"}])
    with pytest.raises(ConfigError, match="unknown key 'teachers.0.url'"):
        _cfg(digits_run, tmp_path, teachers=[{"url": "h:1"}])
    # the evaluate component's teacher_endpoints + teacher_label_maps (train-teacher outputs)
    assert endpoint_teachers(["h:1", "h:2"], [[0, 1], ["2", 3]]) == [
        {"client": {"url": "h:1"}, "label_map": [0, 1]}, {"client": {"url": "h:2"}, "label_map": [2, 3]}]
    assert endpoint_teachers(["h:1"]) == [{"client": {"url": "h:1"}}]
    with pytest.raises(ConfigError, match="1 teacher_label_maps for 2 teacher endpoints"):
        endpoint_teachers(["h:1", "h:2"], [[0, 1]])


def test_scalars_and_markdown_from_a_result():
    from crossdistill.evaluate.summary import scalar_metrics, summary_markdown

    result = {"title": "t", "student": {"name": "student", "accuracy": 0.9, "resumed": True, "spec": {"a": 1},
                                        "ece": None},
              "teacher": None, "baselines": {"few labels only": {"accuracy": 0.5}},
              "teachers": [{"name": "Spec-1", "accuracy": 0.4, "covered_accuracy": 0.95}],
              "ensembles": [{"name": "average of teachers", "method": "average", "accuracy": 0.7}],
              "comparison": [{"name": "student", "role": "student", "accuracy": 0.9, "num_parameters": 10},
                             {"name": "Spec-1", "role": "teacher", "accuracy": 0.4, "covered_accuracy": 0.95}]}
    assert scalar_metrics(result) == {"accuracy": 0.9, "baseline_few_labels_only_accuracy": 0.5,
                                      "ensemble_average_accuracy": 0.7, "spec_1_accuracy": 0.4,
                                      "spec_1_covered_accuracy": 0.95}
    md = summary_markdown(result).splitlines()
    assert md[0] == "# t" and md[2].startswith("| model | role | accuracy | accuracy on own classes |")
    assert "| Spec-1 | teacher | 0.4000 | 0.9500 |" in md[5] and "agreement with student" not in md[2]
    assert "| spec_1_covered_accuracy | 0.95 |" in md


# ---------------------------------------------------------------- one path for every teacher, in-process, label spaces

_SAME = ("accuracy", "per_class_accuracy", "confusion_matrix", "ece", "nll", "covered_accuracy", "student_agreement",
         "num_parameters", "size_bytes", "num_outputs", "label_map")


def test_inprocess_teacher_scores_like_the_served_one_alone_or_in_a_list(digits_run, served_teacher, tmp_path):
    from crossdistill.evaluate.run import run_evaluate

    common = {"export": [], "latency_repeats": 2, "latency_batch": 1}
    served = run_evaluate(_cfg(digits_run, tmp_path / "a", teacher=served_teacher["url"], **common))
    local = f"inprocess:{served_teacher['uri']}"
    alone = run_evaluate(_cfg(digits_run, tmp_path / "b", teacher=local, **common))
    listed = run_evaluate(_cfg(digits_run, tmp_path / "c", teachers=[local], **common))
    for key in _SAME:
        np.testing.assert_allclose(alone["teacher"][key], served["teacher"][key], atol=1e-6, err_msg=key)
        assert listed["teachers"][0][key] == alone["teacher"][key], key  # one teacher or a list: one path
    assert alone["teacher"]["metadata"]["platform"].startswith("inprocess ")
    assert alone["student"]["teacher_agreement"] == served["student"]["teacher_agreement"]
    assert listed["teacher"] is None and "teacher_agreement" not in listed["student"]


class Permuted(torch.nn.Module):
    """A teacher whose output j is class ``order[j]`` of the wrapped network."""

    def __init__(self, net: torch.nn.Module, order: list[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("order", torch.tensor(order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).index_select(1, self.order)


def test_teacher_outputs_map_to_the_data_classes_by_name(digits_run, served_teacher, tmp_path):
    from crossdistill.evaluate.run import run_evaluate

    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    uri = str(tmp_path / "permuted.pt")
    export.export_torchscript(Permuted(served_teacher["model"], order).eval(), export.example_input((1, 8, 8)), uri)
    common = {"export": [], "latency_repeats": 1, "latency_batch": 1}
    (tmp_path / "permuted.pt.class_names.json").write_text(json.dumps([str(c) for c in order]))
    named = run_evaluate(_cfg(digits_run, tmp_path / "named", teacher=f"inprocess:{uri}", **common))
    x, y = digits_run["test_ds"]["x"], digits_run["test_ds"]["y"]
    with torch.no_grad():
        t_pred = served_teacher["model"](torch.from_numpy(x)).argmax(1).numpy()
    assert named["teacher"]["accuracy"] == pytest.approx(float(np.mean(t_pred == y)))
    assert named["teacher"]["accuracy"] > 0.85
    assert named["teacher"]["label_map"] == order

    (tmp_path / "permuted.pt.class_names.json").write_text(json.dumps(list("abcdefghij")))
    with pytest.raises(DataError, match=r"teacher's classes \['a', 'b'.*'j'\] do not match the data's classes "
                                        r"\['0', '1'.*'9'\]"):
        run_evaluate(_cfg(digits_run, tmp_path / "bad", teachers=[f"inprocess:{uri}"], **common))
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_test_data_is_streamed_fragment_by_fragment(digits_run, tmp_path):
    """A test set of many row groups scores exactly like the same rows in one piece."""
    from crossdistill.data.shards import DatasetReader, DatasetWriter
    from crossdistill.evaluate.run import run_evaluate

    test = digits_run["test_ds"]
    y = test["y"].copy()
    y[::7] = -1  # unlabeled rows are left out
    uri = str(tmp_path / "many")
    with DatasetWriter(uri, test.meta, rows_per_shard=150, row_group_rows=32) as writer:
        writer.write(test.with_columns(y=y).columns)
    assert len(DatasetReader(uri).fragments) == 14
    res = run_evaluate(_cfg(digits_run, tmp_path / "eval", test_data=uri, export=[], latency_repeats=1))
    keep = y != -1
    with torch.no_grad():
        pred = digits_run["model"](torch.from_numpy(test["x"][keep])).argmax(1).numpy()
    assert res["student"]["num_examples"] == keep.sum()
    assert res["student"]["accuracy"] == pytest.approx(float(np.mean(pred == y[keep])))


def test_cli_ends_with_a_short_table_and_the_report_path(digits_run, tmp_path, capsys):
    from crossdistill.cli import main

    out = tmp_path / "eval"
    code = main(["evaluate", f"test_data={digits_run['test']}", f"student={digits_run['student']}", f"out={out}",
                 f"baselines={{\"few-label\": \"{digits_run['few']}\"}}", "export=[]", "latency_repeats=2",
                 "latency_batch=8"])
    printed = capsys.readouterr().out
    assert code == 0 and len(printed) < 1500 and "{" not in printed, printed
    lines = printed.strip().splitlines()
    assert lines[0].endswith("400 test examples, 10 classes")
    assert lines[1].split()[:3] == ["model", "role", "accuracy"] and "latency b=8 (ms)" in lines[1]
    saved = json.loads((out / "metrics.json").read_text())
    assert lines[2].split()[:3] == ["student", "student", f"{saved['student']['accuracy']:.4f}"]
    assert lines[3].split()[:2] == ["few-label", "baseline"]
    assert lines[-2] == f"report:  {out / 'report.html'}" and lines[-1] == f"metrics: {out / 'metrics.json'}"
