"""Configuration of a served teacher (`crossdistill teacher-serve`): what the server and every backend read.

The teacher's owner decides here what another party may do with the teacher: who may call it
(``auth``: a bearer token), over what (``tls``: TLS, mutual TLS with ``client_ca_file``), what it
shows (``expose_layers``: intermediate layers a client may ask for, none by default; ``metrics``)
and how big one message may be (``max_message_bytes``, advertised to clients in the metadata).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.errors import ConfigError
from crossdistill.teacher.protocol import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MODEL_NAME

MAX_GRPC_MESSAGE = 2**31 - 1  # gRPC message limits are signed 32-bit
CONNECTION_AGE_GRACE_S = 60  # calls in flight when a connection reaches max_connection_age_s (a client's timeout_s)
SERVE_FAILED = "teacher-serve failed:"  # starts the one line a server that cannot start leaves in its log


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


class ServeAuth(StrictConfig):
    """Who may call the teacher."""

    token_file: str | None = Field(
        None, description="file holding the bearer token every gRPC and REST call must carry "
                          "(Authorization: Bearer <token>); None = no token. With auth_secret (kubernetes/kserve "
                          "backends): the key of that Secret holding the token (default 'token')")


class ServeTLS(StrictConfig):
    """TLS on both ports; with ``client_ca_file``, mutual TLS (clients must present a certificate it signed)."""

    cert_file: str = Field(..., description="PEM server certificate (chain); with tls_secret: a key of that Secret")
    key_file: str = Field(..., description="PEM private key of cert_file; with tls_secret: a key of that Secret")
    client_ca_file: str | None = Field(None, description="PEM CA that signs client certificates: mutual TLS")


class TeacherServeConfig(StrictConfig):
    """Configuration of `crossdistill teacher-serve`."""

    model_uri: str = Field(..., description="the teacher: .keras file, SavedModel dir, TorchScript .pt or .onnx at any URI")
    model_format: Literal["auto", "keras", "savedmodel", "torchscript", "onnx"] = "auto"
    model_name: str = DEFAULT_MODEL_NAME
    output_is_probs: bool = Field(False, description="the model ends in softmax: serve log(probs) as logits")
    class_names: list[str] | None = Field(
        None, description="the teacher's output class names, served in its metadata; default: the JSON list in "
                          "<model_uri>.class_names.json (or <SavedModel dir>/class_names.json) when there is one")
    tokenizer: str | None = Field(
        None, description="a token model's tokenizer.json (Hugging Face tokenizers): its vocabulary fingerprint is "
                          "served in the metadata, so a student with another vocabulary stops at connect; default: "
                          "<model_uri>.tokenizer.json when there is one")
    backend: Literal["local", "kubernetes", "kserve"] = "local"
    name: str = Field("crossdistill-teacher", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="deployment name (DNS-1123); pipelines derive it from the job id")
    namespace: str = "crossdistill"
    image: str | None = Field(None, description="teacher image (kubernetes/kserve backends); images.yaml default")
    host: str = Field("127.0.0.1", description="address both ports bind (local backend); pods bind 0.0.0.0")
    grpc_port: int = Field(0, ge=0, le=65535, description="0 = pick a free port (local backend)")
    http_port: int = Field(0, ge=0, le=65535)
    workers_threads: int = Field(2, ge=1, description="intra-op threads of the teacher runtime")
    ready_timeout_s: float = Field(300.0, gt=0)
    workdir: str = Field("runs/teacher", description="local backend: logs and pid file")
    auth: ServeAuth = Field(default_factory=ServeAuth)
    tls: ServeTLS | None = Field(None, description="TLS on both ports; None = plain text")
    auth_secret: str | None = Field(None, description="kubernetes/kserve: Secret holding the bearer token, "
                                                      "mounted read-only into the teacher pod")
    tls_secret: str | None = Field(None, description="kubernetes/kserve: Secret holding tls.crt, tls.key (and the "
                                                     "client CA for mutual TLS), mounted read-only")
    expose_layers: list[str] = Field(default_factory=list,
                                     description="intermediate layers a client may request (default: none)")
    metrics: bool = Field(False, description="serve Prometheus /metrics on the REST port")
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1 << 16, le=MAX_GRPC_MESSAGE,
                                   description="largest request or answer, gRPC and REST; advertised in the metadata")
    max_connection_age_s: float | None = Field(
        300.0, gt=0, description="close each gRPC connection this long after it opened (GOAWAY; calls in flight "
                                 f"finish within {CONNECTION_AGE_GRACE_S} s): clients reconnect and re-resolve dns:/// endpoints, so "
                                 "replicas added since are used. None = keep connections open")
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    service_account: str | None = None
    replicas: int = Field(1, ge=1, description="kubernetes/kserve: teacher pods serving at once. With more than "
                                               "one, the kubernetes backend's Service is headless and its endpoint "
                                               "dns:///<name>...:port, which clients balance round-robin per "
                                               "request; locally, start several servers and list them in "
                                               "teacher.url (ip:port,ip:port)")
    max_replicas: int | None = Field(None, ge=1, description="kserve: autoscale between replicas and this many pods "
                                                             "(KServe's HPA on CPU, scale_target %); None = replicas")
    scale_target: int = Field(70, ge=1, le=100, description="kserve autoscaling: target CPU utilisation, percent")

    @model_validator(mode="after")
    def _replicas(self) -> TeacherServeConfig:
        if self.backend == "local" and self.replicas > 1:
            raise ValueError("replicas > 1 needs backend kubernetes or kserve; locally, start one teacher-serve per "
                             "replica and give the student teacher.url=ip:port,ip:port,...")
        if self.max_replicas is not None:
            if self.backend != "kserve":
                raise ValueError("max_replicas (autoscaling) needs backend kserve")
            if self.max_replicas < self.replicas:
                raise ValueError(f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})")
        return self

    @field_validator("class_names", mode="before")
    @classmethod
    def _names_as_text(cls, value: Any) -> Any:
        """Class names typed on a command line may parse as numbers (``class_names=[9,0,7]``)."""
        return [str(v) if isinstance(v, (int, float)) else v for v in value] if isinstance(value, list) else value

    @field_validator("class_names", "expose_layers")
    @classmethod
    def _unique(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"names must be unique, repeated: {repeated}")
        return names



def class_names_files(model_uri: str) -> list[str]:
    """Where a model's class names may lie: ``<model_uri>.class_names.json``, and for a SavedModel
    folder also ``<folder>/class_names.json``."""
    uri = model_uri.rstrip("/")
    return [f"{uri}.class_names.json", storage.join(uri, "class_names.json")]


def resolve_vocab_fingerprint(model_uri: str, configured: str | None, vocab_size: int | None) -> str | None:
    """The fingerprint of a token model's vocabulary (:func:`crossdistill.data.text.vocab_fingerprint`) from
    ``configured`` or ``<model_uri>.tokenizer.json``; None when there is neither. The tokenizer must have one
    entry per output of the model."""
    uri = configured or f"{model_uri.rstrip('/')}.tokenizer.json"
    if configured is None and not storage.exists(uri):
        return None
    from crossdistill.data.text import load_tokenizer, vocab_fingerprint

    tokenizer = load_tokenizer(uri)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab_size is not None and size != vocab_size:
        raise ConfigError(f"tokenizer {uri} has {size} entries but the model {model_uri} has {vocab_size} outputs "
                          "per position: expected one entry per output")
    return vocab_fingerprint(tokenizer)


def resolve_class_names(model_uri: str, configured: list[str] | None, num_classes: int | None) -> list[str] | None:
    """The teacher's class names: ``configured`` (config wins), else the JSON list in a file next to the
    model, else None. Checked: strings, unique, one per output of the model."""
    names, source = configured, "class_names in the config"
    if names is None:
        for uri in class_names_files(model_uri):
            fs, path = storage.filesystem(uri)
            if fs.isfile(path):
                try:
                    names = json.loads(storage.read_text(uri))
                except ValueError as exc:
                    raise ConfigError(f"{uri} is not valid JSON: {exc}") from None
                source = uri
                break
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{source}: expected a JSON list of class name strings, got {str(names)[:200]}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{source}: class names must be unique, repeated: {repeated}")
    if num_classes is not None and len(names) != num_classes:
        raise ConfigError(f"{source} has {len(names)} class names but the model {model_uri} has {num_classes} "
                          f"outputs: expected one name per output")
    return names
