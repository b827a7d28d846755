"""Where each task runs on GKE (the teacher on a TPU node pool, the student on a GPU node pool) and
which Kubernetes Secrets guard the served teacher.

Placement is compile-time configuration (a YAML file or ``key=value`` overrides to
``crossdistill pipeline compile``), never hard-wired; ``accelerators=False`` (``--cpu``) is the one
switch that puts every task, and the teacher server, on CPU nodes. ``teacher_access`` names the
Secrets (never their values): teacher-serve mounts them on the server, and every task that calls the
teacher mounts the client's part (token, CA certificate) and is told the files' paths.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from kfp import kubernetes
from kfp.dsl import PipelineTask
from pydantic import Field

from crossdistill.config import StrictConfig

TPU_RESOURCE = "google.com/tpu"
GPU_RESOURCE = "nvidia.com/gpu"
TPU_ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TPU_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
GPU_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"


class TaskResources(StrictConfig):
    """CPU and memory requests (and optional limits) of one kind of task."""

    cpu: str = "1"
    memory: str = "2Gi"
    cpu_limit: str | None = None
    memory_limit: str | None = None


class TeacherPool(StrictConfig):
    """The TPU node pool of the teacher (Keras training and the served teacher)."""

    accelerator_type: str = TPU_RESOURCE
    chips: int = Field(4, ge=1, description="TPU chips per pod (the resource limit)")
    tpu_accelerator: str = Field("tpu-v5-lite-podslice", description=f"node label {TPU_ACCELERATOR_LABEL}")
    tpu_topology: str = Field("2x2", description=f"node label {TPU_TOPOLOGY_LABEL}")
    toleration_key: str = TPU_RESOURCE
    image_role: str = Field("teacher-tpu", description="images.yaml role of teacher tasks on TPU")
    resources: TaskResources = Field(default_factory=lambda: TaskResources(cpu="4", memory="16Gi"))


class StudentPool(StrictConfig):
    """The GPU node pool of the student (training and evaluation)."""

    accelerator_type: str = GPU_RESOURCE
    gpus: int = Field(1, ge=1)
    gpu_accelerator: str = Field("nvidia-l4", description=f"node label {GPU_ACCELERATOR_LABEL}")
    toleration_key: str | None = Field(GPU_RESOURCE, description="GKE taints GPU nodes with nvidia.com/gpu")
    resources: TaskResources = Field(default_factory=lambda: TaskResources(cpu="4", memory="16Gi"))
    backend: Literal["local", "trainjob", "pytorchjob"] = Field(
        "local", description="where student-train trains: local = in its pipeline task on this pool (torchrun "
                             "ranks when student_workers > 1, one GPU each); trainjob / pytorchjob = a Kubeflow "
                             "Trainer TrainJob / PyTorchJob on this pool, created and awaited by a small CPU task")


class TeacherAccess(StrictConfig):
    """Kubernetes Secrets, by name, that guard the served teacher (unset = plain gRPC, no token).

    The pipeline holds only these names. The server gets ``auth_secret`` and ``tls_secret``
    (TeacherServeConfig ``auth_secret`` / ``tls_secret``, mounted by the kubernetes and kserve
    backends). A task that calls the teacher mounts ``auth_secret`` (it sends the token) and
    ``ca_secret`` (it verifies the server), never ``tls_secret``: the server's private key stays
    with the server.
    """

    auth_secret: str | None = Field(None, description="Secret holding the bearer token under token_key")
    tls_secret: str | None = Field(None, description="Secret with the server's tls.crt and tls.key (server only)")
    ca_secret: str | None = Field(None, description="Secret with the CA certificate under ca_key that clients "
                                                    "verify the server with (unset: the system's roots)")
    token_key: str = Field("token", description="key of the token in auth_secret")
    ca_key: str = Field("ca.crt", description="key of the CA certificate in ca_secret")
    mount_dir: str = Field("/var/run/secrets/crossdistill", description="where client tasks mount the Secrets")

    def token_file(self) -> str | None:
        """The token's path inside a client task (None without ``auth_secret``)."""
        return f"{self.mount_dir}/teacher-auth/{self.token_key}" if self.auth_secret else None

    def ca_file(self) -> str | None:
        """The CA certificate's path inside a client task (None without ``ca_secret``)."""
        return f"{self.mount_dir}/teacher-ca/{self.ca_key}" if self.ca_secret else None


class Placement(StrictConfig):
    """Node-pool placement of every task of a pipeline, and the Secrets of the teacher's access."""

    accelerators: bool = Field(True, description="False: every task on CPU nodes, no selectors or tolerations")
    teacher: TeacherPool = Field(default_factory=TeacherPool)
    student: StudentPool = Field(default_factory=StudentPool)
    cpu: TaskResources = Field(default_factory=TaskResources, description="data prep, labelling clients, experts")
    teacher_serve_task: TaskResources = Field(default_factory=lambda: TaskResources(cpu="500m", memory="512Mi"),
                                              description="the pod that creates the server (not the server)")
    teacher_access: TeacherAccess = Field(default_factory=TeacherAccess,
                                          description="Secrets (names) guarding the served teacher")

    @classmethod
    def cpu_only(cls) -> Placement:
        return cls(accelerators=False)


def _requests(task: PipelineTask, res: TaskResources) -> PipelineTask:
    task.set_cpu_request(res.cpu).set_memory_request(res.memory)
    if res.cpu_limit:
        task.set_cpu_limit(res.cpu_limit)
    if res.memory_limit:
        task.set_memory_limit(res.memory_limit)
    return task


