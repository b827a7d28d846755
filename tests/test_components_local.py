"""Each component, called on its own through kfp.local.SubprocessRunner, on a small digits run."""

import json
import socket
from pathlib import Path

import pytest
from kfp import dsl, local
from kfp.dsl import Dataset, Model

from crossdistill.components.evaluate.component import evaluate
from crossdistill.components.prepare_data.component import prepare_data
from crossdistill.components.pseudo_label.component import pseudo_label
from crossdistill.components.student_train.component import student_train
from crossdistill.components.teacher_serve.component import teacher_serve
from crossdistill.components.teacher_teardown.component import teacher_teardown
from crossdistill.components.train_teacher.component import train_teacher
from crossdistill.data.shards import read_dataset

JOB_ID = "component-test"


def _imported(art, cls, metadata=None):
    """kfp.local takes no artifact arguments: outputs of earlier calls enter a pipeline through an importer."""
    return dsl.importer(artifact_uri=art.path, artifact_class=cls, reimport=False, metadata=metadata or {}).output
PREFIX = "cd-test-components"


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path_factory.mktemp("kfp")))


@pytest.fixture(scope="module")
def data(runner):
    return prepare_data(dataset="digits", student_labels=20, seed=3)


@pytest.fixture(scope="module")
def served(data):
    teacher = _train(data, epochs=3)
    task = _serve(teacher, JOB_ID)
    yield teacher, task
    teacher_teardown(job_id=JOB_ID, name_prefix=PREFIX)


def _train(data, epochs: int):
    @dsl.pipeline(name="train-teacher-test")
    def pipe() -> Model:
        return train_teacher(train=_imported(data.outputs["train"], Dataset),
                             val=_imported(data.outputs["val"], Dataset), epochs=epochs).outputs["model"]

    return pipe()


def _serve(teacher, job_id: str):
    @dsl.pipeline(name="teacher-serve-test")
    def pipe() -> str:
        model = _imported(teacher.output, Model, {"file": "teacher.keras"})
        return teacher_serve(model=model, job_id=job_id, name_prefix=PREFIX).outputs["endpoint"]

    return pipe()


def _refused(endpoint: str) -> bool:
    host, port = endpoint.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


def test_prepare_data_writes_five_typed_splits(data):
    sizes = {}
    for split in ("train", "val", "test", "student", "unlabeled"):
        art = data.outputs[split]
        assert art.schema_title == "system.Dataset" and art.metadata["split"] == split
        sizes[split] = len(read_dataset(art.path))
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797
    assert sizes["student"] == sizes["train"] and sizes["unlabeled"] == sizes["train"] - 20
    labeled = (read_dataset(data.outputs["student"].path)["y"] >= 0).sum()
    assert labeled == 20


def test_train_teacher_and_serve(served):
    teacher, task = served
    model = teacher.output
    assert (Path(model.path) / "teacher.keras").is_file()
    assert model.metadata["file"] == "teacher.keras"
    assert not _refused(task.output)


def _label(data, endpoint: str, shard_index: int, shards: list):
    @dsl.pipeline(name="pseudo-label-test")
    def pipe() -> Dataset:
        return pseudo_label(data=_imported(data.outputs["test"], Dataset), teacher_endpoint=endpoint,
                            shard_index=shard_index, shards=shards, top_k=3, teacher_name="t").outputs["soft_labels"]

    return pipe()


def test_pseudo_label_shards_split_the_data(data, served):
    """Each of the two shards labels its own part: together every test id once, top-3 each."""
    _, task = served
    parts = [read_dataset(_label(data, task.output, i, [0, 1]).output.path) for i in (0, 1)]
    test_ids = read_dataset(data.outputs["test"].path).ids
    labelled = [i for part in parts for i in part.ids]
    assert sorted(labelled) == sorted(test_ids)
    for part in parts:
        assert part["topk_indices"].shape == (len(part), 3)


def test_pseudo_label_rejects_a_shard_outside_the_list(data, served):
    _, task = served
    with pytest.raises(RuntimeError):
        _label(data, task.output, 2, [0, 1])


def test_student_train_online_then_evaluate(data, served, tmp_path):
    _, task = served
    endpoint = task.output
    fast_eval = json.dumps({"latency_repeats": 2, "latency_warmup": 0, "export": ["onnx"]})

    @dsl.pipeline(name="student-evaluate-test")
    def pipe():
        student = student_train(train_data=_imported(data.outputs["student"], Dataset), mode="online",
                                teacher_endpoint=endpoint, epochs=1)
        evaluate(test_data=_imported(data.outputs["test"], Dataset), student=student.outputs["model"],
                 teacher_endpoint=endpoint, config_json=fast_eval)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    pipe()
    [train_out] = tmp_path.glob("*/student-train/executor_output.json")
    arts = json.loads(train_out.read_text())["artifacts"]
    model = arts["model"]["artifacts"][0]
    assert (Path(model["uri"]) / model["metadata"]["file"]).is_file()
    assert arts["metrics"]["artifacts"][0]["metadata"]["steps"] > 0
    [eval_out] = tmp_path.glob("*/evaluate/executor_output.json")
    arts = {k: v["artifacts"][0] for k, v in json.loads(eval_out.read_text())["artifacts"].items()}
    metrics = arts["metrics"]["metadata"]
    assert 0 <= metrics["accuracy"] <= 1 and metrics["teacher_accuracy"] > 0.5
    cm = arts["confusion"]["metadata"]["confusionMatrix"]
    assert len(cm["rows"]) == 10 and sum(sum(r["row"]) for r in cm["rows"]) == metrics["num_examples"]
    assert "<html" in Path(arts["report"]["uri"]).read_text().lower()
    assert "| student |" in Path(arts["summary"]["uri"]).read_text()
    assert (Path(arts["exported"]["uri"]) / "metrics.json").is_file()


def test_teardown_stops_the_server(served):
    teacher, _ = served
    endpoint = _serve(teacher, "teardown-test").output
    assert not _refused(endpoint)
    teacher_teardown(job_id="teardown-test", name_prefix=PREFIX)
    assert _refused(endpoint)
    teacher_teardown(job_id="teardown-test", name_prefix=PREFIX)  # nothing left: still succeeds
