"""Data-parallel student training on Kubernetes: a Kubeflow Trainer TrainJob or a PyTorchJob.

``build_objects(cfg, config_uri)`` is the single source of the job (tests validate exactly what
``launch`` applies). Every node runs ``torchrun --no-python crossdistill student-train --config
<config_uri>``; torchrun reads its rendezvous from the ``PET_*`` variables the operator sets
(``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``)
and gives each of its ``proc_per_node`` processes ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``.

- ``trainjob`` (Kubeflow Trainer v2, ``trainer.kubeflow.org/v1alpha1``, Trainer >= 2.2): the job names the
  ClusterTrainingRuntime ``launch.runtime`` (``torch-distributed``: one replicated job and container,
  both called ``node``) and sets image, command, ``numNodes``, ``numProcPerNode``, ``resourcesPerNode``
  and environment through ``spec.trainer``. Placement, labels, volumes and security contexts go into the
  runtime's pod template through one ``spec.runtimePatches`` entry owned by ``crossdistill.dev/launcher``.
  A patch cannot give the ``node`` container ``envFrom`` (nor ``env``), so the object-store keys of the
  ``crossdistill-defaults`` ConfigMap and of the S3 credentials Secret come one by one through
  ``trainer.env`` (optional references: a missing key stays unset).
- ``pytorchjob`` (training operator v1, ``kubeflow.org/v1``): a Master (node rank 0) and ``nodes - 1``
  Workers with the whole pod template, container ``pytorch``, ``nprocPerNode``.

Pods carry ``crossdistill.dev/role=student`` (the teacher's NetworkPolicy admits them), run as the
non-root user of the images with a read-only root filesystem (``/tmp`` and ``/dev/shm`` are emptyDirs)
and mount ``launch.secret_mounts`` read-only. ``launch`` applies the job with server-side apply under
a name derived from ``out`` (a retried step re-attaches to the job it started) and waits for it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from typing import Any

from crossdistill import storage
from crossdistill.deploy import kubernetes as k8s
from crossdistill.deploy import schema
from crossdistill.errors import ConfigError, TrainingJobError
from crossdistill.train.trainer import StudentTrainConfig

log = logging.getLogger(__name__)

TRAINJOB_API = "trainer.kubeflow.org/v1alpha1"
PYTORCHJOB_API = "kubeflow.org/v1"
PATCH_MANAGER = "crossdistill.dev/launcher"  # owns our runtimePatches entry (a domain-prefixed path)
NODE = "node"  # the trainer's replicated job and container in the torch-distributed runtime
PYTORCH_CONTAINER = "pytorch"  # the container the training operator looks for
PYTORCH_PORT = 23456  # the training operator's default master port (pytorchjob-port)
WORKER_COMMAND = ["torchrun", "--no-python", "crossdistill", "student-train", "--config"]
# Keys of crossdistill-defaults (manifests/base, overlays/minio) that the workers' object-store access reads,
# and the keys of the S3 credentials Secret (overlays/minio): a TrainJob takes them one by one.
DEFAULTS_KEYS = ("CROSSDISTILL_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION",
                 "AWS_EC2_METADATA_DISABLED", "STORAGE_EMULATOR_HOST")
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
ENV = [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
POLL_S = 15.0  # the longest wait between two looks at the job
# TrainJob and PyTorchJob names are DNS-1035 labels (their webhooks check it).
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ERRORS = (TrainingJobError, TrainingJobError)
# Remote artifacts as KFP mounts them in a step's pod (kfp.dsl.types.artifact_types) -> their URIs.
_KFP_MOUNTS = {"/gcs/": "gs://", "/s3/": "s3://", "/minio/": "minio://"}
_UNSHARED = ("file", "local", "memory")  # protocols whose data no other pod can see


def shared_uri(out: str) -> str:
    """The URI of ``out`` that the job's pods can reach: remote URIs unchanged, KFP's local mounts of
    artifacts mapped back (``/gcs/b/x`` -> ``gs://b/x``, ``/s3/`` -> ``s3://``, ``/minio/`` -> ``minio://``);
    a local path is a ConfigError."""
    for mount, scheme in _KFP_MOUNTS.items():
        if out.startswith(mount):
            return scheme + out[len(mount):]
    if storage.protocol_of(out) in _UNSHARED:
        raise ConfigError(f"{out} is not on object storage: the student-train workers run in other pods and "
                          "reach the run folder, the data and the config only through object storage "
                          "(gs://, s3://, ...)")
    return out


def _job_name(cfg: StudentTrainConfig) -> str:
    name = cfg.launch.name or "student-" + hashlib.sha256(shared_uri(cfg.out).encode()).hexdigest()[:12]
    if not _NAME.match(name):
        raise ConfigError(f"launch.name={name!r}: a TrainJob/PyTorchJob name must be a DNS-1035 label (lower-case "
                          "letters, digits and '-', starting with a letter, at most 63 characters)")
    return name


def _nodes(cfg: StudentTrainConfig) -> int:
    per_node = cfg.launch.proc_per_node
    if cfg.workers % per_node:
        raise ConfigError(f"workers={cfg.workers} is not a multiple of launch.proc_per_node={per_node}: every node "
                          "runs proc_per_node processes")
    return cfg.workers // per_node


def _image(cfg: StudentTrainConfig) -> str:
    if cfg.launch.image:
        return cfg.launch.image
    from crossdistill.images import image_for

    return image_for("student")


def _volumes(cfg: StudentTrainConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Scratch space (the root filesystem is read-only; NCCL and data loaders need /dev/shm) and the Secrets."""
    for secret, path in cfg.launch.secret_mounts.items():
        if not path.startswith("/") or path.rstrip("/") in ("", "/tmp", "/dev/shm"):
            raise ConfigError(f"launch.secret_mounts: {secret} -> {path!r}: need an absolute path of its own")
    secrets = k8s.mounted_secrets([(f"secret-{i}", secret, path)
                                   for i, (secret, path) in enumerate(cfg.launch.secret_mounts.items())])
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}, *secrets[0]]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}, *secrets[1]]
    return volumes, mounts