def on_teacher_pool(task: PipelineTask, placement: Placement) -> PipelineTask:
    """A task that runs the teacher itself (Keras training): TPU ask, TPU selectors and toleration."""
    pool = placement.teacher
    _requests(task, pool.resources)
    if not placement.accelerators:
        return task
    from crossdistill.images import image_for

    task.set_accelerator_type(pool.accelerator_type).set_accelerator_limit(pool.chips)
    task.set_container_image(image_for(pool.image_role))
    kubernetes.add_node_selector(task, TPU_ACCELERATOR_LABEL, pool.tpu_accelerator)
    kubernetes.add_node_selector(task, TPU_TOPOLOGY_LABEL, pool.tpu_topology)
    kubernetes.add_toleration(task, key=pool.toleration_key, operator="Exists", effect="NoSchedule")
    return task


def teacher_client(task: PipelineTask, placement: Placement) -> PipelineTask:
    """A task that calls the teacher: labelled so manifests/base's NetworkPolicy lets it reach teacher pods,
    with the client's Secrets of ``placement.teacher_access`` mounted (see ``client_auth`` for its inputs)."""
    from crossdistill.deploy.kubernetes import ROLE_LABEL

    kubernetes.add_pod_label(task, ROLE_LABEL, "student")
    access = placement.teacher_access
    if access.auth_secret:
        kubernetes.use_secret_as_volume(task, secret_name=access.auth_secret,
                                        mount_path=f"{access.mount_dir}/teacher-auth")
    if access.ca_secret:
        kubernetes.use_secret_as_volume(task, secret_name=access.ca_secret, mount_path=f"{access.mount_dir}/teacher-ca")
    return task


def client_auth(placement: Placement) -> dict[str, str]:
    """The ``teacher_token_file`` / ``teacher_ca_file`` arguments of a teacher-calling component: the
    paths where ``teacher_client`` mounts the Secrets (empty when none is configured)."""
    access = placement.teacher_access
    return {key: path for key, path in (("teacher_token_file", access.token_file()),
                                        ("teacher_ca_file", access.ca_file())) if path}


def on_student_pool(task: PipelineTask, placement: Placement) -> PipelineTask:
    """A task that runs the student (training, evaluation): GPU ask, GPU selector and toleration."""
    pool = placement.student
    _requests(task, pool.resources)
    if not placement.accelerators:
        return task
    task.set_accelerator_type(pool.accelerator_type).set_accelerator_limit(pool.gpus)
    kubernetes.add_node_selector(task, GPU_ACCELERATOR_LABEL, pool.gpu_accelerator)
    if pool.toleration_key:
        kubernetes.add_toleration(task, key=pool.toleration_key, operator="Exists", effect="NoSchedule")
    return task


def on_student_train(task: PipelineTask, placement: Placement) -> PipelineTask:
    """The student-train task: on the student pool when it trains itself, on a CPU node when it only creates
    and awaits a Kubeflow job whose pods hold the GPUs (``student.backend``)."""
    if placement.student.backend == "local":
        return on_student_pool(task, placement)
    return on_cpu(task, placement)


def on_cpu(task: PipelineTask, placement: Placement, resources: TaskResources | None = None) -> PipelineTask:
    """A CPU-only task: requests only."""
    return _requests(task, resources or placement.cpu)


def teacher_server_placement(placement: Placement) -> dict[str, Any]:
    """The server pod's placement as TeacherServeConfig keys (resources, node_selector, tolerations, image),
    plus the names of its Secrets (``auth_secret``, ``tls_secret``) when ``teacher_access`` sets them."""
    pool = placement.teacher
    access = placement.teacher_access
    secrets = {key: name for key, name in (("auth_secret", access.auth_secret), ("tls_secret", access.tls_secret))
               if name}
    if not placement.accelerators:
        return {"resources": {"cpu": pool.resources.cpu, "memory": pool.resources.memory}, **secrets}
    from crossdistill.images import image_for

    return {
        **secrets,
        "image": image_for(pool.image_role),
        "resources": {"cpu": pool.resources.cpu, "memory": pool.resources.memory,
                      "accelerator_type": pool.accelerator_type, "accelerator_count": pool.chips},
        "node_selector": {TPU_ACCELERATOR_LABEL: pool.tpu_accelerator, TPU_TOPOLOGY_LABEL: pool.tpu_topology},
        "tolerations": [{"key": pool.toleration_key, "operator": "Exists", "effect": "NoSchedule"}],
    }


def student_launch_placement(placement: Placement) -> dict[str, Any]:
    """Where the workers of a data-parallel student-train run (``workers`` > 1 on the trainjob/pytorchjob
    backends) go, as StudentLaunchConfig keys: the student pool's GPUs per node (one process each), its
    selector and toleration, and the teacher client's Secrets mounted where ``client_auth`` points."""
    pool = placement.student
    access = placement.teacher_access
    mounts = {name: f"{access.mount_dir}/{sub}" for name, sub in ((access.auth_secret, "teacher-auth"),
                                                                   (access.ca_secret, "teacher-ca")) if name}
    base: dict[str, Any] = {"backend": pool.backend, "secret_mounts": mounts,
                            "resources": {"cpu": pool.resources.cpu, "memory": pool.resources.memory}}
    if not placement.accelerators:
        return base
    base["resources"].update(accelerator_type=pool.accelerator_type, accelerator_count=pool.gpus)
    return {**base, "proc_per_node": pool.gpus, "node_selector": {GPU_ACCELERATOR_LABEL: pool.gpu_accelerator},
            "tolerations": [{"key": pool.toleration_key, "operator": "Exists", "effect": "NoSchedule"}]
            if pool.toleration_key else []}


def student_launch_placement_json(placement: Placement) -> str:
    return json.dumps(student_launch_placement(placement), sort_keys=True)


def teacher_server_placement_json(placement: Placement) -> str:
    return json.dumps(teacher_server_placement(placement), sort_keys=True)
