"""Pseudo-labeling through a real served teacher: shards, soft-label format, nothing written on failure."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from crossdistill import storage
from crossdistill.data.shards import read_dataset, write_dataset
from crossdistill.errors import ConfigError, TeacherResponseError, TeacherUnavailableError
from crossdistill.teacher.protocol import topk_logprobs
from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label


def test_two_shards_concatenate_to_every_id_once(served_keras_teacher, keras_adapter, digits, digits_uri, tmp_path):
    outs = []
    for shard in range(2):
        cfg = PseudoLabelConfig(data=digits_uri, teacher_url=served_keras_teacher.grpc, out=str(tmp_path / f"s{shard}"),
                                batch_size=100, max_in_flight=3, shard_index=shard, num_shards=2, progress=False)
        outs.append(run_pseudo_label(cfg))
    parts = [read_dataset(u) for u in outs]
    assert len(parts[0]) == 899 and len(parts[1]) == 898
    assert set(parts[0].ids % 2) == {0} and set(parts[1].ids % 2) == {1}  # digits ids are positions
    both = read_dataset(outs)
    np.testing.assert_array_equal(np.sort(both.ids), digits.ids)
    assert both.meta["mode"] == "dense" and both.meta["num_classes"] == 10 and both.meta["teacher"] == "teacher"
    order = np.argsort(both.ids)
    np.testing.assert_allclose(both["logits"][order], keras_adapter.predict(digits["x"])["logits"],
                               rtol=1e-5, atol=1e-5)


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
    x[500, 0, 0, 0] = -1.0  # the batch starting at row 500 comes back as NaN
    src = write_dataset(str(tmp_path / "src"), data.with_columns(x=x))
    out = str(tmp_path / "labels")
    cfg = PseudoLabelConfig(data=src, teacher_url=quirky_teacher["endpoint"].grpc, out=out, batch_size=100,
                            max_in_flight=2, progress=False)
    with pytest.raises(TeacherResponseError, match="tensor 'logits'.*NaN"):
        run_pseudo_label(cfg)
    assert not storage.exists(out)
