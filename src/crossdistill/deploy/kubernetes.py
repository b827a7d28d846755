"""The teacher as a Kubernetes Deployment + Service, applied through the ``kubernetes`` python client.

``build_objects(cfg)`` is the single source of the objects (tests validate exactly what ``deploy``
applies). The pod carries the label the NetworkPolicy in ``manifests/base`` admits students to
(``crossdistill.dev/role=teacher``), listens on KServe's default ports (REST 8080, gRPC 8081) and loads
the model itself from ``cfg.model_uri`` (gs://, s3://, ...), with object-store settings from the
``crossdistill-defaults`` ConfigMap. Objects are applied with server-side apply, so ``deploy`` is
idempotent; ``teardown`` deletes by name and ignores what is already gone.

Secrets stay Secrets: with ``auth_secret`` / ``tls_secret`` the token and the TLS files are mounted
read-only from those Secrets (``auth.token_file`` and ``tls.*`` then name keys in them) and the
server is pointed at the mounted paths; no secret value is ever put into an object. With a token the
probes use the one open path (``/v2/health/live``: the server listens only once the model is loaded,
so live means ready); with TLS they speak HTTPS; with mutual TLS they only open a TCP connection.

The pod pieces (labels, resources, tolerations, security contexts, envFrom, Secret mounts) and the API calls
(``apply_objects``, ``get_object``, ``wait_until``, which raise the caller's error classes) also serve the
student's training jobs (``crossdistill.deploy.trainjob``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import yaml

from crossdistill.deploy.config import (
    Endpoint,
    Resources,
    TeacherServeConfig,
    TeacherTeardownConfig,
    Toleration,
)
from crossdistill.errors import ConfigError, CrossdistillError, TeacherError, TeacherUnavailableError

HTTP_PORT = 8080  # KServe's default REST port
GRPC_PORT = 8081  # KServe's default gRPC port
ROLE_LABEL = "crossdistill.dev/role"
TEACHER_ROLE = "teacher"
STUDENT_ROLE = "student"
DEFAULTS_CONFIGMAP = "crossdistill-defaults"
S3_CREDENTIALS_SECRET = "crossdistill-s3-credentials"  # created by hand (overlays/minio); optional
RUN_AS_USER = 10001  # the non-root user of every crossdistill image
FIELD_MANAGER = "crossdistill"
SERVER_COMMAND = ["python", "-m", "crossdistill.teacher.server"]
AUTH_MOUNT = "/etc/crossdistill/auth"  # the auth_secret, read-only
TLS_MOUNT = "/etc/crossdistill/tls"  # the tls_secret, read-only
TOKEN_KEY = "token"  # the auth_secret key holding the token unless auth.token_file names another
LIVE_PATH = "/v2/health/live"  # the server's one path open without a token
POLL_S = 2.0


def teacher_image(cfg: TeacherServeConfig) -> str:
    """cfg.image, else the images.yaml teacher image (the TPU build when a TPU is asked for)."""
    if cfg.image:
        return cfg.image
    from crossdistill.images import image_for

    tpu = (cfg.resources.accelerator_type or "").startswith("google.com/tpu")
    return image_for("teacher-tpu" if tpu else "teacher")


def _arg(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    if isinstance(value, list) or value is None:
        return f"{key}={json.dumps(value)}"  # a JSON list is a YAML flow sequence, JSON null YAML's null
    text = str(value)
    # The server parses each value as a YAML scalar: quote strings YAML would read as something else.
    if isinstance(value, str) and yaml.safe_load(text) != value:
        text = yaml.safe_dump(value, default_style='"').strip()
    return f"{key}={text}"


def secret_files(cfg: TeacherServeConfig) -> dict[str, str]:
    """Server settings pointing at the files mounted from ``auth_secret`` / ``tls_secret`` (dotted keys).

    Token and TLS files exist in the pod only through those Secrets: asking for either without its
    Secret is a ConfigError.
    """
    if cfg.auth.token_file and not cfg.auth_secret:
        raise ConfigError("auth.token_file needs auth_secret on the kubernetes/kserve backends: the token reaches "
                          "the pod only from a Secret (auth.token_file then names its key)")
    if cfg.tls is not None and not cfg.tls_secret:
        raise ConfigError("tls needs tls_secret on the kubernetes/kserve backends: certificate and key reach the pod "
                          "only from a Secret (tls.cert_file / key_file / client_ca_file then name its keys)")
    files: dict[str, str] = {}
    if cfg.auth_secret:
        files["auth.token_file"] = f"{AUTH_MOUNT}/{cfg.auth.token_file or TOKEN_KEY}"
    if cfg.tls_secret:
        tls = cfg.tls
        files["tls.cert_file"] = f"{TLS_MOUNT}/{tls.cert_file if tls else 'tls.crt'}"
        files["tls.key_file"] = f"{TLS_MOUNT}/{tls.key_file if tls else 'tls.key'}"
        if tls and tls.client_ca_file:
            files["tls.client_ca_file"] = f"{TLS_MOUNT}/{tls.client_ca_file}"
    return files


def serve_values(cfg: TeacherServeConfig) -> dict[str, Any]:
    """The model-specific server settings, as ``key=value`` overrides carry them (ports and host apart)."""
    values: dict[str, Any] = {
        "model_uri": cfg.model_uri, "model_format": cfg.model_format, "model_name": cfg.model_name,
        "output_is_probs": cfg.output_is_probs, "workers_threads": cfg.workers_threads,
        "expose_layers": cfg.expose_layers, "metrics": cfg.metrics, "max_message_bytes": cfg.max_message_bytes,
        "max_connection_age_s": cfg.max_connection_age_s,
    }
    if cfg.class_names is not None:
        values["class_names"] = cfg.class_names
    if cfg.tokenizer is not None:
        values["tokenizer"] = cfg.tokenizer
    return {**values, **secret_files(cfg)}


def server_args(cfg: TeacherServeConfig) -> list[str]:
    """Arguments of ``python -m crossdistill.teacher.server`` inside the container.

    The server requires ``--config``; every value comes as a ``key=value`` override, so an empty one does.
    """
    values = {"host": "0.0.0.0", "http_port": HTTP_PORT, "grpc_port": GRPC_PORT, **serve_values(cfg)}
    return ["--config", "/dev/null", *(_arg(k, v) for k, v in values.items())]


def probes(cfg: TeacherServeConfig) -> dict[str, dict[str, Any]]:
    """Startup, readiness and liveness probes that work with the configured token and TLS."""
    period = 5
    mutual = cfg.tls_secret is not None and cfg.tls is not None and cfg.tls.client_ca_file is not None
    scheme = "HTTPS" if cfg.tls_secret else "HTTP"

    def check(path: str) -> dict[str, Any]:
        if mutual:  # kubelet has no client certificate: a TCP connect is all it can do
            return {"tcpSocket": {"port": "http"}}
        return {"httpGet": {"path": path, "port": "http", **({"scheme": scheme} if cfg.tls_secret else {})}}

    ready_path = LIVE_PATH if cfg.auth_secret else f"/v2/models/{cfg.model_name}/ready"
    return {
        # Loading a big model can take minutes: the startup probe allows ready_timeout_s for it.
        "startupProbe": {**check(LIVE_PATH), "periodSeconds": period,
                         "failureThreshold": max(1, math.ceil(cfg.ready_timeout_s / period))},
        "readinessProbe": {**check(ready_path), "periodSeconds": period, "failureThreshold": 3},
        "livenessProbe": {**check(LIVE_PATH), "periodSeconds": 15, "failureThreshold": 4},
    }


def mounted_secrets(items: list[tuple[str, str | None, str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and read-only mounts of ``(volume name, Secret or None, mount path)`` (values stay in the Secrets)."""
    volumes, mounts = [], []
    for name, secret, path in items:
        if secret:
            volumes.append({"name": name, "secret": {"secretName": secret, "defaultMode": 0o440}})
            mounts.append({"name": name, "mountPath": path, "readOnly": True})
    return volumes, mounts


