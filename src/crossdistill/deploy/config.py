"""Configuration of `teacher-serve` and `teacher-teardown`, shared by every deployment backend.

The serving schema itself lives with the server (``crossdistill.teacher.serve_config``), which must
not import from ``deploy``; it is re-exported here for the backends, components and tests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crossdistill.config import StrictConfig
from crossdistill.teacher.protocol import DEFAULT_MODEL_NAME
from crossdistill.teacher.serve_config import Resources, ServeAuth, ServeTLS, TeacherServeConfig, Toleration

__all__ = ["Endpoint", "Resources", "ServeAuth", "ServeTLS", "TeacherServeConfig", "TeacherTeardownConfig",
           "Toleration"]


class TeacherTeardownConfig(StrictConfig):
    """Configuration of `crossdistill teacher-teardown`: which deployment to remove, nothing more."""

    name: str = Field("crossdistill-teacher", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="the deployment's name, as teacher-serve was given it")
    backend: Literal["local", "kubernetes", "kserve"] = "local"
    namespace: str = "crossdistill"
    workdir: str = Field("runs/teacher", description="local backend: where its pid file is")

    @classmethod
    def of(cls, cfg: TeacherServeConfig | TeacherTeardownConfig) -> TeacherTeardownConfig:
        """What tearing down ``cfg``'s deployment needs (a serve config's name, backend, namespace, workdir)."""
        if isinstance(cfg, TeacherTeardownConfig):
            return cfg
        return cls(name=cfg.name, backend=cfg.backend, namespace=cfg.namespace, workdir=cfg.workdir)


class Endpoint(StrictConfig):
    """Where a served teacher answers."""

    name: str
    grpc: str = Field(..., description="host:port of the OIP gRPC endpoint")
    http: str | None = Field(None, description="http(s)://host:port of the OIP REST endpoint")
    model_name: str = DEFAULT_MODEL_NAME
    backend: str = "local"
    namespace: str | None = None
