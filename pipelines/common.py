"""What the pipelines share: task settings (caching, retries) and the teacher-side tasks they all start with.

Every pipeline runs inside an exit handler whose teacher-teardown removes the served teacher(s)
however the run ends, prepares the data, trains a teacher and serves it; online and offline do
exactly that once (``prepare_train_serve``), multi-teacher once per teacher inside its loop (the
single-task helpers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components.prepare_data.component import prepare_data
from components.teacher_serve.component import teacher_serve
from components.teacher_teardown.component import teacher_teardown
from components.train_teacher.component import train_teacher
from kfp import dsl
from kfp.dsl import PipelineTask

from pipelines import placement as pl


def deterministic(task: PipelineTask, retries: int = 0) -> PipelineTask:
    """A step whose outputs depend only on its inputs: cache it; retry it when it is retry-safe."""
    task.set_caching_options(enable_caching=True)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
    return task


def ephemeral(task: PipelineTask) -> PipelineTask:
    """A step with side effects outside its outputs (a server starts or stops): never cached."""
    return task.set_caching_options(enable_caching=False)


def teardown_task(placement: pl.Placement, **params: Any) -> PipelineTask:
    """teacher-teardown of this run's teacher(s), for ``dsl.ExitHandler`` (``params``: its parameters)."""
    task = teacher_teardown(job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **params)
    return ephemeral(pl.on_cpu(task, placement, placement.teacher_serve_task))


def data_task(placement: pl.Placement, **params: Any) -> PipelineTask:
    """prepare-data on a CPU node, cached."""
    return deterministic(pl.on_cpu(prepare_data(**params), placement))


def teacher_task(placement: pl.Placement, data: PipelineTask, **params: Any) -> PipelineTask:
    """train-teacher on ``data``'s train/val splits, on the teacher pool; cached, retried."""
    task = train_teacher(train=data.outputs["train"], val=data.outputs["val"], **params)
    return deterministic(pl.on_teacher_pool(task, placement), retries=2)


def serve_task(placement: pl.Placement, teacher: PipelineTask, **params: Any) -> PipelineTask:
    """teacher-serve of ``teacher``'s model under this run's job id; never cached (it starts a server)."""
    task = teacher_serve(model=teacher.outputs["model"], job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **params)
    return ephemeral(pl.on_cpu(task, placement, placement.teacher_serve_task))


def prepare_train_serve(placement: pl.Placement, params: Mapping[str, Any],
                        ) -> tuple[PipelineTask, PipelineTask, PipelineTask]:
    """prepare-data -> train-teacher -> teacher-serve of the single-teacher pipelines: (data, teacher, served).

    ``params`` are the calling pipeline's parameters by name (its ``locals()``): online and offline
    distillation declare the same data and teacher parameters, so they are read here in one place.
    A pipeline that lacks one fails at compile time with a KeyError naming it.
    """
    data = data_task(placement, dataset=params["dataset"], student_labels=params["student_labels"],
                     seed=params["data_seed"], config_json=params["data_config_json"])
    teacher = teacher_task(placement, data, epochs=params["teacher_epochs"], arch=params["teacher_arch"],
                           seed=params["data_seed"], threads=params["threads"],
                           config_json=params["teacher_config_json"])
    served = serve_task(placement, teacher, backend=params["teacher_backend"],
                        name_prefix=params["teacher_name_prefix"], placement_json=params["teacher_placement_json"],
                        config_json=params["teacher_serve_config_json"])
    return data, teacher, served
