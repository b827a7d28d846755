"""The co-located teacher (``inprocess:<uri>``) answers exactly like the served one."""

import numpy as np
import pytest

from crossdistill.data.shards import read_dataset
from crossdistill.errors import ModelFormatError
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig
from crossdistill.teacher.colocated import ColocatedTeacher, open_teacher
from crossdistill.train.trainer import StudentTrainConfig, train_student


@pytest.mark.parametrize("options", [{}, {"top_k": 3, "temperature": 2.0}, {"fp16": True}])
def test_inprocess_and_served_teacher_agree(keras_teacher, served_keras_teacher, digits, options):
    ids, x = digits.ids[:50], digits["x"][:50]
    with TeacherClient(TeacherClientConfig(url=served_keras_teacher.grpc, **options)) as remote, \
            open_teacher(TeacherClientConfig(url=f"inprocess:{keras_teacher['path']}", **options)) as local:
        assert isinstance(local, ColocatedTeacher)
        a, b = remote.infer(ids, x), local.infer(ids, x)
    np.testing.assert_array_equal(a.ids, b.ids)
    for field in ("logits", "topk_logprobs"):
        ra, rb = getattr(a, field), getattr(b, field)
        assert (ra is None) == (rb is None)
        if ra is not None:
            assert ra.dtype == rb.dtype
            np.testing.assert_allclose(ra.astype(np.float32), rb.astype(np.float32), rtol=1e-3, atol=1e-3)
    if a.topk_indices is not None:
        np.testing.assert_array_equal(a.topk_indices, b.topk_indices)


def test_student_trains_against_an_inprocess_teacher(keras_teacher, digits_uri, tmp_path):
    cfg = StudentTrainConfig.parse({
        "train_data": digits_uri, "out": str(tmp_path / "s"), "mode": "online", "epochs": 3, "lr": 3e-3,
        "teacher": {"url": f"inprocess:{keras_teacher['path']}"}, "threads": 1, "progress": False})
    result = train_student(cfg)
    assert result.finished and result.samples_seen == 3 * len(read_dataset(digits_uri))
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_inprocess_teacher_of_the_wrong_format_is_named(tmp_path):
    bad = tmp_path / "teacher.onnx"
    bad.write_bytes(b"definitely not a model")
    with pytest.raises(ModelFormatError, match="teacher.onnx"):
        open_teacher(TeacherClientConfig(url=f"inprocess:{bad}"))


def test_grouping_batches_per_request_trains_the_same_student(served_keras_teacher, digits_uri, tmp_path):
    """rpc_batches only changes how batches travel, not what the student learns from."""
    from crossdistill.train import load_student

    def run(group: int):
        cfg = StudentTrainConfig.parse({
            "train_data": digits_uri, "out": str(tmp_path / f"g{group}"), "mode": "online", "epochs": 2,
            "teacher": {"url": served_keras_teacher.grpc}, "rpc_batches": group, "threads": 1,
            "progress": False})
        result = train_student(cfg)
        return result, load_student(result.model_uri)[0].state_dict()

    (one, w1), (three, w3) = run(1), run(3)
    assert (one.steps, one.samples_seen) == (three.steps, three.samples_seen)
    for k in w1:
        np.testing.assert_allclose(w1[k].numpy(), w3[k].numpy(), atol=1e-4)
