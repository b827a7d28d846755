"""The teacher as a KServe InferenceService on the ``crossdistill-teacher`` ServingRuntime (manifests/base).

The runtime fixes the server command, ports (REST 8080, gRPC 8081) and ``--config``; KServe appends the
InferenceService's ``args`` to the runtime's, so the model-specific ``key=value`` overrides live here.
Raw (plain Deployment) mode: gRPC needs no Knative/Istio and the NetworkPolicy applies to the pods.
KServe's predictor Service is a virtual IP, which pins a client's one HTTP/2 connection to one pod; with
more than one replica a headless Service ``<name>-pool`` over the same pods comes with it, and the endpoint
is ``dns:///<name>-pool...:8081``, so students balance every request over the pods (and find new ones
when the autoscaler adds them and the name is resolved again).
``schema_errors(obj)`` checks a serving.kserve.io object against the KServe SDK's OpenAPI models (the
CRDs' schema, installed with ``kserve``; walked by ``crossdistill.deploy.schema``), so manifests and built
objects are validated offline.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from crossdistill.deploy import kubernetes as k8s
from crossdistill.deploy import schema
from crossdistill.deploy.config import Endpoint, TeacherServeConfig, TeacherTeardownConfig
from crossdistill.errors import ConfigError

RUNTIME = "crossdistill-teacher"
MODEL_FORMAT = "crossdistill"
# "RawDeployment" is accepted by every KServe >= 0.8 (newer releases read it as "Standard").
DEPLOYMENT_MODE = "RawDeployment"
API_VERSION = "serving.kserve.io/v1beta1"


def model_args(cfg: TeacherServeConfig) -> list[str]:
    """The ``key=value`` overrides KServe appends to the runtime's server arguments."""
    return [k8s._arg(k, v) for k, v in k8s.serve_values(cfg).items()]


def _pooled(cfg: TeacherServeConfig) -> bool:
    return (cfg.max_replicas or cfg.replicas) > 1


def _pool_name(name: str) -> str:
    return f"{name}-pool"


def pool_service(cfg: TeacherServeConfig) -> dict[str, Any]:
    """The headless Service over the predictor's pods (selected by the labels the predictor gives them)."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": _pool_name(cfg.name), "namespace": cfg.namespace, "labels": k8s.labels(cfg)},
            "spec": {"type": "ClusterIP", "clusterIP": "None", "selector": k8s.selector(cfg),
                     "ports": [{"name": "grpc", "port": k8s.GRPC_PORT, "targetPort": k8s.GRPC_PORT,
                                "protocol": "TCP", "appProtocol": "grpc"}]}}


def build_objects(cfg: TeacherServeConfig) -> list[dict[str, Any]]:
    """The InferenceService serving ``cfg``'s teacher, and its pool Service when it may run more than one
    replica (what ``deploy`` applies)."""
    pod = k8s.pod_spec(cfg)
    container = k8s.container(cfg)
    model = {
        "modelFormat": {"name": MODEL_FORMAT},
        "runtime": RUNTIME,
        "protocolVersion": "v2",
        "image": container["image"],  # the TPU build when a TPU is asked for
        "args": model_args(cfg),
        "resources": container["resources"],
        "readinessProbe": container["readinessProbe"],
        "securityContext": container["securityContext"],
        "volumeMounts": container["volumeMounts"],
    }
    most = cfg.max_replicas or cfg.replicas
    scaling = {"scaleMetric": "cpu", "scaleTarget": cfg.scale_target} if most > cfg.replicas else {}
    predictor: dict[str, Any] = {
        "minReplicas": cfg.replicas,
        "maxReplicas": most,
        **scaling,
        "labels": k8s.labels(cfg),
        "model": model,
        **{k: v for k, v in pod.items() if k != "containers"},
    }
    isvc = {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {"name": cfg.name, "namespace": cfg.namespace, "labels": k8s.labels(cfg),
                     "annotations": {"serving.kserve.io/deploymentMode": DEPLOYMENT_MODE}},
        "spec": {"predictor": predictor},
    }
    return [isvc, pool_service(cfg)] if _pooled(cfg) else [isvc]


def predictor_service(cfg: TeacherServeConfig) -> dict[str, Any]:
    """A stub naming the Service KServe creates for the predictor (for reading its ports)."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"{cfg.name}-predictor", "namespace": cfg.namespace}}