def _placement(cfg: StudentTrainConfig) -> dict[str, Any]:
    placement: dict[str, Any] = {}
    if cfg.launch.node_selector:
        placement["nodeSelector"] = dict(cfg.launch.node_selector)
    if cfg.launch.tolerations:
        placement["tolerations"] = k8s.tolerations(cfg.launch.tolerations)
    if cfg.launch.service_account:
        placement["serviceAccountName"] = cfg.launch.service_account
    return placement


def _defaults_env() -> list[dict[str, Any]]:
    """``envFrom`` spelt out key by key, for the TrainJob (all optional)."""
    return [*({"name": key, "valueFrom": {"configMapKeyRef": {"name": k8s.DEFAULTS_CONFIGMAP, "key": key,
                                                              "optional": True}}} for key in DEFAULTS_KEYS),
            *({"name": key, "valueFrom": {"secretKeyRef": {"name": k8s.S3_CREDENTIALS_SECRET, "key": key,
                                                           "optional": True}}} for key in S3_CREDENTIAL_KEYS)]


def _trainjob(cfg: StudentTrainConfig, meta: dict[str, Any], command: list[str]) -> dict[str, Any]:
    volumes, mounts = _volumes(cfg)
    pod_patch = {
        "metadata": {"labels": meta["labels"]},
        "spec": {
            **_placement(cfg),
            "securityContext": k8s.pod_security_context(),
            "volumes": volumes,
            "containers": [{"name": NODE, "securityContext": k8s.container_security_context(),
                            "volumeMounts": mounts}],
        },
    }
    runtime_patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": NODE, "template": {"spec": {"template": pod_patch}}}]}}}}
    return {
        "apiVersion": TRAINJOB_API,
        "kind": "TrainJob",
        "metadata": meta,
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                           "name": cfg.launch.runtime},
            "trainer": {
                "image": _image(cfg),
                "command": command,
                "numNodes": _nodes(cfg),
                "numProcPerNode": cfg.launch.proc_per_node,
                "resourcesPerNode": k8s.resources(cfg.launch.resources),
                "env": [*ENV, *_defaults_env()],
            },
            "runtimePatches": [runtime_patch],
        },
    }


