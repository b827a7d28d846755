"""Configuration of `teacher-serve` and its teardown, shared by every deployment backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crossdistill.config import StrictConfig
from crossdistill.teacher.protocol import DEFAULT_MODEL_NAME


class Toleration(StrictConfig):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class Resources(StrictConfig):
    cpu: str = "2"
    memory: str = "4Gi"
    accelerator_type: str | None = Field(None, description="e.g. google.com/tpu or nvidia.com/gpu; None = CPU")
    accelerator_count: int = Field(0, ge=0)


class TeacherServeConfig(StrictConfig):
    """Configuration of `crossdistill teacher-serve`."""

    model_uri: str = Field(..., description="the teacher: .keras file, SavedModel dir, TorchScript .pt or .onnx at any URI")
    model_format: Literal["auto", "keras", "savedmodel", "torchscript", "onnx"] = "auto"
    model_name: str = DEFAULT_MODEL_NAME
    output_is_probs: bool = Field(False, description="the model ends in softmax: serve log(probs) as logits")
    backend: Literal["local", "kubernetes", "kserve"] = "local"
    name: str = Field("crossdistill-teacher", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="deployment name (DNS-1123); pipelines derive it from the job id")
    namespace: str = "crossdistill"
    image: str | None = Field(None, description="teacher image (kubernetes/kserve backends); images.yaml default")
    host: str = "127.0.0.1"
    grpc_port: int = Field(0, ge=0, le=65535, description="0 = pick a free port (local backend)")
    http_port: int = Field(0, ge=0, le=65535)
    workers_threads: int = Field(2, ge=1, description="intra-op threads of the teacher runtime")
    ready_timeout_s: float = Field(300.0, gt=0)
    workdir: str = Field("runs/teacher", description="local backend: logs and pid file")
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    service_account: str | None = None


class Endpoint(StrictConfig):
    """Where a served teacher answers."""

    name: str
    grpc: str = Field(..., description="host:port of the OIP gRPC endpoint")
    http: str | None = Field(None, description="http://host:port of the OIP REST endpoint")
    model_name: str = DEFAULT_MODEL_NAME
    backend: str = "local"
    namespace: str | None = None