def isvc_ready(live: dict[str, Any] | None) -> tuple[bool, str]:
    if live is None:
        return False, "the InferenceService does not exist"
    conditions = (live.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready and ready.get("status") == "True":
        return True, "ready"
    described = "; ".join(f"{c.get('type')}={c.get('status')} ({c.get('reason')}: {c.get('message')})"
                          for c in conditions)
    return False, f"conditions: {described}" if described else "no status yet (is KServe installed?)"


def endpoint(cfg: TeacherServeConfig, live: dict[str, Any] | None = None,
             service: dict[str, Any] | None = None) -> Endpoint:
    """The in-cluster endpoint: REST from the InferenceService status, gRPC from the predictor Service (from
    the pool Service, as ``dns:///``, when there may be several replicas)."""
    host = f"{cfg.name}-predictor.{cfg.namespace}.svc.cluster.local"
    http = ((live or {}).get("status") or {}).get("address", {}).get("url") or f"http://{host}"
    if _pooled(cfg):
        return Endpoint(name=cfg.name, grpc=f"dns:///{_pool_name(cfg.name)}.{cfg.namespace}.svc.cluster.local:"
                        f"{k8s.GRPC_PORT}", http=http, model_name=cfg.model_name, backend="kserve",
                        namespace=cfg.namespace)
    grpc_port = k8s.GRPC_PORT
    for port in ((service or {}).get("spec") or {}).get("ports") or []:
        if port.get("targetPort") in (k8s.GRPC_PORT, "grpc", "h2c") or port.get("name") in ("grpc", "h2c"):
            grpc_port = port["port"]
            break
    return Endpoint(name=cfg.name, grpc=f"{host}:{grpc_port}", http=http, model_name=cfg.model_name,
                    backend="kserve", namespace=cfg.namespace)


def deploy(cfg: TeacherServeConfig, client: Any = None) -> Endpoint:
    """Apply the InferenceService, wait (cfg.ready_timeout_s) until it is Ready, return its endpoint."""
    client = client or k8s.api_client()
    objects = build_objects(cfg)
    isvc = objects[0]
    k8s.apply_objects(client, objects)
    k8s.wait_until(lambda: isvc_ready(k8s.get_object(client, isvc)), cfg.ready_timeout_s,
                   f"teacher InferenceService {cfg.namespace}/{cfg.name}")
    return endpoint(cfg, k8s.get_object(client, isvc), k8s.get_object(client, predictor_service(cfg)))


def teardown(cfg: TeacherTeardownConfig | TeacherServeConfig, client: Any = None) -> None:
    """Delete the InferenceService (KServe removes what it created) and its pool Service; nothing to delete
    is fine."""
    cfg = TeacherTeardownConfig.of(cfg)
    isvc = {"apiVersion": API_VERSION, "kind": "InferenceService",
            "metadata": {"name": cfg.name, "namespace": cfg.namespace}}
    pool = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": _pool_name(cfg.name), "namespace": cfg.namespace}}
    k8s.delete_objects(client or k8s.api_client(), [isvc, pool])


# --- schema check against the KServe SDK's OpenAPI models ------------------------------------------

_KINDS = {"InferenceService": "V1beta1InferenceService", "ServingRuntime": "V1alpha1ServingRuntime",
          "ClusterServingRuntime": "V1alpha1ClusterServingRuntime"}
_resolve = schema.module_resolver("kserve.models", "kubernetes.client.models")


def _model_class(name: str) -> Any:
    saved = sys.argv
    sys.argv = saved[:1]  # importing kserve parses sys.argv at module level
    try:
        importlib.import_module("kserve.models")
    finally:
        sys.argv = saved
    return _resolve(name)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every unknown field and type mismatch of a serving.kserve.io object (empty = valid)."""
    kind = obj.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"no KServe schema for kind {kind!r} (known: {', '.join(_KINDS)})")
    if not str(obj.get("apiVersion", "")).startswith("serving.kserve.io/"):
        return [f"apiVersion: expected serving.kserve.io/..., got {obj.get('apiVersion')!r}"]
    return schema.errors(obj, _KINDS[kind], kind, schema.OpenApiModels(_model_class))
