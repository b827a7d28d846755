"""Pseudo-labeling through a real served (or in-process) teacher: parts, streaming, soft-label format, failures."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from crossdistill import storage
from crossdistill.data.shards import DatasetReader, DatasetWriter, read_dataset, write_dataset
from crossdistill.errors import ConfigError, TeacherResponseError, TeacherUnavailableError
from crossdistill.teacher.protocol import topk_logprobs
from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label


@pytest.fixture(scope="module")
def fragmented(digits, tmp_path_factory):
    """1,600 digits as 4 shard files of 4 row groups (100 rows each): 16 fragments."""
    uri = str(tmp_path_factory.mktemp("fragmented") / "data")
    part = digits.take(np.arange(1600))
    with DatasetWriter(uri, part.meta, rows_per_shard=400, row_group_rows=100) as writer:
        writer.write(part.columns)
    return {"uri": uri, "data": part}


def _label(url, data, out, shard=0, shards=1, **kw):
    return run_pseudo_label(PseudoLabelConfig(data=data, teacher_url=url, out=out, batch_size=64, max_in_flight=3,
                                              shard_index=shard, num_shards=shards, progress=False, **kw))


def test_shards_partition_the_input_in_order_fragment_for_fragment(served_keras_teacher, keras_adapter, fragmented,
                                                                     tmp_path):
    outs = [_label(served_keras_teacher.grpc, fragmented["uri"], str(tmp_path / f"s{i}"), i, 3, out_shards=2)
            for i in range(3)]
    inputs, labels = DatasetReader(fragmented["uri"]), DatasetReader(outs)
    # every input row once, at its own global row: the soft labels concatenate in input order
    np.testing.assert_array_equal(read_dataset(outs).ids, fragmented["data"].ids)
    # ...in one row group per input fragment, so both read in step fragment by fragment
    assert [(f.start, f.num_rows) for f in labels.fragments] == [(f.start, f.num_rows) for f in inputs.fragments]
    parts = [DatasetReader(u) for u in outs]
    assert [len(p) for p in parts] == [500, 600, 500] and sum(len(p.manifests[0]["shards"]) for p in parts) == 6
    covered = [p.meta["input_fragments"] for p in parts]
    assert covered == [[0, 5], [5, 11], [11, 16]] and parts[1].meta["input_rows"] == [500, 1100]
    meta = parts[0].meta
    assert (meta["mode"], meta["num_classes"], meta["temperature"], meta["teacher"]) == ("dense", 10, 1.0, "teacher")
    assert meta["class_names"] is None  # the served Keras teacher declares none
    np.testing.assert_allclose(read_dataset(outs)["logits"], keras_adapter.predict(fragmented["data"]["x"])["logits"],
                               rtol=1e-5, atol=1e-5)


def test_a_shard_reads_only_its_own_fragments(served_keras_teacher, fragmented, tmp_path):
    """Task 2 of 4 succeeds with every input shard but its own deleted: it never touches the others."""
    import shutil

    copy = tmp_path / "only-shard-2"
    shutil.copytree(fragmented["uri"], copy)
    for name in ("shard-00000.parquet", "shard-00001.parquet", "shard-00003.parquet"):
        (copy / name).unlink()
    out = DatasetReader(_label(served_keras_teacher.grpc, str(copy), str(tmp_path / "labels"), 2, 4))
    np.testing.assert_array_equal(out.to_dataset().ids, np.arange(800, 1200))
    assert out.meta["input_fragments"] == [8, 12] and out.meta["input_num_fragments"] == 16


def test_inprocess_teacher_labels_like_the_served_one(keras_teacher, served_keras_teacher, fragmented, tmp_path):
    inproc = read_dataset(_label(f"inprocess:{keras_teacher['path']}", fragmented["uri"], str(tmp_path / "in"), 1, 2))
    served = read_dataset(_label(served_keras_teacher.grpc, fragmented["uri"], str(tmp_path / "srv"), 1, 2))
    np.testing.assert_array_equal(inproc.ids, served.ids)
    np.testing.assert_allclose(inproc["logits"], served["logits"], rtol=1e-5, atol=1e-5)
    assert inproc.meta["teacher_platform"].startswith("inprocess ") and inproc.meta["num_classes"] == 10


def test_topk_soft_labels_with_layers(served_keras_teacher, keras_adapter, digits, digits_uri, tmp_path):
    cfg = PseudoLabelConfig(data=digits_uri, teacher_url=served_keras_teacher.grpc, out=f"memory://{tmp_path}/topk",
                            top_k=4, temperature=3.0, fp16=True, layers=["dense_0"], batch_size=512,
                            progress=False, out_shards=2)
    ds = read_dataset(run_pseudo_label(cfg))
    assert set(ds.columns) == {"id", "topk_logprobs", "topk_indices", "layer/dense_0"}
    assert ds.meta["mode"] == "topk" and ds.meta["temperature"] == 3.0 and ds.meta["num_classes"] == 10
    np.testing.assert_array_equal(ds.ids, digits.ids)
    ref_lp, ref_idx = topk_logprobs(keras_adapter.predict(digits["x"])["logits"], 4, 3.0)
    agree = (ds["topk_indices"] == ref_idx).mean()
    assert agree > 0.99  # FP16 may swap near-ties
    np.testing.assert_allclose(ds["topk_logprobs"], ref_lp, atol=2e-2)
    assert ds["layer/dense_0"].shape == (len(digits), 64)


def test_shard_index_must_be_below_num_shards():
    with pytest.raises(ConfigError, match="shard_index=2 must be < num_shards=2"):
        PseudoLabelConfig.parse({"data": "d", "teacher_url": "h:1", "out": "o", "shard_index": 2, "num_shards": 2})


def test_unreachable_teacher_writes_nothing(digits_uri, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "never")
    cfg = PseudoLabelConfig(data=digits_uri, teacher_url=f"127.0.0.1:{port}", out=out, ready_timeout_s=0.5,
                            progress=False)
    with pytest.raises(TeacherUnavailableError, match=f"127.0.0.1:{port}"):
        run_pseudo_label(cfg)
    assert not storage.exists(out)


def test_a_bad_batch_midway_writes_nothing(quirky_teacher, digits, tmp_path):
    data = digits.take(np.arange(600))
    x = data["x"].copy()
    x[:, 0, 0, 0] = 0.0
    x[500:, 0, 0, 0] = -1.0  # whichever batch starts in rows 500-599 (after good ones) comes back as NaN
    src = write_dataset(str(tmp_path / "src"), data.with_columns(x=x))
    out = str(tmp_path / "labels")
    cfg = PseudoLabelConfig(data=src, teacher_url=quirky_teacher["endpoint"].grpc, out=out, batch_size=100,
                            max_in_flight=2, progress=False)
    with pytest.raises(TeacherResponseError, match="tensor 'logits'.*NaN"):
        run_pseudo_label(cfg)
    assert not storage.exists(storage.join(out, "manifest.json"))  # nothing that looks complete


def test_more_tasks_than_fragments_leaves_empty_parts_that_read_back_with_the_others(
        served_keras_teacher, digits, tmp_path):
    small = digits.take(np.arange(300))
    src = write_dataset(str(tmp_path / "src"), small)
    assert [f.num_rows for f in DatasetReader(src).fragments] == [256, 44]  # row groups of at least 256 rows
    outs = [_label(served_keras_teacher.grpc, src, str(tmp_path / f"s{i}"), i, 3) for i in range(3)]
    assert [len(DatasetReader(u)) for u in outs] == [0, 256, 44]
    both = read_dataset(outs)
    np.testing.assert_array_equal(both.ids, small.ids)
    assert both["logits"].shape == (len(small), 10)
