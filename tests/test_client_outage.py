"""A teacher outage is ridden out: a real served teacher is killed with -9 and started again on the same ports.

The teacher is a TorchScript model that spins through a few matrix products per request, so requests are
on the wire when it dies. The client must answer every batch exactly once, log while it waits, retry
without serialising the backoff of its calls, and give up with a clear error only past ``deadline_s``.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossdistill.deploy.config import TeacherServeConfig
from crossdistill.deploy.serve import deploy_teacher, teardown_teacher
from crossdistill.errors import TeacherUnavailableError
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig

torch = pytest.importorskip("torch")

CLIENT_LOG = "crossdistill.teacher.client"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Any:
    """``{"cfg", "url", "net"}``: a served spinning teacher on fixed ports, torn down after the module."""
    from crossdistill.teacher.adapters import TORCHSCRIPT_META

    class Spin(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)
            self.register_buffer("m", torch.eye(128) * 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            acc = self.m
            for _ in range(30):
                acc = torch.tanh(acc @ self.m)
            return self.fc(x.flatten(1)) + 0.0 * acc.sum()

    torch.manual_seed(0)
    net = Spin().eval()
    root = tmp_path_factory.mktemp("outage")
    path = root / "spin.pt"
    torch.jit.save(torch.jit.script(net), str(path),
                   _extra_files={TORCHSCRIPT_META: json.dumps({"input_shape": [1, 8, 8], "num_classes": 10})})
    cfg = TeacherServeConfig(model_uri=str(path), name="outage-teacher", workdir=str(root), workers_threads=1,
                             ready_timeout_s=120, grpc_port=_free_port(), http_port=_free_port())
    endpoint = deploy_teacher(cfg)
    yield {"cfg": cfg, "url": endpoint.grpc, "net": net}
    teardown_teacher(cfg)


def _up(teacher: dict[str, Any]) -> None:
    """Start the teacher again (same ports) unless it answers: a failed test must not take the next one down."""
    with TeacherClient(TeacherClientConfig(url=teacher["url"])) as client:
        try:
            client.wait_ready(timeout_s=1)
        except TeacherUnavailableError:
            deploy_teacher(teacher["cfg"])


def _local(net: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.timeout(180)
def test_restart_on_the_same_ports_is_ridden_out_without_serialised_backoff(teacher, digits, caplog, kill9):
    _up(teacher)
    caplog.set_level(logging.WARNING, logger=CLIENT_LOG)
    x = digits["x"][:768]
    batches = [(digits.ids[i:i + 32], x[i:i + 32], i) for i in range(0, 768, 32)]
    back: dict[str, float] = {}

    def restart() -> None:
        time.sleep(5)
        deploy_teacher(teacher["cfg"])
        back["at"] = time.monotonic()

    restarter = threading.Thread(target=restart)
    cfg = TeacherClientConfig(url=teacher["url"], max_in_flight=16, backoff_s=0.25, backoff_max_s=3.0, timeout_s=30,
                              deadline_s=90)
    seen: list[int] = []
    with TeacherClient(cfg) as client:
        for out, start in client.stream(batches):
            seen.append(start)
            np.testing.assert_array_equal(out.ids, digits.ids[start:start + 32])
            np.testing.assert_allclose(out.logits, _local(teacher["net"], x[start:start + 32]), rtol=1e-5, atol=1e-5)
            if len(seen) == 3:  # 16 requests out, the teacher computing some of them
                kill9(teacher["cfg"])
                restarter.start()
    done = time.monotonic()
    restarter.join()
    assert sorted(seen) == [start for _, _, start in batches], "every batch answered exactly once"
    assert "unavailable for" in caplog.text and teacher["url"] in caplog.text
    # 13+ requests fail at once: backoff slept one after another would cost 1.5-3 s each (20+ s in all)
    assert done - back["at"] < 12.0, f"the last answer came {done - back['at']:.1f}s after the teacher was back"


def _train(url: str, out: Path, digits_uri: str, **teacher: Any):
    from crossdistill.train.trainer import StudentTrainConfig, train_student

    cfg = StudentTrainConfig(train_data=digits_uri, out=str(out), mode="online", teacher={"url": url, **teacher},
                             epochs=3, batch_size=64, checkpoint_every=10, seed=3, threads=1, progress=False)
    return train_student(cfg)


@pytest.mark.timeout(180)
def test_past_the_deadline_training_stops_with_a_clear_error_and_resumes_from_its_checkpoint(
        teacher, digits, digits_uri, tmp_path, kill9_after_first_checkpoint):
    _up(teacher)
    out = tmp_path / "student"
    watcher = kill9_after_first_checkpoint(teacher["cfg"], out)
    t0 = time.monotonic()
    with pytest.raises(TeacherUnavailableError, match=rf"teacher at {teacher['url']} .*unavailable for \d+ s: "
                                                      r"UNAVAILABLE .*deadline_s=3\.0.*resumes from its checkpoint"):
        _train(teacher["url"], out, digits_uri, deadline_s=3, timeout_s=1, backoff_max_s=0.5)
    assert time.monotonic() - t0 < 60
    watcher.join()
    saved = sorted((out / "checkpoints").glob("ckpt-*.pt"))
    assert saved and int(saved[-1].stem.split("-")[1]) >= 10
    _up(teacher)
    resumed = _train(teacher["url"], out, digits_uri)
    assert resumed.finished and resumed.steps == 3 * math.ceil(len(digits) / 64)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kill_during_online_training_and_restart_45s_later_trains_the_same_student(
        teacher, digits, digits_uri, tmp_path, caplog, kill9_after_first_checkpoint):
    from crossdistill.train.models import load_student

    _up(teacher)
    caplog.set_level(logging.WARNING, logger=CLIENT_LOG)
    reference = _train(teacher["url"], tmp_path / "uninterrupted", digits_uri)
    out = tmp_path / "interrupted"
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = _train(teacher["url"], out, digits_uri, backoff_max_s=5)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    trainer = threading.Thread(target=run)
    trainer.start()
    kill9_after_first_checkpoint(teacher["cfg"], out).join()
    killed = time.monotonic()
    time.sleep(45)
    deploy_teacher(teacher["cfg"])
    trainer.join(timeout=240)
    assert "error" not in outcome, f"training failed across the outage: {outcome.get('error')!r}"
    result = outcome["result"]
    assert time.monotonic() - killed >= 45
    assert "unavailable for" in caplog.text
    planned = 3 * math.ceil(len(digits) / 64)
    assert result.finished and result.steps == reference.steps == planned
    assert result.samples_seen == reference.samples_seen == 3 * len(digits)
    a, _ = load_student(reference.model_uri)
    b, _ = load_student(result.model_uri)
    for (name, wa), (_, wb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(wb, wa, rtol=0, atol=1e-6, msg=f"parameter {name} differs")


@pytest.mark.timeout(180)
def test_training_started_before_its_teacher_waits_for_it(teacher, digits, digits_uri, tmp_path, kill9):
    _up(teacher)
    kill9(teacher["cfg"])
    starter = threading.Timer(4.0, deploy_teacher, args=(teacher["cfg"],))
    starter.start()
    t0 = time.monotonic()
    try:
        result = _train(teacher["url"], tmp_path / "student", digits_uri, deadline_s=90)
    finally:
        starter.join()
    assert time.monotonic() - t0 >= 4.0
    assert result.finished and result.steps == 3 * math.ceil(len(digits) / 64)
