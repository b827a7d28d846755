"""Any OIP server can teach in dense mode: a student trains online against a stock MLServer.

MLServer runs from a venv of its own (``make venv-mlserver``: it pins an older fastapi than KServe
serves with) and serves ``tests/mlserver_teacher/logits_model.py``, a linear model fitted here on
digits that answers ``logits`` only: no ``ids`` echo, so the client pairs each answer with its request.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from crossdistill.teacher.client import TeacherClient, TeacherClientConfig

ROOT = Path(__file__).resolve().parents[1]
MLSERVER = Path(os.environ.get("CROSSDISTILL_MLSERVER", ROOT / ".venv-mlserver" / "bin" / "mlserver"))

pytestmark = pytest.mark.skipif(not MLSERVER.exists(),
                                reason=f"MLServer is not installed at {MLSERVER}: run `make venv-mlserver`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlserver_teacher(digits, tmp_path_factory):
    """MLServer serving a logistic regression fitted on digits: ``{"url", "w", "b"}``."""
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("mlserver")
    model_dir = root / "teacher"
    model_dir.mkdir()
    fitted = LogisticRegression(max_iter=1000).fit(digits["x"].reshape(len(digits), -1), digits["y"])
    w, b = fitted.coef_.T.astype(np.float32), fitted.intercept_.astype(np.float32)
    np.savez(model_dir / "weights.npz", w=w, b=b)
    shutil.copy(ROOT / "tests" / "mlserver_teacher" / "logits_model.py", model_dir)
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "teacher", "implementation": "logits_model.LogitsModel", "parameters": {"uri": "./weights.npz"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]}))
    grpc_port = _free_port()
    (root / "settings.json").write_text(json.dumps({
        "debug": False, "host": "127.0.0.1", "grpc_port": grpc_port, "http_port": _free_port(),
        "metrics_port": _free_port(), "parallel_workers": 0}))
    log_path = root / "mlserver.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(MLSERVER), "start", str(root)], cwd=root, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"127.0.0.1:{grpc_port}"
    try:
        with TeacherClient(TeacherClientConfig(url=url)) as client:
            try:
                client.wait_ready(timeout_s=120)
            except Exception:
                pytest.fail(f"MLServer did not come up:\n{log_path.read_text(errors='replace')[-3000:]}")
        yield {"url": url, "w": w, "b": b}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_mlserver_answers_without_an_ids_echo_and_pairs_by_request(mlserver_teacher, digits):
    x = digits["x"][:300]
    with TeacherClient(TeacherClientConfig(url=mlserver_teacher["url"], max_in_flight=3)) as client:
        assert client.metadata()["num_classes"] == 10
        batches = [(digits.ids[i:i + n], x[i:i + n], i) for i, n in [(0, 100), (100, 7), (107, 193)]]
        seen = set()
        for out, start in client.stream(batches):
            n = len(out)
            np.testing.assert_array_equal(out.ids, digits.ids[start:start + n])
            expected = x[start:start + n].reshape(n, -1) @ mlserver_teacher["w"] + mlserver_teacher["b"]
            np.testing.assert_allclose(out.logits, expected, rtol=1e-4, atol=1e-4)
            seen.add(start)
    assert seen == {0, 100, 107}


def test_student_trains_online_against_mlserver(mlserver_teacher, digits, digits_uri, tmp_path):
    import torch

    from crossdistill.train.models import load_student
    from crossdistill.train.trainer import StudentTrainConfig, train_student

    epochs, batch = 4, 64
    cfg = StudentTrainConfig(train_data=digits_uri, out=str(tmp_path / "student"), mode="online",
                             teacher={"url": mlserver_teacher["url"]}, hard_weight=0.0, temperature=2.0,
                             epochs=epochs, batch_size=batch, lr=3e-3, threads=1, progress=False)
    result = train_student(cfg)
    assert result.finished
    assert result.steps == epochs * math.ceil(len(digits) / batch)
    assert result.samples_seen == epochs * len(digits)
    model, _ = load_student(result.model_uri)
    with torch.no_grad():
        predicted = model(torch.from_numpy(digits["x"])).argmax(1).numpy()
    accuracy = float(np.mean(predicted == digits["y"]))
    assert accuracy > 0.8, f"student accuracy {accuracy:.3f} (chance 0.1) distilled from MLServer's teacher"
