"""Run a pipeline on this machine through kfp.local: SubprocessRunner (default) or DockerRunner."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from kfp.dsl.graph_component import GraphComponent

from crossdistill.errors import ConfigError, CrossdistillError
from crossdistill.pipelines.compile import PIPELINES, build_pipeline, resolve_name
from crossdistill.pipelines.placement import Placement


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


def pipeline_arguments(name: str, pipeline: GraphComponent, arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` checked against ``pipeline``'s parameters, before anything runs, and typed as they expect.

    A name the pipeline does not take is a ConfigError listing the ones it does; a user URI set without
    the others it needs (the pipeline module's ``REQUIRED_WITH``) too. ``--set`` parses values as YAML,
    so a string parameter given a mapping, list or number (``student_config_json={"lr": 0.01}``) gets
    it back as JSON text, and a float parameter given an integer gets a float.
    """
    params = pipeline.component_spec.inputs or {}
    unknown = sorted(set(arguments) - set(params))
    if unknown:
        listing = ", ".join(f"{n} (default {spec.default!r})" for n, spec in params.items())
        raise ConfigError(f"pipeline {name} has no parameter {', '.join(map(repr, unknown))}; "
                          f"its parameters: {listing}")
    typed = {}
    for key, value in arguments.items():
        kind = params[key].type
        if kind == "String" and not isinstance(value, str):
            value = json.dumps(value)
        elif kind == "Float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        typed[key] = value
    module = importlib.import_module(PIPELINES[resolve_name(name)])
    for switch, needed in getattr(module, "REQUIRED_WITH", {}).items():
        if not typed.get(switch):
            continue
        missing = [n for n in needed if not typed.get(n)]
        if missing:
            raise ConfigError(f"pipeline {name}: {switch} is set, so {', '.join(missing)} must be set too "
                              "(the run uses your teacher and data, not the demo's)")
        if "teachers" in params:
            teachers = typed.get("teachers", params["teachers"].default) or []
            without = [t.get("teacher", i) if isinstance(t, dict) else i for i, t in enumerate(teachers)
                       if not (isinstance(t, dict) and t.get("model_uri"))]
            if without:
                raise ConfigError(f"pipeline {name}: {switch} is set, so every item of teachers needs a model_uri "
                                  f"(your teacher); missing for {without}")
    return typed


def run_local(name: str, arguments: dict[str, Any] | None = None, *, runner: str = "subprocess",
              pipeline_root: str | Path = "runs/kfp-local", raise_on_error: bool = True,
              enable_caching: bool = False) -> Any:
    """Run pipeline ``name`` locally with ``arguments``; every task runs on CPU (no placement applies).

    Arguments are checked first (``pipeline_arguments``): a wrong name is a ConfigError, not a TypeError.
    """
    from kfp import local

    pipeline = build_pipeline(name, Placement.cpu_only())
    arguments = pipeline_arguments(name, pipeline, dict(arguments or {}))
    local.init(runner=make_runner(runner), pipeline_root=str(pipeline_root), raise_on_error=raise_on_error,
               enable_caching=enable_caching)
    return pipeline(**arguments)
