"""Bad input, tried as a new user would through the CLI: a named error, no traceback, nothing that looks complete.

Each case runs ``crossdistill <step> key=value ...`` as a subprocess and checks the exit code, that
stderr names what is wrong (file, row, column, label, both class lists), that no "Traceback" reaches
the user, and that nothing under ``out`` carries a ``manifest.json`` (the mark of a finished dataset) or,
for training and evaluation, a model or metrics file. tests/test_import_data.py has the library-level
versions of the import cases.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

CLI = [sys.executable, "-m", "crossdistill.cli"]
ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
FINISHED = ("manifest.json", "model.pt", "metrics.json", "report.html")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=ENV)


def ok(*args: str) -> str:
    """A step that must succeed; its stdout."""
    done = run(*args)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-4000:]
    return done.stdout


def refused(out: Path, *args: str) -> str:
    """A step that must stop with a named error and leave nothing finished under ``out``; its stderr."""
    done = run(*args)
    assert done.returncode != 0, f"accepted: crossdistill {' '.join(args)}\n{done.stdout[-2000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert f"crossdistill {args[0]}: error: " in done.stderr, done.stderr[-4000:]
    left = [p for p in out.rglob("*") if p.name in FINISHED] if out.exists() else []
    assert not left, f"looks complete after a failure: {left}"
    return done.stderr


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- import-data
def nan_in_parquet(tmp: Path) -> tuple[list[str], list[str]]:
    """10,000 rows (read 4,096 at a time: shards of 500 are written before the bad row is met); a NaN in
    row 9,345 of column f2."""
    x = np.random.default_rng(0).normal(size=(10_000, 4))
    x[9345, 2] = np.nan
    pq.write_table(pa.table({f"f{i}": x[:, i] for i in range(4)} | {"y": np.arange(10_000) % 3}),
                   tmp / "d.parquet", row_group_size=500)
    return ([f"source={tmp / 'd.parquet'}", "label=y", "rows_per_shard=500"],
            ["d.parquet: row 9345, column 'f2': nan", "NaN and Inf are not allowed"])


def nan_in_csv(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "d.csv").write_text("a,b,label\n1,2,x\n3,4,y\n5,NaN,x\n7,8,y\n")
    return [f"source={tmp / 'd.csv'}", "label=label"], ["d.csv: row 2, column 'b'"]


def ragged_list_cells(tmp: Path) -> tuple[list[str], list[str]]:
    pq.write_table(pa.table({"emb": [[1.0, 2.0], [3.0, 4.0], [5.0], [6.0, 7.0]], "y": [0, 1, 0, 1]}),
                   tmp / "d.parquet")
    return ([f"source={tmp / 'd.parquet'}", "label=y", "features=emb"],
            ["row 2, column 'emb': a list of 1 values where row 0 has 2", "ragged"])


def ragged_csv_row(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "d.csv").write_text("a,b,label\n1,2,x\n3,4,y\n5,x\n7,8,y\n")
    return [f"source={tmp / 'd.csv'}", "label=label"], ["d.csv", "Row #4: Expected 3 columns, got 2"]


def unmappable_label(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "d.csv").write_text("w,animal\n1,cat\n2,\n3,dog\n4,zebra\n")
    return ([f"source={tmp / 'd.csv'}", "label=animal", "class_names=[cat,dog]"],
            ["d.csv: row 3, column 'animal': label 'zebra' is not one of class_names ['cat', 'dog']"])


def image_that_does_not_decode(tmp: Path) -> tuple[list[str], list[str]]:
    for k, cls in enumerate(["cat", "cat", "dog", "dog"]):
        (tmp / "imgs" / cls).mkdir(parents=True, exist_ok=True)
        (tmp / "imgs" / cls / f"{k}.png").write_bytes(_png(k))
    (tmp / "imgs" / "dog" / "2.png").write_bytes(_png(2)[:30])  # cut short
    return [f"source={tmp / 'imgs'}"], ["imgs/dog/2.png: the image does not decode"]


def csv_named_parquet(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "d.csv").write_text("a,b,label\n1,2,x\n3,4,y\n")
    return ([f"source={tmp / 'd.csv'}", "format=parquet", "label=label"],
            ["d.csv is not a readable parquet file"])


def parquet_named_csv(tmp: Path) -> tuple[list[str], list[str]]:
    pq.write_table(pa.table({"a": [1.0, 2.0], "label": ["x", "y"]}), tmp / "d.parquet")
    return ([f"source={tmp / 'd.parquet'}", "format=csv", "label=label"], ["d.parquet is not a readable csv file"])


def folder_named_hf(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "imgs" / "cat").mkdir(parents=True)
    (tmp / "imgs" / "cat" / "0.png").write_bytes(_png(0))
    return [f"source={tmp / 'imgs'}", "format=hf"], ["imgs is not a Hugging Face dataset saved with save_to_disk"]


BAD_SOURCES: list[Callable[[Path], tuple[list[str], list[str]]]] = [
    nan_in_parquet, nan_in_csv, ragged_list_cells, ragged_csv_row, unmappable_label, image_that_does_not_decode,
    csv_named_parquet, parquet_named_csv, folder_named_hf]


@pytest.mark.parametrize("make", BAD_SOURCES, ids=lambda f: f.__name__)
def test_import_of_bad_input_is_a_named_error_that_leaves_nothing_complete(tmp_path, make):
    args, named = make(tmp_path)
    out = tmp_path / "imported"
    stderr = refused(out, "import-data", *args, f"out={out}", "holdout.test=0.25")
    for text in named:
        assert text in stderr, stderr
    assert len(stderr.strip().splitlines()) <= 3, stderr  # one error, not pages


def test_the_shards_of_a_failed_import_are_not_a_dataset(tmp_path):
    """The shards written before the bad row stay, without manifests: a later step refuses them by name."""
    args, _ = nan_in_parquet(tmp_path)
    out = tmp_path / "imported"
    refused(out, "import-data", *args, f"out={out}", "holdout.test=0.25")
    assert list(out.rglob("shard-*.parquet")), "the case should fail after some shards were written"
    stderr = refused(tmp_path / "student", "student-train", f"train_data={out / 'train'}", "mode=hard",
                     f"out={tmp_path / 'student'}", "epochs=1")
    assert "manifest.json" in stderr and str(out / "train") in stderr, stderr


# --------------------------------------------------------------------------- a teacher of other classes
DATA_CLASSES = ["cat", "dog", "fox"]
TEACHER_CLASSES = ["cat", "dog", "wolf"]


@pytest.fixture(scope="module")
def other_teacher(tmp_path_factory):
    """A CSV of three animals imported, a student trained on its labels, and a served TorchScript teacher
    whose class_names.json says cat, dog, wolf."""
    import torch

    from crossdistill.teacher.adapters import TORCHSCRIPT_META

    root = tmp_path_factory.mktemp("other-teacher")
    rng = np.random.default_rng(0)
    rows = ["w0,w1,w2,w3,animal"] + [",".join(f"{v:.3f}" for v in rng.normal(size=4)) + f",{DATA_CLASSES[i % 3]}"
                                     for i in range(120)]
    (root / "animals.csv").write_text("\n".join(rows) + "\n")
    ok("import-data", f"source={root / 'animals.csv'}", "label=animal", f"out={root / 'data'}")
    ok("student-train", f"train_data={root / 'data'}", "mode=hard", f"out={root / 'student'}", "epochs=1",
       "progress=false")
    torch.manual_seed(0)
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3)).eval())
    torch.jit.save(net, str(root / "animals.pt"),
                   _extra_files={TORCHSCRIPT_META: json.dumps({"input_shape": [4], "num_classes": 3})})
    (root / "animals.pt.class_names.json").write_text(json.dumps(TEACHER_CLASSES))
    serve = ["name=user-errors-teacher", f"workdir={root / 'serve'}"]
    out = ok("teacher-serve", f"model_uri={root / 'animals.pt'}", "workers_threads=1", *serve)
    endpoint = json.loads(out[out.index("{\n"):])
    try:
        yield {"root": root, "data": root / "data", "student": root / "student" / "model.pt",
               "url": endpoint["grpc"]}
    finally:
        ok("teacher-teardown", *serve)


def _names_both_lists(stderr: str) -> None:
    assert str(TEACHER_CLASSES) in stderr and str(DATA_CLASSES) in stderr, stderr
    assert "only in data: ['fox']" in stderr and "only in teacher: ['wolf']" in stderr, stderr


def _untrained(out: Path) -> None:
    log = out / "train_log.jsonl"
    assert not (out / "checkpoints").exists() and not (log.exists() and log.read_text().strip()), \
        "training started before the class lists were checked"


def test_online_training_with_a_teacher_of_other_classes_stops_before_training(other_teacher, tmp_path):
    out = tmp_path / "online"
    stderr = refused(out, "student-train", f"train_data={other_teacher['data']}", "mode=online",
                     f"teacher.url={other_teacher['url']}", f"out={out}", "epochs=1")
    _names_both_lists(stderr)
    _untrained(out)


def test_offline_training_on_soft_labels_of_other_classes_stops_before_training(other_teacher, tmp_path):
    soft = tmp_path / "soft"
    ok("pseudo-label", f"data={other_teacher['data']}", f"teacher_url={other_teacher['url']}", f"out={soft}",
       "progress=false")
    out = tmp_path / "offline"
    stderr = refused(out, "student-train", f"train_data={other_teacher['data']}", "mode=offline",
                     f"soft_labels={soft}", f"out={out}", "epochs=1")
    _names_both_lists(stderr)
    _untrained(out)


def test_evaluate_with_a_teacher_of_other_classes_writes_no_metrics(other_teacher, tmp_path):
    out = tmp_path / "eval"
    stderr = refused(out, "evaluate", f"test_data={other_teacher['data']}", f"student={other_teacher['student']}",
                     f"teacher.url={other_teacher['url']}", f"out={out}")
    _names_both_lists(stderr)
