"""Local backend: the teacher server as a detached process on this machine.

The process runs in its own session (so it outlives the step that started it, as a KFP
``teacher-serve`` step must), logs to ``<workdir>/<name>.log`` and leaves ``<workdir>/<name>.pid`` for
``teardown``. The server binds ``cfg.host``; ports 0 become free ports the server picks and reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from crossdistill.deploy.config import Endpoint, TeacherServeConfig, TeacherTeardownConfig
from crossdistill.errors import TeacherError, TeacherUnavailableError
from crossdistill.teacher.serve_config import SERVE_FAILED
from crossdistill.teacher.transport import address


def _paths(cfg: TeacherServeConfig | TeacherTeardownConfig) -> tuple[Path, Path, Path]:
    work = Path(cfg.workdir)
    return work / f"{cfg.name}.pid", work / f"{cfg.name}.log", work / f"{cfg.name}.json"


def _ready_file(cfg: TeacherServeConfig | TeacherTeardownConfig) -> Path:
    return Path(cfg.workdir) / f"{cfg.name}.ready"


def _tail(path: Path, lines: int = 30) -> str:
    """The server's one-line failure report when it left one, else the last lines of its log."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    failed = [line for line in text if line.startswith(SERVE_FAILED)]
    return failed[-1] if failed else "\n".join(text[-lines:])


def deploy(cfg: TeacherServeConfig) -> Endpoint:
    """Start the server detached, wait until both ports answer, return its endpoint.

    The server binds ``cfg.host``; ports 0 are chosen by the server itself, which reports them (and
    that it is serving) in ``<workdir>/<name>.ready``: no probe call is needed, whatever token or TLS.
    """
    pid_file, log_file, cfg_file = _paths(cfg)
    ready_file = _ready_file(cfg)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    if pid_file.exists():
        teardown(cfg)  # a stale server of the same name would hold the model name and ports
    ready_file.unlink(missing_ok=True)
    cfg_file.write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=str(cfg.workers_threads))
    with open(log_file, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "crossdistill.teacher.server", "--config", str(cfg_file),
                                 "--ready-file", str(ready_file)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    pid_file.write_text(str(proc.pid))
    ports = _wait_ready(proc, ready_file, cfg, log_file)
    scheme = "https" if cfg.tls is not None else "http"
    return Endpoint(name=cfg.name, grpc=address(cfg.host, ports["grpc_port"]),
                    http=f"{scheme}://{address(cfg.host, ports['http_port'])}", model_name=cfg.model_name,
                    backend="local")


def _wait_ready(proc: subprocess.Popen, ready_file: Path, cfg: TeacherServeConfig, log_file: Path) -> dict[str, int]:
    end = time.monotonic() + cfg.ready_timeout_s
    while True:
        if ready_file.exists():
            return json.loads(ready_file.read_text())
        if proc.poll() is not None:
            _forget(cfg)
            raise TeacherError(f"teacher server '{cfg.name}' ({cfg.model_uri}) exited with code {proc.returncode} "
                               f"before it was ready; {log_file}:\n{_tail(log_file)}")
        if time.monotonic() >= end:
            _kill(proc.pid)
            _forget(cfg)
            raise TeacherUnavailableError(
                f"teacher server '{cfg.name}' ({cfg.model_uri}) not serving after {cfg.ready_timeout_s:.0f}s "
                f"(ready_timeout_s); last lines of {log_file}:\n{_tail(log_file)}")
        time.sleep(0.1)


def teardown(cfg: TeacherServeConfig | TeacherTeardownConfig) -> bool:
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


def _forget(cfg: TeacherServeConfig | TeacherTeardownConfig) -> None:
    pid_file, _, _ = _paths(cfg)
    pid_file.unlink(missing_ok=True)
    _ready_file(cfg).unlink(missing_ok=True)
