"""`import-data`: every format in, a crossdistill dataset out; bad input named and never half-written."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crossdistill import storage
from crossdistill.cli import main
from crossdistill.data.importing import ImportDataConfig, import_data
from crossdistill.data.preprocess import Preprocessor
from crossdistill.data.shards import MANIFEST, DatasetReader, read_dataset
from crossdistill.errors import ConfigError, DataError


def _import(**cfg):
    return import_data(ImportDataConfig(**cfg))


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _pixels(seed: int, shape=(6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ formats
def test_csv_with_string_labels_and_empty_cells(tmp_path):
    src = tmp_path / "flowers.csv"
    src.write_text("petal,sepal,species\n1.5,2,setosa\n3,4,\n5,6.25,virginica\n7,8,setosa\n9,10,versicolor\n")
    summary = _import(source=str(src), label="species", out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    assert ds.meta["class_names"] == ["setosa", "versicolor", "virginica"]
    assert ds.meta["num_classes"] == 3 and ds.meta["features"] == ["petal", "sepal"]
    np.testing.assert_array_equal(ds["id"], np.arange(5))
    np.testing.assert_array_equal(ds["y"], [0, -1, 2, 0, 1])
    np.testing.assert_array_equal(ds["x"], np.array([[1.5, 2], [3, 4], [5, 6.25], [7, 8], [9, 10]], np.float32))
    assert ds["x"].dtype == np.float32
    assert summary["rows"] == 5 and summary["labeled"] == 4 and summary["columns"] == ["id", "x", "y"]
    assert summary["datasets"] == {"dataset": {"uri": str(tmp_path / "ds"), "rows": 5, "labeled": 4}}


def test_parquet_integer_labels_with_gaps_ids_and_list_features(tmp_path):
    labels = [0, 2, 5, 7, 9, 5, None]
    feats = [[float(i), float(i) * 2, -1.0] for i in range(7)]
    pq.write_table(pa.table({"key": [70, 71, 72, 73, 74, 75, 76], "emb": feats, "digit": labels}),
                   tmp_path / "part.parquet")
    _import(source=str(tmp_path / "part.parquet"), label="digit", id="key", features="emb",
            out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    assert ds.meta["class_names"] == ["0", "2", "5", "7", "9"] and ds.meta["num_classes"] == 5
    np.testing.assert_array_equal(ds["y"], [0, 1, 2, 3, 4, 2, -1])
    np.testing.assert_array_equal(ds["id"], np.arange(70, 77))
    np.testing.assert_array_equal(ds["x"], np.array(feats, np.float32))


def test_integer_labels_sort_numerically_across_files_of_a_folder(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(pa.table({"a": [1.0, 2.0], "y": [10, 9]}), folder / "p0.parquet")
    pq.write_table(pa.table({"a": [3.0, 4.0], "y": [100, 9]}), folder / "p1.parquet")
    _import(source=str(folder), label="y", out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    assert ds.meta["class_names"] == ["9", "10", "100"]
    np.testing.assert_array_equal(ds["y"], [1, 0, 2, 0])
    np.testing.assert_array_equal(ds["x"][:, 0], [1, 2, 3, 4])


def test_json_lines(tmp_path):
    rows = [{"a": 1, "b": 0.5, "label": "no"}, {"a": 2, "b": 1.5, "label": None}, {"a": 3, "b": 2.5, "label": "yes"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _import(source=str(tmp_path / "d.jsonl"), label="label", features=["b", "a"], out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    assert ds.meta["class_names"] == ["no", "yes"] and ds.meta["features"] == ["b", "a"]
    np.testing.assert_array_equal(ds["x"], [[0.5, 1], [1.5, 2], [2.5, 3]])
    np.testing.assert_array_equal(ds["y"], [0, -1, 1])


def test_npy_pixels_stay_uint8_with_labels_and_ids_beside_them(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (9000, 1, 4, 4), dtype=np.uint8)
    y = np.arange(9000) % 3
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "ids.npy", np.arange(9000) * 2)
    _import(source=str(tmp_path / "x.npy"), label="y.npy", id=str(tmp_path / "ids.npy"), out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    assert ds["x"].dtype == np.uint8
    np.testing.assert_array_equal(ds["x"], x)
    np.testing.assert_array_equal(ds["y"], y)
    np.testing.assert_array_equal(ds["id"], np.arange(9000) * 2)
    assert ds.meta["preprocess"] == {"scale": 1 / 255}
    np.testing.assert_allclose(Preprocessor(ds.meta)({"x": ds["x"][:2]}), x[:2] / 255.0, rtol=1e-6)


def test_npz_arrays_by_key_without_labels(tmp_path):
    feats = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float64)
    np.savez_compressed(tmp_path / "d.npz", feats=feats, other=np.zeros(2))
    summary = _import(source=str(tmp_path / "d.npz"), features="feats", out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    assert "y" not in ds and summary["columns"] == ["id", "x"] and summary["class_names"] == []
    np.testing.assert_allclose(ds["x"], feats.astype(np.float32))


def test_image_folder_keeps_encoded_bytes_and_decodes_when_read(tmp_path, monkeypatch):
    root = tmp_path / "pets"
    images = {}
    for k, cls in enumerate(["dog", "cat", "cat", "bird"]):
        (root / cls).mkdir(parents=True, exist_ok=True)
        images[f"{cls}/{k}.png"] = _pixels(k)
        (root / cls / f"{k}.png").write_bytes(_png(images[f"{cls}/{k}.png"]))
    (root / "cat" / "notes.txt").write_text("not an image")
    summary = _import(source=str(root), out=str(tmp_path / "ds"))
    assert summary["format"] == "imagefolder" and summary["columns"] == ["id", "image", "y"]
    reader = DatasetReader(str(tmp_path / "ds"))
    assert reader.spec["image"]["dtype"] == "binary"
    ds = reader.to_dataset()
    assert ds.meta["class_names"] == ["bird", "cat", "dog"]
    assert ds.meta["preprocess"] == {"kind": "image", "size": [6, 5], "channels": 1, "scale": 1 / 255}
    order = sorted(images)  # bird/3, cat/1, cat/2, dog/0: sorted paths are the ids
    np.testing.assert_array_equal(ds["y"], [0, 1, 1, 2])
    assert [bytes(b) for b in ds["image"]] == [(root / p).read_bytes() for p in order]
    x = Preprocessor(ds.meta)(ds.columns)
    assert x.shape == (4, 1, 6, 5) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0] * 255, np.stack([images[p] for p in order]), atol=1e-3)
    monkeypatch.chdir(tmp_path)  # a relative source names the same classes
    assert _import(source="./pets/", out="again")["class_names"] == ["bird", "cat", "dog"]


def test_webdataset_tar_shards(tmp_path):
    import webdataset as wds

    pixels = {}
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"train-{shard}.tar")) as sink:
            for k in range(3):
                key = f"s{shard}{k}"
                pixels[key] = _pixels(10 * shard + k, (4, 4, 3))
                sink.write({"__key__": key, "png": _png(pixels[key]), "cls": str(shard * 3 + k),
                            "json": {"uid": 500 + 10 * shard + k}})
    _import(source=str(tmp_path / "train-*.tar"), label="cls", id="uid", out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    assert ds.meta["class_names"] == [str(i) for i in range(6)]
    np.testing.assert_array_equal(ds["y"], np.arange(6))
    np.testing.assert_array_equal(ds["id"], [500, 501, 502, 510, 511, 512])
    assert ds.meta["preprocess"]["channels"] == 3
    x = Preprocessor(ds.meta)(ds.columns)
    np.testing.assert_allclose(x[4].transpose(1, 2, 0) * 255, pixels["s11"], atol=1e-3)


def test_unlabeled_webdataset_samples_with_an_image_only(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "u.tar")) as sink:
        for k in range(3):
            sink.write({"__key__": f"k{k}", "jpg": _png(_pixels(k))})  # mislabelled extension: Pillow sniffs
    summary = _import(source=str(tmp_path / "u.tar"), out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    assert summary["columns"] == ["id", "image"] and "y" not in ds and len(ds) == 3
    assert "class_names" not in ds.meta


def test_sources_and_outputs_at_any_fsspec_uri():
    root = f"memory://import-{id(object())}"
    storage.write_text(f"{root}/src/d.csv", "a,b,l\n1,2,x\n3,4,y\n")
    storage.write_bytes(f"{root}/src/img/c1/a.png", _png(_pixels(0)))
    storage.write_bytes(f"{root}/src/img/c2/b.png", _png(_pixels(1)))
    _import(source=f"{root}/src/d.csv", label="l", out=f"{root}/csv")
    np.testing.assert_array_equal(read_dataset(f"{root}/csv")["x"], [[1, 2], [3, 4]])
    _import(source=f"{root}/src/img", out=f"{root}/img", holdout={"test": 0.5})
    parts = [read_dataset(f"{root}/img/{p}") for p in ("train", "test")]
    assert sorted(np.concatenate([p["y"] for p in parts]).tolist()) == [0, 1]


def test_hugging_face_dataset_keeps_its_class_label_names(tmp_path):
    import datasets

    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["zebra", "ant"]),
                               "n": datasets.Value("int64")})
    imgs = [_pixels(i) for i in range(3)]
    hf = datasets.Dataset.from_dict({"img": [{"bytes": _png(p), "path": None} for p in imgs],
                                     "label": [1, -1, 0], "n": [3, 4, 5]}, features=feats)
    hf.save_to_disk(str(tmp_path / "hf"))
    summary = _import(source=str(tmp_path / "hf"), label="label", id="n", features="img", out=str(tmp_path / "ds"))
    assert summary["format"] == "hf"
    ds = read_dataset(str(tmp_path / "ds"))
    assert ds.meta["class_names"] == ["zebra", "ant"]  # the declared order, not sorted
    np.testing.assert_array_equal(ds["y"], [1, -1, 0])
    np.testing.assert_array_equal(ds["id"], [3, 4, 5])
    np.testing.assert_allclose(Preprocessor(ds.meta)(ds.columns)[:, 0] * 255, np.stack(imgs), atol=1e-3)


def test_hugging_face_images_kept_as_paths_and_dataset_dicts(tmp_path):
    import datasets

    (tmp_path / "a.png").write_bytes(_png(_pixels(4)))
    hf = datasets.Dataset.from_dict({"img": [{"bytes": None, "path": str(tmp_path / "a.png")}]},
                                    features=datasets.Features({"img": datasets.Image()}))
    hf.save_to_disk(str(tmp_path / "hf"))
    _import(source=str(tmp_path / "hf"), out=str(tmp_path / "ds"))
    assert bytes(read_dataset(str(tmp_path / "ds"))["image"][0]) == (tmp_path / "a.png").read_bytes()
    datasets.DatasetDict({"train": hf, "test": hf}).save_to_disk(str(tmp_path / "dd"))
    _assert_refused(tmp_path, r"holds a DatasetDict with splits \['train', 'test'\]: point source at one split",
                    source=str(tmp_path / "dd"))


def test_hugging_face_tabular_features(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"a": [1.0, 2.0], "b": [[1, 2], [3, 4]], "t": ["x", "y"]}).save_to_disk(
        str(tmp_path / "hf"))
    _import(source=str(tmp_path / "hf"), label="t", out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    np.testing.assert_array_equal(ds["x"], [[1, 1, 2], [2, 3, 4]])
    assert ds.meta["features"] == ["a", "b"] and ds.meta["class_names"] == ["x", "y"]


def test_given_class_names_fix_the_order(tmp_path):
    (tmp_path / "d.csv").write_text("v,l\n1,b\n2,a\n")
    _import(source=str(tmp_path / "d.csv"), label="l", class_names=["b", "c", "a"], out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    assert ds.meta["class_names"] == ["b", "c", "a"] and ds.meta["num_classes"] == 3
    np.testing.assert_array_equal(ds["y"], [0, 2])


# ------------------------------------------------------------------------------------------- bad inputs
def _assert_refused(tmp_path, match: str, **cfg) -> None:
    out = tmp_path / "bad"
    with pytest.raises(DataError, match=match):
        _import(out=str(out), **cfg)
    assert not (out / MANIFEST).exists()


def test_nan_feature_names_file_row_and_column_and_leaves_no_manifest(tmp_path):
    n = 10_000
    a = np.arange(n, dtype=np.float64)
    a[9_001] = np.nan
    pq.write_table(pa.table({"a": np.ones(n), "b": a}), tmp_path / "d.parquet")
    _assert_refused(tmp_path, r"d\.parquet: row 9001, column 'b': nan", source=str(tmp_path / "d.parquet"),
                    rows_per_shard=1000)
    assert list((tmp_path / "bad").glob("shard-*.parquet"))  # earlier shards were written, yet no manifest


def test_inf_in_a_list_cell_names_its_position(tmp_path):
    pq.write_table(pa.table({"v": [[1.0, 2.0], [3.0, float("inf")]]}), tmp_path / "d.parquet")
    _assert_refused(tmp_path, r"row 1, column 'v\[1\]': inf", source=str(tmp_path / "d.parquet"))


def test_ragged_list_cells(tmp_path):
    pq.write_table(pa.table({"v": [[1.0, 2.0], [3.0, 4.0], [5.0]]}), tmp_path / "d.parquet")
    _assert_refused(tmp_path, r"row 2, column 'v': a list of 1 values .*ragged", source=str(tmp_path / "d.parquet"))


def test_non_numeric_feature(tmp_path):
    (tmp_path / "d.csv").write_text("size,color,label\n1,red,a\n2,blue,b\n")
    _assert_refused(tmp_path, r"d\.csv: row 0, column 'color': .*not numeric", source=str(tmp_path / "d.csv"),
                    label="label")


def test_missing_feature_value(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,\n")
    _assert_refused(tmp_path, r"row 1, column 'b': the value is missing", source=str(tmp_path / "d.csv"))


def test_label_outside_the_given_class_names(tmp_path):
    (tmp_path / "d.csv").write_text("v,l\n1,a\n2,b\n3,zebra\n")
    _assert_refused(tmp_path, r"row 2, column 'l': label 'zebra' is not one of class_names \['a', 'b'\]",
                    source=str(tmp_path / "d.csv"), label="l", class_names=["a", "b"])


def test_fractional_label(tmp_path):
    pq.write_table(pa.table({"v": [1.0, 2.0], "l": [1.0, 2.5]}), tmp_path / "d.parquet")
    _assert_refused(tmp_path, r"row 1, column 'l': label 2.5 is not a whole number",
                    source=str(tmp_path / "d.parquet"), label="l")


def test_image_that_does_not_decode(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "ok.png").write_bytes(_png(_pixels(0)))
    (tmp_path / "imgs" / "a" / "broken.png").write_bytes(_png(_pixels(1))[:40])
    _assert_refused(tmp_path, r"imgs/a/broken\.png: the image does not decode", source=str(tmp_path / "imgs"))


def test_duplicate_id(tmp_path):
    (tmp_path / "d.csv").write_text("id,v\n1,0\n2,0\n3,0\n2,0\n")
    _assert_refused(tmp_path, r"d\.csv: row 3, column 'id': duplicate id 2 \(also at .*d\.csv: row 1\)",
                    source=str(tmp_path / "d.csv"), id="id")


def test_file_in_another_format_than_named(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    _assert_refused(tmp_path, r"d\.csv is not a readable parquet file", source=str(tmp_path / "d.csv"),
                    format="parquet")
    (tmp_path / "x.npy").write_text("a,b\n1,2\n")
    _assert_refused(tmp_path, r"x\.npy is not a NumPy \.npy array", source=str(tmp_path / "x.npy"))
    _assert_refused(tmp_path, r"d\.csv is not a readable WebDataset tar shard", source=str(tmp_path / "d.csv"),
                    format="webdataset")
    _assert_refused(tmp_path, r"is not a Hugging Face dataset", source=str(tmp_path), format="hf")


def test_statistics_must_fit_the_channels_or_features(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ConfigError, match="mean has 2 values: expected 1 or 3"):
        _import(source=str(tmp_path / "d.csv"), mean=[0, 1], out=str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match="size and channels apply to images"):
        _import(source=str(tmp_path / "d.csv"), size=8, out=str(tmp_path / "ds"))
    assert not (tmp_path / "ds" / MANIFEST).exists()
    _import(source=str(tmp_path / "d.csv"), mean=[1, 2, 3], std=2, out=str(tmp_path / "ds"))
    ds = read_dataset(str(tmp_path / "ds"))
    np.testing.assert_allclose(Preprocessor(ds.meta)(ds.columns), [[0, 0, 0]])


def test_unknown_column_lists_the_columns(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    _assert_refused(tmp_path, r"no label column 'lbl' \(columns: \['a', 'b'\]\)", source=str(tmp_path / "d.csv"),
                    label="lbl")


def test_a_failed_reimport_removes_the_old_manifest(tmp_path):
    (tmp_path / "d.csv").write_text("a\n1\n2\n")
    _import(source=str(tmp_path / "d.csv"), out=str(tmp_path / "bad"))
    assert (tmp_path / "bad" / MANIFEST).exists()
    (tmp_path / "d.csv").write_text("a\n1\nnan\n")
    _assert_refused(tmp_path, r"row 1, column 'a'", source=str(tmp_path / "d.csv"))


# ------------------------------------------------------------------------------------------------ splits
def _labeled_parquet(tmp_path, n=1000):
    rng = np.random.default_rng(3)
    pq.write_table(pa.table({"v": rng.normal(size=n), "k": rng.integers(0, 4, n) * 10}), tmp_path / "d.parquet")
    return str(tmp_path / "d.parquet")


def test_holdout_splits_are_disjoint_cover_the_data_and_are_seed_stable(tmp_path):
    src = _labeled_parquet(tmp_path)
    cfg = {"source": src, "label": "k", "holdout": {"test": 0.2, "val": 0.1}, "seed": 5}
    summary = _import(out=str(tmp_path / "a"), **cfg)
    assert set(summary["datasets"]) == {"train", "val", "test"}
    parts = {name: read_dataset(str(tmp_path / "a" / name)) for name in ("train", "val", "test")}
    ids = np.concatenate([p.ids for p in parts.values()])
    assert len(ids) == 1000 and len(np.unique(ids)) == 1000
    assert (len(parts["test"]), len(parts["val"])) == (200, 100)
    assert all(p.meta["class_names"] == ["0", "10", "20", "30"] for p in parts.values())
    assert parts["test"].meta["split"] == "test"
    _import(out=str(tmp_path / "b"), **cfg)
    _import(out=str(tmp_path / "c"), **{**cfg, "seed": 6})
    same = read_dataset(str(tmp_path / "b" / "test")).ids
    np.testing.assert_array_equal(same, parts["test"].ids)
    assert not np.array_equal(read_dataset(str(tmp_path / "c" / "test")).ids, parts["test"].ids)


def test_keep_labels_keeps_n_stratified_training_labels(tmp_path):
    src = _labeled_parquet(tmp_path)
    summary = _import(source=src, label="k", holdout={"test": 0.3}, keep_labels=20, out=str(tmp_path / "a"))
    assert set(summary["datasets"]) == {"train", "test"}
    train, test = read_dataset(str(tmp_path / "a" / "train")), read_dataset(str(tmp_path / "a" / "test"))
    kept = train["y"][train["y"] != -1]
    assert len(kept) == 20 and np.bincount(kept).tolist() == [5, 5, 5, 5]
    assert (test["y"] != -1).all()  # evaluation data keeps every label
    assert summary["datasets"]["train"]["labeled"] == 20 and summary["labeled"] == 20 + len(test)
    with pytest.raises(ConfigError, match="keep_labels=5000 exceeds"):
        _import(source=src, label="k", keep_labels=5000, out=str(tmp_path / "b"))


def test_large_parquet_streams_into_several_shards_and_row_groups(tmp_path):
    n = 200_000
    rng = np.random.default_rng(0)
    table = pa.table({f"f{i}": rng.normal(size=n).astype(np.float32) for i in range(4)} |
                     {"y": rng.integers(0, 10, n)})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=20_000)
    _import(source=str(tmp_path / "big.parquet"), label="y", out=str(tmp_path / "ds"))
    reader = DatasetReader(str(tmp_path / "ds"))
    assert len(reader) == n and len(reader.manifests[0]["shards"]) == 4
    assert max(f.num_rows for f in reader.fragments) <= 4096
    last = reader.read(reader.fragments[-1])
    np.testing.assert_array_equal(last["y"], table.column("y").to_numpy()[-len(last["id"]):])


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_prints_a_short_summary(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("a,label\n1,x\n2,\n")
    out = tmp_path / "ds"
    assert main(["import-data", f"source={tmp_path / 'd.csv'}", "label=label", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "imported 2 rows (1 labeled)" in printed and "1 classes: x" in printed and str(out) in printed
    assert storage.exists(str(out / MANIFEST))
    assert main(["import-data", f"source={tmp_path / 'd.csv'}", "label=label", "holdout.test=0.5",
                 "class_names=[x, 7]", f"--out={tmp_path / 'split'}"]) == 0
    assert "test: " in capsys.readouterr().out
    assert DatasetReader(str(tmp_path / "split" / "test")).meta["class_names"] == ["x", "7"]
    assert main(["import-data", "--show-schema"]) == 0
    assert "keep_labels" in capsys.readouterr().out
    assert main(["import-data", f"source={tmp_path / 'missing.csv'}", f"out={out}"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_prepare_data_records_class_names_in_every_split(tmp_path):
    from crossdistill.data.splits import PrepareDataConfig, prepare_data

    for uri in prepare_data(PrepareDataConfig(out=str(tmp_path / "data"))).values():
        assert DatasetReader(uri).meta["class_names"] == [str(i) for i in range(10)]