def secret_volumes(cfg: TeacherServeConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Secret volumes and their read-only mounts (names only: values stay in the Secrets)."""
    return mounted_secrets([("auth", cfg.auth_secret, AUTH_MOUNT), ("tls", cfg.tls_secret, TLS_MOUNT)])


def role_labels(instance: str, role: str, component: str) -> dict[str, str]:
    """The labels of a crossdistill workload; ``ROLE_LABEL`` is what the NetworkPolicy selects on."""
    return {
        "app.kubernetes.io/name": f"crossdistill-{role}",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/part-of": "crossdistill",
        "app.kubernetes.io/component": component,
        ROLE_LABEL: role,
    }


def labels(cfg: TeacherServeConfig) -> dict[str, str]:
    return role_labels(cfg.name, TEACHER_ROLE, "teacher-serve")


def selector(cfg: TeacherServeConfig) -> dict[str, str]:
    return {"app.kubernetes.io/instance": cfg.name, ROLE_LABEL: TEACHER_ROLE}


def resources(res: Resources) -> dict[str, dict[str, Any]]:
    """Requests = limits (Guaranteed QoS; accelerators cannot be overcommitted anyway)."""
    amounts: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    if res.accelerator_type and res.accelerator_count > 0:
        amounts[res.accelerator_type] = str(res.accelerator_count)
    elif res.accelerator_type or res.accelerator_count:
        raise ConfigError(f"resources: accelerator_type={res.accelerator_type!r} needs accelerator_count >= 1 "
                          f"and a count needs a type (got {res.accelerator_count})")
    return {"requests": dict(amounts), "limits": dict(amounts)}


def tolerations(items: list[Toleration]) -> list[dict[str, Any]]:
    out = []
    for t in items:
        item: dict[str, Any] = {"key": t.key, "operator": t.operator}
        if t.operator == "Equal":
            if t.value is None:
                raise ConfigError(f"tolerations: key {t.key} with operator Equal needs a value")
            item["value"] = t.value
        if t.effect:
            item["effect"] = t.effect
        out.append(item)
    return out


def env_from() -> list[dict[str, Any]]:
    """The defaults ConfigMap and the object-store credentials, as environment (both optional)."""
    return [{"configMapRef": {"name": DEFAULTS_CONFIGMAP, "optional": True}},
            {"secretRef": {"name": S3_CREDENTIALS_SECRET, "optional": True}}]


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container(cfg: TeacherServeConfig, name: str = "teacher") -> dict[str, Any]:
    """The teacher container: image, server args, ports, resources, probes, hardened security context."""
    return {
        "name": name,
        "image": teacher_image(cfg),
        "imagePullPolicy": "IfNotPresent",
        "command": list(SERVER_COMMAND),
        "args": server_args(cfg),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "KERAS_BACKEND", "value": "tensorflow"}],
        "envFrom": env_from(),
        "resources": resources(cfg.resources),
        **probes(cfg),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *secret_volumes(cfg)[1]],
    }


def pod_spec(cfg: TeacherServeConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the server never talks to the API server
        "securityContext": pod_security_context(),
        "containers": [container(cfg)],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *secret_volumes(cfg)[0]],
    }
    if cfg.service_account:
        spec["serviceAccountName"] = cfg.service_account
    if cfg.node_selector:
        spec["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        spec["tolerations"] = tolerations(cfg.tolerations)
    return spec


def build_objects(cfg: TeacherServeConfig) -> list[dict[str, Any]]:
    """The Deployment and Service that serve ``cfg``'s teacher, as plain dicts (what ``deploy`` applies)."""
    meta = {"name": cfg.name, "namespace": cfg.namespace, "labels": labels(cfg)}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": cfg.replicas,
            "selector": {"matchLabels": selector(cfg)},
            "template": {"metadata": {"labels": labels(cfg)}, "spec": pod_spec(cfg)},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**meta, "labels": labels(cfg)},
        "spec": {
            "type": "ClusterIP",
            # Several replicas: headless, so the name resolves to every ready pod and clients balance each
            # request (a virtual IP would pin a client's one HTTP/2 connection to one pod).
            **({"clusterIP": "None"} if cfg.replicas > 1 else {}),
            "selector": selector(cfg),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                 "appProtocol": "grpc"},
            ],
        },
    }
    return [deployment, service]


