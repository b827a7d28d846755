"""online-distillation: the student learns from a served teacher over gRPC, batch by batch.

The teacher and data are the user's (``teacher_model_uri``, ``student_data_uri``, ``test_data_uri``,
imported by URI) or, with those empty, the demo's (prepare-data -> train-teacher); then teacher-serve
-> student-train (online) -> evaluate, all inside an exit handler whose teacher-teardown removes the
served teacher however the run ends.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Model
from kfp.dsl.graph_component import GraphComponent

from crossdistill.components.evaluate.component import evaluate
from crossdistill.components.student_train.component import student_train
from crossdistill.pipelines import placement as pl
from crossdistill.pipelines.common import (
    bind,
    deterministic,
    serve_task,
    single_teacher_sources,
    teardown_task,
)

NAME = "online-distillation"

class DistilOutputs(NamedTuple):
    """What the distil-online sub-pipeline hands back: the teacher's gRPC address and the student."""

    endpoint: str
    student: Model


# A pipeline run on the user's data needs these set with it (run-local checks before it starts).
REQUIRED_WITH = {"student_data_uri": ("teacher_model_uri", "test_data_uri")}


def build(placement: pl.Placement | None = None) -> GraphComponent:
    """The pipeline, with node-pool placement ``placement`` (default: TPU teacher, GPU student)."""
    placement = placement or pl.Placement()
    server_placement = pl.teacher_server_placement_json(placement)
    student_placement = pl.student_launch_placement_json(placement)
    auth = pl.client_auth(placement)

    @dsl.pipeline(name="distil-online", description="serve the teacher, train the student online, evaluate")
    def distil_online(student_data: Dataset, test_data: Dataset, teacher_model: Model, teacher_backend: str,
                      teacher_name_prefix: str, teacher_placement_json: str, teacher_serve_config_json: str,
                      teacher_replicas: int,
                      student_model: str, student_epochs: int, temperature: float, student_seed: int,
                      student_config_json: str, student_workers: int,
                      student_launch_json: str, eval_config_json: str, threads: int,
                      ) -> DistilOutputs:
        served = serve_task(placement, teacher_model, backend=teacher_backend, name_prefix=teacher_name_prefix,
                            replicas=teacher_replicas, placement_json=teacher_placement_json,
                            config_json=teacher_serve_config_json)
        student = student_train(train_data=student_data, mode="online", teacher_endpoint=served.outputs["endpoint"],
                                student_model=student_model, epochs=student_epochs, temperature=temperature,
                                seed=student_seed, threads=threads, config_json=student_config_json,
                                workers=student_workers, launch_json=student_launch_json, **auth)
        deterministic(pl.teacher_client(pl.on_student_train(student, placement), placement), retries=3)
        scored = evaluate(test_data=test_data, student=student.outputs["model"],
                          teacher_endpoint=served.outputs["endpoint"], title="online distillation",
                          threads=threads, config_json=eval_config_json, **auth)
        deterministic(pl.teacher_client(pl.on_student_pool(scored, placement), placement), retries=1)
        return DistilOutputs(served.outputs["endpoint"], student.outputs["model"])

    @dsl.pipeline(name=NAME, description="Distil a teacher (Keras, TorchScript, ONNX) into a PyTorch student online "
                                         "over gRPC (OIP v2): yours by URI, or the demo's.")
    def online_distillation(
        teacher_model_uri: str = "",
        student_data_uri: str = "",
        test_data_uri: str = "",
        dataset: str = "digits",
        student_labels: int = 64,
        data_seed: int = 0,
        data_config_json: str = "{}",
        teacher_arch: str = "mlp",
        teacher_epochs: int = 40,
        teacher_config_json: str = "{}",
        teacher_backend: str = "local",
        teacher_name_prefix: str = "crossdistill-teacher",
        teacher_serve_config_json: str = "{}",
        teacher_replicas: int = 1,
        teacher_placement_json: str = server_placement,
        student_model: str = "mlp",
        student_epochs: int = 30,
        temperature: float = 4.0,
        student_seed: int = 0,
        student_config_json: str = "{}",
        student_workers: int = 1,
        student_launch_json: str = student_placement,
        eval_config_json: str = "{}",
        compare_baselines: bool = False,
        threads: int = 1,
    ):
        params = locals()  # this pipeline's parameters

        def baselines(data, run) -> None:
            """The same student on the student owner's few labels alone, and (for reference) on all labels."""
            with dsl.If(compare_baselines == True, name="compare-baselines"):  # noqa: E712 - a KFP condition
                few = student_train(train_data=data.outputs["student"], mode="hard", student_model=student_model,
                                    epochs=student_epochs, seed=student_seed, threads=threads,
                                    config_json=student_config_json).set_display_name("student-few-labels")
                full = student_train(train_data=data.outputs["train"], mode="hard", student_model=student_model,
                                     epochs=student_epochs, seed=student_seed, threads=threads,
                                     config_json=student_config_json).set_display_name("student-all-labels")
                for task in (few, full):
                    deterministic(pl.on_student_pool(task, placement), retries=3)
                compared = evaluate(test_data=data.outputs["test"], student=run.outputs["student"],
                                    teacher_endpoint=run.outputs["endpoint"], baseline=few.outputs["model"],
                                    baseline_name="few labels only", reference=full.outputs["model"],
                                    reference_name="all labels (reference)",
                                    title="online distillation vs. the student's baselines", threads=threads,
                                    config_json=eval_config_json, **auth).set_display_name("evaluate-vs-baselines")
                deterministic(pl.teacher_client(pl.on_student_pool(compared, placement), placement), retries=1)

        teardown = teardown_task(placement, backend=teacher_backend, name_prefix=teacher_name_prefix,
                                 config_json=teacher_serve_config_json)
        with dsl.ExitHandler(teardown, name="teacher-lifetime"):
            single_teacher_sources(placement, params, bind(distil_online, params), demo_extras=baselines)

    return online_distillation


online_distillation = build()
