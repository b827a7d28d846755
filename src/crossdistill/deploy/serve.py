"""`teacher-serve`: deploy the teacher on the configured backend and return where it answers.

Backends are modules of ``crossdistill.deploy`` with ``deploy(cfg) -> Endpoint`` and ``teardown(cfg)``,
imported only when used (the kubernetes client is not needed to serve locally).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from crossdistill.deploy.config import Endpoint, TeacherServeConfig, TeacherTeardownConfig
from crossdistill.errors import ConfigError

BACKENDS = ("local", "kubernetes", "kserve")


def _backend(cfg: TeacherServeConfig | TeacherTeardownConfig) -> ModuleType:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend '{cfg.backend}' is not one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"crossdistill.deploy.{cfg.backend}")


def deploy_teacher(cfg: TeacherServeConfig) -> Endpoint:
    """Start the teacher server on ``cfg.backend`` and wait until it is ready."""
    return _backend(cfg).deploy(cfg)


def teardown_teacher(cfg: TeacherTeardownConfig | TeacherServeConfig) -> Any:
    """Stop the teacher server named ``cfg.name`` on ``cfg.backend`` (a serve config works too)."""
    cfg = TeacherTeardownConfig.of(cfg)
    return _backend(cfg).teardown(cfg)
