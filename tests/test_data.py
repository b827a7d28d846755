"""Sharded datasets, real sources and splits."""

import gzip
import json
import struct

import numpy as np
import pytest

from crossdistill import storage
from crossdistill.data import Dataset, read_dataset, write_dataset
from crossdistill.data.shards import MANIFEST
from crossdistill.data.sources import load_digits, load_fashion_mnist, read_idx
from crossdistill.data.splits import PrepareDataConfig, prepare_data, split_dataset
from crossdistill.errors import DataError


def _toy(n=10):
    rng = np.random.default_rng(0)
    return Dataset({"id": np.arange(100, 100 + n, dtype=np.int64),
                    "x": rng.random((n, 1, 3, 2), dtype=np.float32),
                    "y": rng.integers(0, 4, n)}, {"num_classes": 4})


@pytest.mark.parametrize("root", ["file", "memory"])
def test_round_trip_keeps_ids_shapes_and_meta(tmp_path, root):
    uri = str(tmp_path / "ds") if root == "file" else f"memory://rt-{id(tmp_path)}/ds"
    data = _toy(11)
    write_dataset(uri, data, num_shards=3)
    back = read_dataset(uri)
    assert back.meta == {"num_classes": 4}
    for col in ("id", "x", "y"):
        np.testing.assert_array_equal(back[col], data[col])
    assert back["x"].dtype == np.float32 and back["x"].shape == (11, 1, 3, 2)
    assert len(storage.listdir(uri)) == 4  # three shards + manifest


def test_multi_dimensional_columns_are_one_fixed_size_cell_per_row_and_old_list_columns_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from crossdistill.data.shards import DatasetReader

    data = _toy(11)
    uri = write_dataset(str(tmp_path / "ds"), data)
    shard = next((tmp_path / "ds").glob("shard-*.parquet"))
    table = pq.read_table(shard)
    assert table.schema.field("x").type == pa.binary(3 * 2 * 4)  # float32 [1, 3, 2], little-endian bytes
    # A dataset written by an earlier version holds the same values as fixed_size_list<float>[6]
    flat = pa.array(data["x"].reshape(-1))
    old = table.set_column(table.schema.get_field_index("x"), "x", pa.FixedSizeListArray.from_arrays(flat, 6))
    pq.write_table(old, shard)
    back = DatasetReader(uri).to_dataset()
    np.testing.assert_array_equal(back["x"], data["x"])
    assert back["x"].flags.writeable


def test_reading_several_datasets_concatenates_them(tmp_path):
    data = _toy(10)
    write_dataset(str(tmp_path / "a"), data.take(np.arange(4)))
    write_dataset(str(tmp_path / "b"), data.take(np.arange(4, 10)))
    both = read_dataset([str(tmp_path / "a"), str(tmp_path / "b")])
    np.testing.assert_array_equal(both.ids, data.ids)


def test_missing_manifest_is_an_unfinished_dataset(tmp_path):
    write_dataset(str(tmp_path / "ds"), _toy())
    (tmp_path / "ds" / MANIFEST).unlink()
    with pytest.raises(DataError, match="manifest.json is missing.*unfinished"):
        read_dataset(str(tmp_path / "ds"))


def test_missing_shard_is_named(tmp_path):
    write_dataset(str(tmp_path / "ds"), _toy(), num_shards=2)
    (tmp_path / "ds" / "shard-00001.parquet").unlink()
    with pytest.raises(DataError, match="shard-00001.parquet is missing"):
        read_dataset(str(tmp_path / "ds"))


def test_corrupt_shard_is_named(tmp_path):
    write_dataset(str(tmp_path / "ds"), _toy(), num_shards=2)
    shard = tmp_path / "ds" / "shard-00000.parquet"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="shard-00000.parquet is corrupt"):
        read_dataset(str(tmp_path / "ds"))
    # Even when the checksum is not checked, a damaged Parquet file is reported by name.
    shard.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="shard-00000.parquet is corrupt"):
        read_dataset(str(tmp_path / "ds"), verify=False)


def test_unknown_column_and_ragged_columns_are_errors(tmp_path):
    write_dataset(str(tmp_path / "ds"), _toy())
    with pytest.raises(DataError, match="no column 'logits'"):
        read_dataset(str(tmp_path / "ds"), columns=["logits"])
    with pytest.raises(DataError, match="column 'y' has 3 rows, expected 4"):
        Dataset({"id": np.arange(4), "y": np.arange(3)})


def test_digits_is_real_and_ids_are_stable():
    d = load_digits()
    assert len(d) == 1797 and d["x"].shape == (1797, 1, 8, 8)
    assert 0.0 <= d["x"].min() and d["x"].max() <= 1.0
    assert set(np.unique(d["y"])) == set(range(10))


def _idx(path, arr, code):
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.tobytes()))


def test_fashion_mnist_reads_idx_files_from_any_folder(tmp_path):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 6), ("t10k", 3)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8), 0x08)
    d = load_fashion_mnist(str(tmp_path))
    assert d["x"].shape == (9, 1, 28, 28) and list(d.ids) == list(range(9))
    assert d.meta["official_test_from_id"] == 6


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x08, 1, 10) + b"\x01\x02")
    with pytest.raises(DataError, match="bad-idx1-ubyte: IDX header says shape"):
        read_idx(str(path))


@pytest.mark.skipif(not storage.exists("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_has_70000_images():
    labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))


def test_splits_are_disjoint_and_student_keeps_few_stratified_labels(tmp_path):
    out = prepare_data(PrepareDataConfig(out=str(tmp_path), student_labels=64, seed=3))
    parts = {k: read_dataset(v) for k, v in out.items()}
    train, val, test = (set(parts[k].ids) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 1797
    student = parts["student"]
    assert set(student.ids) == train
    labeled = student["y"] >= 0
    assert labeled.sum() == 64
    assert np.bincount(student["y"][labeled], minlength=10).min() >= 6  # spread over all ten classes
    assert set(parts["unlabeled"].ids) == set(student.ids[~labeled])
    assert "y" not in parts["unlabeled"]


def test_split_is_deterministic_per_seed():
    data = load_digits()
    a = split_dataset(data, PrepareDataConfig(seed=5))
    b = split_dataset(data, PrepareDataConfig(seed=5))
    c = split_dataset(data, PrepareDataConfig(seed=6))
    np.testing.assert_array_equal(a["test"].ids, b["test"].ids)
    assert not np.array_equal(a["test"].ids, c["test"].ids)


def test_failed_atomic_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with storage.atomic_open(str(target)) as fh:
            fh.write(b"{partial")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    storage.write_text(str(target), json.dumps({"ok": 1}))
    assert json.loads(target.read_text()) == {"ok": 1}
