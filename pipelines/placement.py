"""Where each task runs on GKE: the teacher on a TPU node pool, the student on a GPU node pool.

Placement is compile-time configuration (a YAML file or ``key=value`` overrides to
``crossdistill pipeline compile``), never hard-wired; ``accelerators=False`` (``--cpu``) is the one
switch that puts every task, and the teacher server, on CPU nodes.
"""

from __future__ import annotations

import json
from typing import Any

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


class Placement(StrictConfig):
    """Node-pool placement of every task of a pipeline."""

    accelerators: bool = Field(True, description="False: every task on CPU nodes, no selectors or tolerations")
    teacher: TeacherPool = Field(default_factory=TeacherPool)
    student: StudentPool = Field(default_factory=StudentPool)
    cpu: TaskResources = Field(default_factory=TaskResources, description="data prep, labelling clients, experts")
    teacher_serve_task: TaskResources = Field(default_factory=lambda: TaskResources(cpu="500m", memory="512Mi"),
                                              description="the pod that creates the server (not the server)")

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


def teacher_client(task: PipelineTask) -> PipelineTask:
    """A task that calls the teacher: labelled so manifests/base's NetworkPolicy lets it reach teacher pods."""
    from crossdistill.deploy.kubernetes import ROLE_LABEL

    kubernetes.add_pod_label(task, ROLE_LABEL, "student")
    return task


def on_student_pool(task: PipelineTask, placement: Placement) -> PipelineTask:
    """A task that runs the student (training, evaluation): GPU ask, GPU selector and toleration."""
    pool = placement.student
    _requests(task, pool.resources)
    teacher_client(task)
    if not placement.accelerators:
        return task
    task.set_accelerator_type(pool.accelerator_type).set_accelerator_limit(pool.gpus)
    kubernetes.add_node_selector(task, GPU_ACCELERATOR_LABEL, pool.gpu_accelerator)
    if pool.toleration_key:
        kubernetes.add_toleration(task, key=pool.toleration_key, operator="Exists", effect="NoSchedule")
    return task


def on_cpu(task: PipelineTask, placement: Placement, resources: TaskResources | None = None) -> PipelineTask:
    """A CPU-only task: requests only."""
    return _requests(task, resources or placement.cpu)


def teacher_server_placement(placement: Placement) -> dict[str, Any]:
    """The server pod's placement as TeacherServeConfig keys (resources, node_selector, tolerations, image)."""
    pool = placement.teacher
    if not placement.accelerators:
        return {"resources": {"cpu": pool.resources.cpu, "memory": pool.resources.memory}}
    from crossdistill.images import image_for

    return {
        "image": image_for(pool.image_role),
        "resources": {"cpu": pool.resources.cpu, "memory": pool.resources.memory,
                      "accelerator_type": pool.accelerator_type, "accelerator_count": pool.chips},
        "node_selector": {TPU_ACCELERATOR_LABEL: pool.tpu_accelerator, TPU_TOPOLOGY_LABEL: pool.tpu_topology},
        "tolerations": [{"key": pool.toleration_key, "operator": "Exists", "effect": "NoSchedule"}],
    }


def teacher_server_placement_json(placement: Placement) -> str:
    return json.dumps(teacher_server_placement(placement), sort_keys=True)
