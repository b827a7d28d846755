"""What the pipelines share: task settings (caching, retries), the teacher-side tasks they all start with,
and the choice between the user's teacher and data (URIs) and the demo's.

Every pipeline runs inside an exit handler whose teacher-teardown removes the served teacher(s)
however the run ends. A pipeline either imports the user's teacher and datasets by URI
(``dsl.importer``) or, with those URIs empty (the default), prepares the demo data and trains the
demo teacher (``prepare-data``, ``train-teacher``) as it always did. ``single_teacher_sources``
builds that choice for online and offline distillation; multi-teacher uses the single-task helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kfp import dsl
from kfp.dsl import Dataset, Model, PipelineTask
from kfp.dsl.graph_component import GraphComponent

from crossdistill.components.prepare_data.component import prepare_data
from crossdistill.components.teacher_serve.component import teacher_serve
from crossdistill.components.teacher_teardown.component import teacher_teardown
from crossdistill.components.train_teacher.component import train_teacher
from crossdistill.pipelines import placement as pl


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


def serve_task(placement: pl.Placement, model: Any, **params: Any) -> PipelineTask:
    """teacher-serve of ``model`` (a Model artifact) under this run's job id; never cached (it starts a server)."""
    task = teacher_serve(model=model, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **params)
    return ephemeral(pl.on_cpu(task, placement, placement.teacher_serve_task))


def imported(uri: Any, artifact_class: type, display_name: str) -> Any:
    """The artifact at ``uri`` (a pipeline parameter) brought into the DAG, shown as ``display_name``."""
    task = dsl.importer(artifact_uri=uri, artifact_class=artifact_class, reimport=False)
    task.set_display_name(display_name)
    return task.output


def single_teacher_sources(placement: pl.Placement, params: Mapping[str, Any],
                           distil: Callable[..., PipelineTask],
                           demo_extras: Callable[[PipelineTask, PipelineTask], None] | None = None) -> None:
    """Run ``distil(student_data=, test_data=, teacher_model=)`` on the user's or the demo's teacher and data.

    ``params`` are the calling pipeline's parameters by name (its ``locals()``): online and offline
    distillation declare the same data and teacher parameters, so they are read here in one place (a
    missing one fails at compile time with a KeyError naming it). Three branches, by which URIs are set:

    - ``student_data_uri`` empty: prepare-data makes the demo splits; then with ``teacher_model_uri``
      empty train-teacher trains the demo teacher on them (``demo_extras(data, run)`` adds tasks that
      need the demo's all-labels split, such as the baselines), else the user's teacher is imported;
    - ``student_data_uri`` set: the user's student and test datasets and teacher are imported (a demo
      teacher cannot learn the user's data, so ``teacher_model_uri`` is required with it).

    ``distil`` is a sub-pipeline, so the tasks after the teacher are written once; each branch calls it
    because kfp.local 2.17 cannot pick among artifacts with ``dsl.OneOf`` (it raises "Expected 1
    artifact in ArtifactSelectorSpec").
    """
    p = params
    with dsl.If(p["student_data_uri"] == "", name="demo-data"):
        data = data_task(placement, dataset=p["dataset"], student_labels=p["student_labels"], seed=p["data_seed"],
                         config_json=p["data_config_json"])
        with dsl.If(p["teacher_model_uri"] == "", name="demo-teacher"):
            teacher = teacher_task(placement, data, epochs=p["teacher_epochs"], arch=p["teacher_arch"],
                                   seed=p["data_seed"], threads=p["threads"], config_json=p["teacher_config_json"])
            run = distil(student_data=data.outputs["student"], test_data=data.outputs["test"],
                         teacher_model=teacher.outputs["model"])
            if demo_extras:
                demo_extras(data, run)
        with dsl.Else(name="your-teacher"):
            distil(student_data=data.outputs["student"], test_data=data.outputs["test"],
                   teacher_model=imported(p["teacher_model_uri"], Model, "import-teacher"))
    with dsl.Else(name="your-data"):
        distil(student_data=imported(p["student_data_uri"], Dataset, "import-student-data"),
               test_data=imported(p["test_data_uri"], Dataset, "import-test-data"),
               teacher_model=imported(p["teacher_model_uri"], Model, "import-teacher"))


def bind(sub: GraphComponent, params: Mapping[str, Any]) -> Callable[..., PipelineTask]:
    """``sub`` (a sub-pipeline) as a function of its artifacts alone: every other input is the calling
    pipeline's parameter of the same name, from ``params`` (its ``locals()``; a missing one is a KeyError
    at compile time)."""

    def call(**artifacts: Any) -> PipelineTask:
        return sub(**artifacts, **{name: params[name] for name in sub.component_spec.inputs if name not in artifacts})

    return call
