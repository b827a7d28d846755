"""A new user's path through the CLI: their own files and their own teacher, end to end.

Each case makes, inside the test and without crossdistill, the files a practitioner brings: a Parquet
file (integer labels with gaps, some cells empty), a folder of PNGs in class sub-folders, or a Hugging
Face dataset saved with ``save_to_disk`` (ClassLabel names, some rows ``-1``); and a TorchScript teacher
trained for a moment on that data, whose output names are declared next to it
(``<model>.class_names.json``) or on ``teacher-serve class_names=[...]``, in an order of its own. Then,
only through ``crossdistill <step> key=value ...`` subprocesses: import-data (with a test holdout),
teacher-serve, student-train online, pseudo-label in two parts, student-train offline, evaluate, and
teacher-teardown. The case of a CSV with word labels is README.md's walk-through (tests/test_readme.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossdistill.data.shards import read_dataset

CLI = [sys.executable, "-m", "crossdistill.cli"]
ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
EPOCHS = 15
FAST_EVAL = ["latency_repeats=3", "latency_warmup=0", "latency_batch=8"]


def crossdistill(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``crossdistill <args>`` as a user would; it must succeed without a traceback."""
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, f"crossdistill {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    return done


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: pixels 0..16 as float32 [N, 64], and the digit of each."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def make_teacher(path: Path, x: np.ndarray, targets: np.ndarray, num_classes: int, input_shape: list[int]) -> Path:
    """A TorchScript MLP trained for a moment on ``x`` (already as the model sees it) against ``targets``,
    indices into the teacher's own class order; saved with crossdistill's TorchScript metadata."""
    import torch

    from crossdistill.teacher.adapters import TORCHSCRIPT_META

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, num_classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x.reshape(len(x), *input_shape)), torch.from_numpy(targets)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    meta = {"input_shape": input_shape, "num_classes": num_classes}
    torch.jit.save(torch.jit.script(net.eval()), str(path), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
    return path


@dataclass
class Case:
    """One user's files: the source to import, the import options, and the teacher to serve."""

    name: str
    source: Path
    import_args: list[str]
    data_classes: list[str]  # the class_names import-data should record
    teacher: Path
    serve_args: list[str] = field(default_factory=list)
    unlabeled: int = 0


def parquet_case(root: Path) -> Case:
    """Digits 0, 2, 5, 7, 9 as a Parquet table with integer labels (gaps), a fifth of the cells empty;
    the teacher's output names, in an order of its own, are given on teacher-serve as a user types them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = digits()
    keep = np.isin(y, [0, 2, 5, 7, 9])
    x, y = x[keep] / 16.0, y[keep]
    hidden = np.random.default_rng(1).random(len(y)) < 0.2
    labels = pa.array([None if h else int(v) for v, h in zip(y, hidden, strict=True)], pa.int64())
    table = pa.table({**{f"px{i}": x[:, i] for i in range(64)}, "digit": labels})
    pq.write_table(table, root / "digits.parquet", row_group_size=300)
    teacher_classes = ["9", "0", "7", "2", "5"]
    teacher = make_teacher(root / "teacher.pt", x, np.array([teacher_classes.index(str(v)) for v in y]), 5, [64])
    return Case("parquet", root / "digits.parquet", ["label=digit"], ["0", "2", "5", "7", "9"], teacher,
                serve_args=[f"class_names=[{','.join(teacher_classes)}]"], unlabeled=int(hidden.sum()))


def png_case(root: Path) -> Case:
    """500 digits as 8x8 grey PNGs in sub-folders named after the digit's word; the teacher's file next to
    it lists them in digit order (the data's classes are the sorted folder names)."""
    from PIL import Image

    x, y = digits()
    pixels = np.round(x[:500] * 255 / 16).astype(np.uint8).reshape(-1, 8, 8)
    for i, (img, label) in enumerate(zip(pixels, y[:500], strict=True)):
        folder = root / "pngs" / WORDS[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    teacher = make_teacher(root / "teacher.pt", pixels.astype(np.float32) / 255, y[:500], 10, [1, 8, 8])
    (root / "teacher.pt.class_names.json").write_text(json.dumps(WORDS))
    return Case("pngs", root / "pngs", [], sorted(WORDS), teacher)


def hf_case(root: Path) -> Case:
    """Digits as a saved Hugging Face dataset: a list-of-floats column and a ClassLabel in reversed word
    order (a tenth of the rows -1, unlabeled); the teacher's file lists the words in digit order."""
    import datasets

    x, y = digits()
    order = WORDS[::-1]
    hidden = np.random.default_rng(2).random(len(y)) < 0.1
    codes = np.where(hidden, -1, [order.index(WORDS[v]) for v in y])
    features = datasets.Features({"pixels": datasets.Sequence(datasets.Value("float32")),
                                  "digit": datasets.ClassLabel(names=order)})
    datasets.Dataset.from_dict({"pixels": (x / 16.0).tolist(), "digit": codes.tolist()},
                               features=features).save_to_disk(str(root / "hf"))
    teacher = make_teacher(root / "teacher.pt", x / 16.0, y, 10, [64])
    (root / "teacher.pt.class_names.json").write_text(json.dumps(WORDS))
    return Case("hf", root / "hf", ["label=digit", "features=pixels"], order, teacher, unlabeled=int(hidden.sum()))


MAKERS = {"parquet": parquet_case, "pngs": png_case, "hf": hf_case}


@pytest.fixture(scope="module", params=list(MAKERS))
def served(request, tmp_path_factory) -> Any:
    """One user's files made, imported with a test holdout, and their teacher served (one per case)."""
    root = tmp_path_factory.mktemp(request.param)
    case = MAKERS[request.param](root)
    done = crossdistill("import-data", f"source={case.source}", *case.import_args, "holdout.test=0.25",
                        f"out={root / 'data'}")
    name = f"user-{case.name}"
    serve = ["teacher-serve", f"model_uri={case.teacher}", f"name={name}", f"workdir={root / 'serve'}",
             "workers_threads=1", *case.serve_args]
    out = crossdistill(*serve).stdout
    endpoint = json.loads(out[out.index("{\n"):])  # teacher-serve prints its Endpoint as JSON
    try:
        yield {"case": case, "root": root, "data": root / "data", "url": endpoint["grpc"], "import": done.stdout}
    finally:
        crossdistill("teacher-teardown", f"name={name}", f"workdir={root / 'serve'}")


def evaluate(served: dict[str, Any], student: Path, out: Path) -> dict[str, Any]:
    """`crossdistill evaluate` of ``student`` on the held-out test split, teacher included; metrics.json."""
    done = crossdistill("evaluate", f"test_data={served['data'] / 'test'}", f"student={student}", f"out={out}",
                        f"teacher.url={served['url']}", *FAST_EVAL)
    assert "report:" in done.stdout and len(done.stdout) < 4000, done.stdout  # a short table, not the JSON
    return json.loads((out / "metrics.json").read_text())


def check_metrics(metrics: dict[str, Any], case: Case) -> None:
    """The student is well above chance; the teacher, mapped to the data's classes by name, is good."""
    chance = 1 / len(case.data_classes)
    assert metrics["student"]["accuracy"] > max(0.75, 3 * chance), metrics["student"]
    assert metrics["teacher"]["accuracy"] > 0.85, metrics["teacher"]


@pytest.mark.slow
def test_import_records_the_users_classes_and_holds_out_a_test_split(served):
    case = served["case"]
    train, test = read_dataset(str(served["data"] / "train")), read_dataset(str(served["data"] / "test"))
    assert train.meta["class_names"] == case.data_classes and test.meta["class_names"] == case.data_classes
    assert len(train) + len(test) > 0 and abs(len(test) / (len(train) + len(test)) - 0.25) < 0.01
    assert int((train["y"] == -1).sum() + (test["y"] == -1).sum()) == case.unlabeled
    assert set(train["y"].tolist()) <= set(range(-1, len(case.data_classes)))
    assert not set(train["id"].tolist()) & set(test["id"].tolist())
    assert ("image" in train.columns) == (case.name == "pngs")  # images stay encoded bytes
    assert f"{len(case.data_classes)} classes" in served["import"]


@pytest.mark.slow
def test_online_distillation_through_the_served_teacher(served):
    root = served["root"]
    done = crossdistill("student-train", f"train_data={served['data'] / 'train'}", "mode=online",
                        f"teacher.url={served['url']}", f"out={root / 'online'}", f"epochs={EPOCHS}", "lr=0.003",
                        "model.name=mlp", "threads=1")
    assert "student-train finished" in done.stdout
    check_metrics(evaluate(served, root / "online" / "model.pt", root / "eval-online"), served["case"])


@pytest.mark.slow
def test_offline_distillation_through_pseudo_labels(served):
    root, data = served["root"], served["data"]
    parts = []
    for i in range(2):
        parts.append(root / f"soft-{i}")
        crossdistill("pseudo-label", f"data={data / 'train'}", f"teacher_url={served['url']}", f"shard_index={i}",
                     "num_shards=2", f"out={parts[-1]}", "progress=false")
    train = read_dataset(str(data / "train"))
    soft = [read_dataset(str(p)) for p in parts]
    np.testing.assert_array_equal(np.concatenate([s["id"] for s in soft]), train["id"])  # every row, in order
    assert all(s["logits"].shape[1] == len(served["case"].data_classes) for s in soft)
    crossdistill("student-train", f"train_data={data / 'train'}", "mode=offline",
                 f"soft_labels=[{parts[0]},{parts[1]}]", f"out={root / 'offline'}", f"epochs={EPOCHS}", "lr=0.003",
                 "threads=1")
    check_metrics(evaluate(served, root / "offline" / "model.pt", root / "eval-offline"), served["case"])
