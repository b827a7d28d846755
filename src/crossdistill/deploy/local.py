"""Local backend: the teacher server as a detached process on this machine.

The process runs in its own session (so it outlives the step that started it, as a KFP
``teacher-serve`` step must), logs to ``<workdir>/<name>.log`` and leaves ``<workdir>/<name>.pid`` for
``teardown``. Ports 0 become free ports, chosen here so the endpoint is known before the server starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from crossdistill.deploy.config import Endpoint, TeacherServeConfig
from crossdistill.errors import TeacherError, TeacherUnavailableError


def _paths(cfg: TeacherServeConfig) -> tuple[Path, Path, Path]:
    work = Path(cfg.workdir)
    return work / f"{cfg.name}.pid", work / f"{cfg.name}.log", work / f"{cfg.name}.json"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def deploy(cfg: TeacherServeConfig) -> Endpoint:
    """Start the server detached, wait until it answers ready, return its endpoint."""
    pid_file, log_file, cfg_file = _paths(cfg)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    if pid_file.exists():
        teardown(cfg)  # a stale server of the same name would hold the model name and ports
    cfg = cfg.model_copy(update={"grpc_port": cfg.grpc_port or _free_port(cfg.host),
                                 "http_port": cfg.http_port or _free_port(cfg.host)})
    cfg_file.write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=str(cfg.workers_threads))
    with open(log_file, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "crossdistill.teacher.server", "--config", str(cfg_file)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    pid_file.write_text(str(proc.pid))
    endpoint = Endpoint(name=cfg.name, grpc=f"{cfg.host}:{cfg.grpc_port}", http=f"http://{cfg.host}:{cfg.http_port}",
                        model_name=cfg.model_name, backend="local")
    _wait_ready(proc, endpoint, cfg, log_file)
    return endpoint


def _wait_ready(proc: subprocess.Popen, endpoint: Endpoint, cfg: TeacherServeConfig, log_file: Path) -> None:
    from crossdistill.teacher.client import TeacherClient, TeacherClientConfig

    end = time.monotonic() + cfg.ready_timeout_s
    with TeacherClient(TeacherClientConfig(url=endpoint.grpc, model_name=cfg.model_name)) as client:
        while True:
            if proc.poll() is not None:
                _forget(cfg)
                raise TeacherError(f"teacher server '{cfg.name}' ({cfg.model_uri}) exited with code {proc.returncode} "
                                   f"before it was ready; last lines of {log_file}:\n{_tail(log_file)}")
            try:
                client.wait_ready(timeout_s=min(2.0, max(0.1, end - time.monotonic())))
                return
            except TeacherUnavailableError:
                if time.monotonic() >= end:
                    _kill(proc.pid)
                    _forget(cfg)
                    raise TeacherUnavailableError(
                        f"teacher server '{cfg.name}' ({cfg.model_uri}) not ready at {endpoint.grpc} after "
                        f"{cfg.ready_timeout_s:.0f}s (ready_timeout_s); last lines of {log_file}:\n{_tail(log_file)}"
                    ) from None


def teardown(cfg: TeacherServeConfig) -> bool:
    """Stop the server named ``cfg.name`` by its pid file; True when one was running."""
    pid_file, _, _ = _paths(cfg)
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        _forget(cfg)
        return False
    alive = _kill(pid)
    _forget(cfg)
    return alive


def _kill(pid: int, grace_s: float = 5.0) -> bool:
    """SIGTERM the server's process group, SIGKILL after ``grace_s``; True if it was alive."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    end = time.monotonic() + grace_s
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.1)
    return True


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _forget(cfg: TeacherServeConfig) -> None:
    pid_file, _, _ = _paths(cfg)
    pid_file.unlink(missing_ok=True)
