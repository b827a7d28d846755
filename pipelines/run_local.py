"""Run a pipeline on this machine through kfp.local: SubprocessRunner (default) or DockerRunner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossdistill.errors import CrossdistillError
from pipelines.compile import build_pipeline
from pipelines.placement import Placement


class DockerUnavailableError(CrossdistillError):
    """The Docker runner was asked for but no Docker engine answers."""


def docker_available() -> tuple[bool, str]:
    """Whether a Docker engine answers, and why not when it does not."""
    try:
        import docker
    except ImportError:
        return False, "the 'docker' Python package is not installed (pip install docker)"
    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:  # the docker SDK raises several unrelated types when no engine runs
        return False, f"no Docker engine answers ({type(exc).__name__}: {exc})"
    return True, "ok"


def make_runner(runner: str = "subprocess") -> Any:
    from kfp import local

    if runner == "subprocess":
        # use_venv=False: tasks run with this interpreter, where crossdistill is installed.
        return local.SubprocessRunner(use_venv=False)
    if runner == "docker":
        ok, why = docker_available()
        if not ok:
            raise DockerUnavailableError(
                f"--runner docker: {why}. Start a Docker engine, or use --runner subprocess "
                "(runs every task with this Python, where crossdistill is installed).")
        return local.DockerRunner()
    raise ValueError(f"unknown runner '{runner}' (expected subprocess or docker)")


def run_local(name: str, arguments: dict[str, Any] | None = None, *, runner: str = "subprocess",
              pipeline_root: str | Path = "runs/kfp-local", raise_on_error: bool = True,
              enable_caching: bool = False) -> Any:
    """Run pipeline ``name`` locally with ``arguments``; every task runs on CPU (no placement applies)."""
    from kfp import local

    local.init(runner=make_runner(runner), pipeline_root=str(pipeline_root), raise_on_error=raise_on_error,
               enable_caching=enable_caching)
    pipeline = build_pipeline(name, Placement.cpu_only())
    return pipeline(**(arguments or {}))