def endpoint(cfg: TeacherServeConfig) -> Endpoint:
    """The in-cluster DNS endpoint of the Service (``dns:///`` for a pool of replicas: every pod's address)."""
    host = f"{cfg.name}.{cfg.namespace}.svc.cluster.local"
    grpc = f"dns:///{host}:{GRPC_PORT}" if cfg.replicas > 1 else f"{host}:{GRPC_PORT}"
    return Endpoint(name=cfg.name, grpc=grpc, http=f"http://{host}:{HTTP_PORT}",
                    model_name=cfg.model_name, backend="kubernetes", namespace=cfg.namespace)


# --- talking to a cluster -------------------------------------------------------------------------

_PLURALS = {"Deployment": "deployments", "Service": "services", "InferenceService": "inferenceservices",
            "TrainJob": "trainjobs", "PyTorchJob": "pytorchjobs"}
# What _call raises: when the API server refuses, and when it does not answer (the teacher's by default).
TEACHER_ERRORS: tuple[type[CrossdistillError], type[CrossdistillError]] = (TeacherError, TeacherUnavailableError)


def api_client() -> Any:
    """A ``kubernetes.client.ApiClient`` from the in-cluster service account, else from kubeconfig."""
    try:
        import kubernetes
    except ImportError:
        raise ConfigError("the kubernetes and kserve backends need the 'kubernetes' package: "
                          "pip install 'crossdistill[kfp]'") from None
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, FileNotFoundError, OSError) as exc:
            raise ConfigError(f"no Kubernetes cluster configured (not in a pod, and no usable kubeconfig: {exc})") \
                from None
    return kubernetes.client.ApiClient()


