"""label_dataset: the one loop that asks a teacher (served, in-process or a stored table) about a dataset."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from crossdistill.data.shards import DatasetReader, DatasetWriter, read_dataset
from crossdistill.errors import DataError
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig
from crossdistill.teacher.labeling import StoredTeacher, label_dataset, open_teacher
from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label


class CountingReader(DatasetReader):
    """A real reader that remembers which fragments it read."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.reads: list[int] = []

    def read(self, frag, columns=None):
        self.reads.append(self.fragments.index(frag))
        return super().read(frag, columns)


@pytest.fixture(scope="module")
def many_fragments(digits, tmp_path_factory):
    """600 digits in 3 shard files of 5 row groups of 40 rows: 15 fragments."""
    uri = str(tmp_path_factory.mktemp("labeling") / "data")
    part = digits.take(np.arange(600))
    with DatasetWriter(uri, part.meta, rows_per_shard=200, row_group_rows=40) as writer:
        writer.write(part.columns)
    return {"uri": uri, "data": part}


def test_fragments_come_back_in_order_with_many_requests_in_flight(served_keras_teacher, keras_adapter,
                                                                   many_fragments):
    reader = DatasetReader(many_fragments["uri"])
    with TeacherClient(TeacherClientConfig(url=served_keras_teacher.grpc, max_in_flight=6)) as client:
        parts = list(label_dataset(client, reader, batch_size=16, columns=("y",)))
    assert [p.index for p in parts] == list(range(15)) and [p.fragment for p in parts] == reader.fragments
    data = many_fragments["data"]
    np.testing.assert_array_equal(np.concatenate([p.ids for p in parts]), data.ids)
    np.testing.assert_array_equal(np.concatenate([p.columns["y"] for p in parts]), data["y"])
    logits = np.concatenate([p.outputs["logits"] for p in parts])
    np.testing.assert_allclose(logits, keras_adapter.predict(data["x"])["logits"], rtol=1e-5, atol=1e-5)
    assert parts[0].input_shape == (1, 8, 8)


def test_labelling_streams_a_few_fragments_ahead_only(keras_teacher, many_fragments):
    """Handing on fragment 0 needs fragment 0 read, not the dataset: reading stays a few fragments ahead."""
    reader = CountingReader(many_fragments["uri"])
    teacher = open_teacher(TeacherClientConfig(url=f"inprocess:{keras_teacher['path']}"))
    parts = label_dataset(teacher, reader, reader.fragments[3:9], batch_size=40)
    first = next(parts)
    assert first.fragment == reader.fragments[3] and reader.reads == [3]
    assert [p.fragment.start for p in parts] == [f.start for f in reader.fragments[4:9]]
    assert reader.reads == [3, 4, 5, 6, 7, 8]  # only the fragments asked for, each once


def test_a_stored_table_answers_by_id_without_inputs(served_keras_teacher, many_fragments, tmp_path):
    stored = run_pseudo_label(PseudoLabelConfig(data=many_fragments["uri"], teacher_url=served_keras_teacher.grpc,
                                                out=str(tmp_path / "table"), top_k=3, progress=False))
    table = read_dataset(stored)
    teacher = StoredTeacher(stored)
    assert teacher.metadata()["num_classes"] == 10 and teacher.metadata()["mode"] == "topk"
    pick = np.array([599, 3, 250, 41, 0])
    out = teacher.infer(table.ids[pick])
    np.testing.assert_array_equal(out.topk_indices, table["topk_indices"][pick])
    np.testing.assert_array_equal(out.topk_logprobs, table["topk_logprobs"][pick])
    # through label_dataset: a dataset of ids only (no inputs) is enough
    ids_only = str(tmp_path / "ids")
    with DatasetWriter(ids_only, {}, row_group_rows=64) as writer:
        writer.write({"id": table.ids[::-1].copy()})
    parts = list(label_dataset(teacher, DatasetReader(ids_only), batch_size=50))
    np.testing.assert_array_equal(np.concatenate([p.outputs["topk_indices"] for p in parts]),
                                  table["topk_indices"][::-1])
    with pytest.raises(DataError, match=r"table has no answer for 1 example id\(s\) \(first: \[12345\]\)"):
        teacher.infer(np.array([3, 12345]))


def test_no_other_module_loops_over_a_teacher_stream():
    """Asking a teacher about a dataset is written once (labeling.py); online training streams its own batches."""
    root = Path(__file__).resolve().parents[1] / "src" / "crossdistill"
    callers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "stream" \
                    and not (isinstance(node.func.value, ast.Name) and node.func.value.id in ("self", "request")):
                callers.add(path.relative_to(root).as_posix())
    assert callers <= {"teacher/labeling.py", "train/targets.py", "train/trainer.py"}, callers
    assert "teacher/labeling.py" in callers