def _pytorchjob(cfg: StudentTrainConfig, meta: dict[str, Any], command: list[str]) -> dict[str, Any]:
    volumes, mounts = _volumes(cfg)
    container = {
        "name": PYTORCH_CONTAINER,
        "image": _image(cfg),
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "ports": [{"name": "pytorchjob-port", "containerPort": PYTORCH_PORT, "protocol": "TCP"}],
        "env": list(ENV),
        "envFrom": k8s.env_from(),
        "resources": k8s.resources(cfg.launch.resources),
        "securityContext": k8s.container_security_context(),
        "volumeMounts": mounts,
    }
    template = {
        "metadata": {"labels": meta["labels"]},
        "spec": {
            "automountServiceAccountToken": False,  # the workers never talk to the API server
            **_placement(cfg),
            "securityContext": k8s.pod_security_context(),
            "containers": [container],
            "volumes": volumes,
        },
    }
    nodes = _nodes(cfg)
    # Never restart a pod in place: a lost rank fails the job (and says so) rather than hanging the others.
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if nodes > 1:  # the operator refuses a Worker spec with 0 replicas
        replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": "Never", "template": copy.deepcopy(template)}
    return {
        "apiVersion": PYTORCHJOB_API,
        "kind": "PyTorchJob",
        "metadata": meta,
        "spec": {
            "nprocPerNode": str(cfg.launch.proc_per_node),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 0},
            "pytorchReplicaSpecs": replicas,
        },
    }


def build_objects(cfg: StudentTrainConfig, config_uri: str) -> list[dict[str, Any]]:
    """The one job that runs ``cfg.workers`` student-train processes: a TrainJob or a PyTorchJob by
    ``launch.backend``, named ``launch.name`` or after ``out``."""
    if cfg.launch.backend not in ("trainjob", "pytorchjob"):
        raise ConfigError(f"launch.backend={cfg.launch.backend!r} starts no Kubernetes job (trainjob or pytorchjob)")
    name = _job_name(cfg)
    meta = {"name": name, "namespace": cfg.launch.namespace,
            "labels": k8s.role_labels(name, k8s.STUDENT_ROLE, "student-train")}
    command = [*WORKER_COMMAND, shared_uri(config_uri)]
    build = _trainjob if cfg.launch.backend == "trainjob" else _pytorchjob
    return [build(cfg, meta, command)]


# --- schema check ---------------------------------------------------------------------------------

