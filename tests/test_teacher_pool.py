"""A pool of teacher replicas behind one client: ``ip:port,ip:port,...`` balanced round-robin by gRPC.

Real servers on loopback (``crossdistill teacher-serve`` processes of one TorchScript teacher, with
``/metrics`` on so each replica's count of answered predictions can be read), a real student run.
"""

from __future__ import annotations

import json
import math
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crossdistill.deploy.config import TeacherServeConfig
from crossdistill.deploy.serve import deploy_teacher, teardown_teacher
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig
from crossdistill.teacher.transport import grpc_target
from crossdistill.train import StudentTrainConfig, load_student, train_student

PREDICTIONS = re.compile(r'^request_predict_seconds_count\{[^}]*\}\s+([0-9.e+]+)$', re.MULTILINE)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> dict[str, Any]:
    from crossdistill.teacher.adapters import TORCHSCRIPT_META

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    path = tmp_path_factory.mktemp("pool") / "linear.pt"
    torch.jit.save(torch.jit.script(net), str(path),
                   _extra_files={TORCHSCRIPT_META: json.dumps({"input_shape": [1, 8, 8], "num_classes": 10})})
    return {"path": path, "net": net}


@pytest.fixture
def start_replicas(teacher_file, tmp_path):
    """Factory: ``start_replicas(n)`` -> the configs and endpoints of n servers, torn down afterwards."""
    started: list[TeacherServeConfig] = []

    def start(n: int) -> list[tuple[TeacherServeConfig, Any]]:
        out = []
        for _ in range(n):
            cfg = TeacherServeConfig(model_uri=str(teacher_file["path"]), name=f"replica-{len(started)}",
                                     workdir=str(tmp_path / "servers"), workers_threads=1, metrics=True,
                                     ready_timeout_s=120)
            started.append(cfg)
            out.append((cfg, deploy_teacher(cfg)))
        return out

    yield start
    for cfg in started:
        teardown_teacher(cfg)


def _predictions(endpoint: Any) -> int:
    with urllib.request.urlopen(f"{endpoint.http.rstrip('/')}/metrics", timeout=10) as resp:
        return int(sum(float(v) for v in PREDICTIONS.findall(resp.read().decode())))


@pytest.mark.parametrize(("url", "target"), [
    ("10.0.0.1:8081", "10.0.0.1:8081"),
    ("10.0.0.1:8081,10.0.0.2:8081", "ipv4:10.0.0.1:8081,10.0.0.2:8081"),
    ("[::1]:8081, [::2]:8081", "ipv6:[::1]:8081,[::2]:8081"),
    ("dns:///teacher.ns.svc:8081", "dns:///teacher.ns.svc:8081"),
])
def test_a_list_of_replicas_is_one_round_robin_target(url, target):
    assert TeacherClientConfig(url=url).url == url
    assert grpc_target(url) == target


@pytest.mark.parametrize(("url", "said"), [
    ("teacher-a:8081,teacher-b:8081", "takes IP addresses"),
    ("10.0.0.1:8081,[::1]:8081", "of one family"),
    ("10.0.0.1:8081,10.0.0.2", "'10.0.0.2' is not a teacher address"),
    ("10.0.0.1:8081,", "'' is not a teacher address"),
])
def test_a_bad_list_of_replicas_says_what_is_expected(url, said):
    with pytest.raises(ValueError, match=re.escape(said)):
        TeacherClientConfig(url=url)


def test_three_replicas_each_answer_a_share_of_the_requests(start_replicas, teacher_file, digits):
    servers = start_replicas(3)
    before = [_predictions(ep) for _, ep in servers]
    pool = ",".join(ep.grpc for _, ep in servers)
    x = digits["x"][:1920]
    batches = [(digits.ids[i:i + 32], x[i:i + 32], i) for i in range(0, len(x), 32)]
    with TeacherClient(TeacherClientConfig(url=pool, max_in_flight=6)) as client:
        client.wait_ready(60)
        answered = {start: out for out, start in client.stream(batches)}
    assert sorted(answered) == [start for _, _, start in batches]
    with torch.no_grad():
        for start, out in answered.items():
            np.testing.assert_array_equal(out.ids, digits.ids[start:start + 32])
            np.testing.assert_allclose(out.logits, teacher_file["net"](torch.from_numpy(x[start:start + 32])).numpy(),
                                       rtol=1e-5, atol=1e-5)
    shares = [_predictions(ep) - b for (_, ep), b in zip(servers, before, strict=True)]
    assert sum(shares) == len(batches), shares  # each request answered once, by one replica
    assert min(shares) >= len(batches) // 6, f"round-robin should spread 60 requests over 3 replicas: {shares}"


def _train(url: str, out: Path, digits_uri: str):

    cfg = StudentTrainConfig(train_data=digits_uri, out=str(out), mode="online", epochs=3, batch_size=64,
                             checkpoint_every=10, seed=5, threads=1, progress=False,
                             teacher={"url": url, "max_in_flight": 4, "deadline_s": 60, "backoff_max_s": 1.0})
    return train_student(cfg)


@pytest.mark.timeout(240)
def test_a_replica_killed_mid_run_leaves_the_student_as_an_uninterrupted_run(start_replicas, digits, digits_uri,
                                                                              tmp_path, kill9_after_first_checkpoint):
    (a_cfg, a), (b_cfg, b) = start_replicas(2)
    out = tmp_path / "pooled"
    served_by_b: list[int] = []
    killer = kill9_after_first_checkpoint(b_cfg, out, before=lambda: served_by_b.append(_predictions(b)))
    pooled = _train(f"{a.grpc},{b.grpc}", out, digits_uri)
    killer.join()
    assert served_by_b[0] > 0 and _predictions(a) > 0, "both replicas should have served before one died"
    planned = 3 * math.ceil(len(digits) / 64)
    assert pooled.finished and pooled.steps == planned and pooled.samples_seen == 3 * len(digits)
    alone = _train(a.grpc, tmp_path / "alone", digits_uri)
    (got, _), (want, _) = load_student(pooled.model_uri), load_student(alone.model_uri)
    for (name, p), (_, q) in zip(got.state_dict().items(), want.state_dict().items(), strict=True):
        torch.testing.assert_close(p, q, msg=f"weight {name} differs from the uninterrupted run")
