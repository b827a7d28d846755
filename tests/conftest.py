"""Shared fixtures: digits on disk, a tiny trained Keras teacher, and that teacher served on loopback.

The served teacher is a real ``python -m crossdistill.teacher.server`` process started through
``crossdistill.deploy.serve`` (local backend) (KServe's ModelServer installs signal handlers, so it cannot run in a
test thread); it lives for the whole session and is torn down at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def digits():
    """sklearn's digits as a crossdistill Dataset (1,797 examples, x float32 (N, 1, 8, 8))."""
    from crossdistill.data.sources import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def digits_uri(digits, tmp_path_factory) -> str:
    """The digits dataset written as shards (2 Parquet files) under a session temp dir."""
    from crossdistill.data.shards import write_dataset

    return write_dataset(str(tmp_path_factory.mktemp("data") / "digits"), digits, num_shards=2)


@pytest.fixture(scope="session")
def soft_label_splits(tmp_path_factory) -> dict[str, Any]:
    """Digits splits plus dense and top-3 soft labels of the ``student`` split from a scikit-learn teacher.

    The teacher is a logistic regression on the ``train`` split (about 95 % on digits): quick, and good
    enough that a student distilled from it lands well above chance. Keys: the split URIs, ``dense``,
    ``topk``, ``root`` (a session temp dir) and ``student_ds`` (the student split, loaded).
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from crossdistill.data.shards import Dataset, read_dataset, write_dataset
    from crossdistill.data.splits import PrepareDataConfig, prepare_data
    from crossdistill.losses import logits_to_topk

    root = tmp_path_factory.mktemp("soft-labels")
    uris = prepare_data(PrepareDataConfig(out=str(root / "data")))
    train, student = read_dataset(uris["train"]), read_dataset(uris["student"])
    teacher = LogisticRegression(max_iter=500).fit(train["x"].reshape(len(train), -1), train["y"])
    logits = teacher.decision_function(student["x"].reshape(len(student), -1)).astype(np.float32)
    meta = {"num_classes": 10, "mode": "dense", "teacher": "sklearn-logreg"}
    dense = write_dataset(str(root / "soft_dense"), Dataset({"id": student.ids, "logits": logits}, meta),
                          num_shards=2)
    lp, idx = logits_to_topk(logits, 3, T=1.0)
    topk = write_dataset(str(root / "soft_topk"),
                         Dataset({"id": student.ids, "topk_logprobs": lp.numpy(), "topk_indices": idx.numpy()},
                                 {**meta, "mode": "topk", "temperature": 1.0}))
    return {**uris, "dense": dense, "topk": topk, "root": root, "student_ds": student}


@pytest.fixture(scope="session")
def keras_teacher(digits_uri, tmp_path_factory) -> dict[str, Any]:
    """A small Keras MLP teacher trained on digits: ``{"path": .keras file, "metrics": train result}``."""
    from crossdistill.teacher.train_keras import TeacherTrainConfig, train_keras_teacher

    out = str(tmp_path_factory.mktemp("teacher") / "teacher.keras")
    cfg = TeacherTrainConfig(train=digits_uri, out=out, hidden=[64], epochs=20, batch_size=64, threads=1)
    return {"path": out, "metrics": train_keras_teacher(cfg)}


@pytest.fixture(scope="session")
def serve_teacher(tmp_path_factory) -> Iterator[Callable[..., Any]]:
    """Factory: ``serve_teacher(model_path, name=...)`` -> Endpoint of a local server, stopped at session end."""
    from crossdistill.deploy.config import TeacherServeConfig
    from crossdistill.deploy.serve import deploy_teacher, teardown_teacher

    workdir = tmp_path_factory.mktemp("servers")
    started: list[TeacherServeConfig] = []

    def start(model_path: str | Path, name: str = "teacher-test", **overrides: Any):
        cfg = TeacherServeConfig(model_uri=str(model_path), name=name, workdir=str(workdir), workers_threads=1,
                                 ready_timeout_s=120, **overrides)
        started.append(cfg)
        return deploy_teacher(cfg)

    yield start
    for cfg in started:
        teardown_teacher(cfg)


@pytest.fixture(scope="session")
def kill9() -> Callable[[Any], None]:
    """``kill9(serve_cfg)``: SIGKILL a local teacher server's process group (no goodbye to its clients), reaped."""
    import signal

    def kill(cfg: Any) -> None:
        pid = int((Path(cfg.workdir) / f"{cfg.name}.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    return kill


@pytest.fixture(scope="session")
def kill9_after_first_checkpoint(kill9) -> Callable[..., Any]:
    """``kill9_after_first_checkpoint(serve_cfg, out, before=None)`` -> a started thread that waits (up to
    120 s) for a checkpoint under ``out/checkpoints``, calls ``before()`` if given, then kill9s the server."""
    import threading
    import time

    def start(cfg: Any, out: Path, before: Callable[[], None] | None = None) -> threading.Thread:
        def watch() -> None:
            end = time.monotonic() + 120
            while not any((out / "checkpoints").glob("ckpt-*.pt")) and time.monotonic() < end:
                time.sleep(0.02)
            if before is not None:
                before()
            kill9(cfg)

        thread = threading.Thread(target=watch)
        thread.start()
        return thread

    return start


@pytest.fixture(scope="session")
def served_keras_teacher(keras_teacher, serve_teacher):
    """The Keras teacher behind a real OIP server: its Endpoint (``.grpc`` host:port, ``.http`` URL)."""
    return serve_teacher(keras_teacher["path"], name="keras-teacher", expose_layers=["dense_0", "flatten"])


@pytest.fixture(scope="session")
def keras_adapter(keras_teacher):
    """The same teacher loaded in-process, for comparing served answers with local predictions."""
    from crossdistill.teacher.adapters import load_teacher

    return load_teacher(keras_teacher["path"], threads=1)


@pytest.fixture(scope="session")
def quirky_teacher(tmp_path_factory, serve_teacher) -> dict[str, Any]:
    """A served TorchScript teacher whose first pixel ``x[0, 0, 0, 0]`` of a batch picks its behaviour.

    ``-1``: NaN logits; ``-2``: 7 columns instead of 10; ``-3``: one row for the whole batch; ``> 1``:
    spins through that many 256x256 matrix products first (a slow batch); otherwise honest logits of
    ``net.fc`` on the input with that pixel zeroed. Returns ``{"net": module, "endpoint": Endpoint}``.
    """
    import json

    import torch

    from crossdistill.teacher.adapters import TORCHSCRIPT_META

    class Quirky(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)
            self.register_buffer("m", torch.eye(256) * 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            marker = float(x[0, 0, 0, 0])
            clean = x.clone()
            clean[:, 0, 0, 0] = 0.0
            logits = self.fc(clean.flatten(1))
            if marker == -1.0:
                return logits * float("nan")
            if marker == -2.0:
                return logits[:, :7]
            if marker == -3.0:
                return logits[:1]
            if marker > 1.0:
                acc = self.m
                for _ in range(int(marker)):
                    acc = torch.tanh(acc @ self.m)
                return logits + 0.0 * acc.sum()
            return logits

    torch.manual_seed(0)
    net = Quirky().eval()
    path = tmp_path_factory.mktemp("quirky") / "quirky.pt"
    torch.jit.save(torch.jit.script(net), str(path),
                   _extra_files={TORCHSCRIPT_META: json.dumps({"input_shape": [1, 8, 8], "num_classes": 10})})
    return {"net": net, "endpoint": serve_teacher(path, name="quirky-teacher")}