def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every unknown field and type mismatch of a TrainJob (kubeflow_trainer_api's pydantic models) or a
    PyTorchJob (kubeflow-training's OpenAPI models); empty = valid."""
    kind = obj.get("kind")
    if kind not in ("TrainJob", "PyTorchJob"):
        raise ConfigError(f"no schema for kind {kind!r} (known: TrainJob, PyTorchJob)")
    api = TRAINJOB_API if kind == "TrainJob" else PYTORCHJOB_API
    if obj.get("apiVersion") != api:
        return [f"apiVersion: expected {api}, got {obj.get('apiVersion')!r}"]
    try:
        if kind == "TrainJob":
            from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

            return schema.errors(obj, TrainerV1alpha1TrainJob, kind, schema.PydanticModels())
        models = schema.OpenApiModels(schema.module_resolver("kubeflow.training.models", "kubernetes.client.models"))
        return schema.errors(obj, "KubeflowOrgV1PyTorchJob", kind, models)
    except ImportError as exc:
        raise ConfigError(f"checking a {kind} needs kubeflow-trainer-api and kubeflow-training ({exc}): "
                          "pip install 'crossdistill[kfp]'") from None


# --- launching and waiting ------------------------------------------------------------------------

_OUTCOMES = {"TrainJob": ("Complete", "Failed"), "PyTorchJob": ("Succeeded", "Failed")}


def _condition(live: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The True condition that ends the job, else the latest True one (None: no status yet)."""
    true = [c for c in (live.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    final = [c for c in true if c.get("type") in _OUTCOMES[kind]]
    return (final or true or [None])[-1]


def _state(live: dict[str, Any] | None, kind: str) -> tuple[str, str]:
    """The job's state (a condition type, Running or Pending) and a line saying it."""
    if live is None:
        return "Missing", "the job does not exist"
    status = live.get("status") or {}
    condition = _condition(live, kind)
    jobs = status.get("jobsStatus") or []  # TrainJob: the runtime's child Jobs
    replicas = status.get("replicaStatuses") or {}  # PyTorchJob: pods per replica type
    running = any(j.get("active") for j in jobs) or any(r.get("active") for r in replicas.values())
    state = condition["type"] if condition else "Running" if running else "Pending"
    words = [state]
    if condition and (condition.get("reason") or condition.get("message")):
        words.append(f"({condition.get('reason')}: {condition.get('message')})")
    words += [f"{j.get('name')}: {j.get('active') or 0} active, {j.get('ready') or 0} ready, "
              f"{j.get('succeeded') or 0} succeeded, {j.get('failed') or 0} failed;" for j in jobs]
    words += [f"{name}: " + ", ".join(f"{counts.get(k) or 0} {k}" for k in ("active", "succeeded", "failed")) + ";"
              for name, counts in replicas.items()]
    if not status:
        words.append("(no status yet: is the operator running?)")
    return state, " ".join(words).rstrip(";")


def launch(cfg: StudentTrainConfig, config_uri: str, client: Any = None) -> None:
    """Apply the job (server-side apply: a relaunch re-attaches to the job of the same name) and wait up to
    ``launch.timeout_s`` for it to succeed; a failed or unfinished job raises TrainingJobError."""
    (job,) = build_objects(cfg, config_uri)
    client = client or k8s.api_client()
    what, kind, meta = k8s._describe(job), job["kind"], job["metadata"]
    left = (f"; the job is left in place for `kubectl describe {k8s._PLURALS[kind]} -n {meta['namespace']} "
            f"{meta['name']}` and its pods' logs (delete it to launch again)")
    before = k8s.get_object(client, job, errors=_ERRORS)
    try:
        k8s.apply_objects(client, [job], errors=_ERRORS)
    except TrainingJobError as exc:
        if before is None:
            raise
        raise TrainingJobError(f"{exc}; a {kind} of that name already exists, maybe from another config with "
                               "the same out: delete it or set launch.name") from None
    if before is None:
        log.info("created %s: %d node(s) x %d process(es) of %s", what, _nodes(cfg), cfg.launch.proc_per_node,
                 _image(cfg))
    else:
        log.info("re-attached to %s: %s", what, _state(before, kind)[1])
    said_last: list[str] = []

    def finished() -> tuple[bool, str]:
        state, said = _state(k8s.get_object(client, job, errors=_ERRORS), kind)
        if said_last != [said]:
            log.info("%s: %s", what, said)
            said_last[:] = [said]
        if state == "Missing":
            raise TrainingJobError(f"{what} was deleted before it finished")
        if state == _OUTCOMES[kind][1]:
            raise TrainingJobError(f"{what} failed: {said}{left}")
        return state == _OUTCOMES[kind][0], said

    k8s.wait_until(finished, cfg.launch.timeout_s, what, POLL_S, error=TrainingJobError, state="finished",
                   setting="launch.timeout_s", hint=left)