def object_path(obj: dict[str, Any]) -> str:
    """The REST path of a namespaced object, e.g. /apis/apps/v1/namespaces/ns/deployments/name."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    if kind not in _PLURALS:
        raise ConfigError(f"cannot apply kind {kind} (known: {', '.join(_PLURALS)})")
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    meta = obj["metadata"]
    return f"{prefix}/namespaces/{meta['namespace']}/{_PLURALS[kind]}/{meta['name']}"


def _describe(obj: dict[str, Any]) -> str:
    return f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _call(client: Any, method: str, path: str, what: str, *, body: Any = None, query: list | None = None,
          headers: dict[str, str] | None = None, missing_ok: bool = False,
          errors: tuple[type[CrossdistillError], type[CrossdistillError]] = TEACHER_ERRORS) -> dict[str, Any] | None:
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError as TransportError

    try:
        return client.call_api(path, method, query_params=query or [], header_params=headers or {},
                               body=body, response_type="object", auth_settings=["BearerToken"],
                               _return_http_data_only=True, _preload_content=True)
    except ApiException as exc:
        if missing_ok and exc.status == 404:
            return None
        hint = " (check the Role/RoleBinding of the service account in manifests/base)" \
            if exc.status in (401, 403) else ""
        if exc.status == 404 and method == "PATCH":
            hint = f" (is the operator that defines {what.split()[0]} installed on this cluster?)"
        raise errors[0](f"{method} {what} failed: HTTP {exc.status} {exc.reason}: "
                        f"{(exc.body or '')[:500]}{hint}") from None
    except (OSError, TransportError) as exc:  # connection refused, DNS, TLS
        raise errors[1](f"{method} {what}: the Kubernetes API server did not answer: {exc}") from None


def apply_objects(client: Any, objects: list[dict[str, Any]],
                  errors: tuple[type[CrossdistillError], type[CrossdistillError]] = TEACHER_ERRORS) -> None:
    """Server-side apply of every object (creates or updates; idempotent)."""
    for obj in objects:
        _call(client, "PATCH", object_path(obj), _describe(obj), body=obj, errors=errors,
              query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
              headers={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"})


def delete_objects(client: Any, objects: list[dict[str, Any]]) -> None:
    """Delete every object by name; those already gone are fine."""
    for obj in reversed(objects):
        _call(client, "DELETE", object_path(obj), _describe(obj), missing_ok=True,
              body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
              headers={"Content-Type": "application/json", "Accept": "application/json"})


def get_object(client: Any, obj: dict[str, Any],
               errors: tuple[type[CrossdistillError], type[CrossdistillError]] = TEACHER_ERRORS) -> dict[str, Any] | None:
    return _call(client, "GET", object_path(obj), _describe(obj), missing_ok=True, errors=errors,
                 headers={"Accept": "application/json"})


def deployment_ready(live: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether a Deployment has rolled out with at least one ready pod, and why not."""
    if live is None:
        return False, "the Deployment does not exist"
    status = live.get("status") or {}
    generation = live.get("metadata", {}).get("generation", 0)
    conditions = "; ".join(f"{c.get('type')}={c.get('status')} ({c.get('reason')}: {c.get('message')})"
                           for c in status.get("conditions") or [])
    if status.get("observedGeneration", 0) < generation:
        return False, "the controller has not seen the latest spec yet"
    want = live.get("spec", {}).get("replicas", 1)
    if status.get("updatedReplicas", 0) >= want and status.get("availableReplicas", 0) >= want \
            and status.get("readyReplicas", 0) >= want:
        return True, "ready"
    return False, (f"{status.get('readyReplicas', 0)}/{want} replicas ready"
                   + (f"; conditions: {conditions}" if conditions else ""))


def wait_until(check: Callable[[], tuple[bool, str]], timeout_s: float, what: str, poll_s: float = POLL_S, *,
               error: type[CrossdistillError] = TeacherUnavailableError, state: str = "ready",
               setting: str = "ready_timeout_s", hint: str = "") -> None:
    """Poll ``check`` (0.25 s at first, backing off to ``poll_s``) until it says done; after ``timeout_s``
    raise ``error``: ``<what> was not <state> after <setting>=<timeout_s> s: <check's last word><hint>``."""
    deadline = time.monotonic() + timeout_s
    delay = min(0.25, poll_s)
    while True:
        ok, why = check()
        if ok:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise error(f"{what} was not {state} after {setting}={timeout_s:g} s: {why}{hint}")
        time.sleep(min(delay, left))
        delay = min(delay * 2, poll_s)


def deploy(cfg: TeacherServeConfig, client: Any = None) -> Endpoint:
    """Apply the Deployment + Service, wait (cfg.ready_timeout_s) for a ready pod, return the DNS endpoint."""
    client = client or api_client()
    objects = build_objects(cfg)
    apply_objects(client, objects)
    deployment = objects[0]
    wait_until(lambda: deployment_ready(get_object(client, deployment)), cfg.ready_timeout_s,
               f"teacher {_describe(deployment)}")
    return endpoint(cfg)


def named_objects(cfg: TeacherTeardownConfig) -> list[dict[str, Any]]:
    """Stubs naming the Deployment and Service of ``cfg.name`` (what ``teardown`` deletes)."""
    meta = {"name": cfg.name, "namespace": cfg.namespace}
    return [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta},
            {"apiVersion": "v1", "kind": "Service", "metadata": meta}]


def teardown(cfg: TeacherTeardownConfig | TeacherServeConfig, client: Any = None) -> None:
    """Delete the Deployment and Service named ``cfg.name`` (nothing to delete is fine)."""
    delete_objects(client or api_client(), named_objects(TeacherTeardownConfig.of(cfg)))
