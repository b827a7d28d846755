"""offline-distillation: the teacher labels the student's data once, in parallel shards; the student learns from the stored labels.

The teacher and data are the user's (``teacher_model_uri``, ``student_data_uri``, ``test_data_uri``,
imported by URI) or, with those empty, the demo's (prepare-data -> train-teacher); then
teacher-serve -> pseudo-label x N shards (ParallelFor) -> student-train (offline, on the collected
shards) -> evaluate, inside an exit handler that tears the teacher down.
"""

from kfp import dsl
from kfp.dsl import Dataset, Model
from kfp.dsl.graph_component import GraphComponent

from crossdistill.components.evaluate.component import evaluate
from crossdistill.components.pseudo_label.component import pseudo_label
from crossdistill.components.student_train.component import student_train
from crossdistill.pipelines import placement as pl
from crossdistill.pipelines.common import (
    bind,
    deterministic,
    serve_task,
    single_teacher_sources,
    teardown_task,
)

NAME = "offline-distillation"

# A pipeline run on the user's data needs these set with it (run-local checks before it starts).
REQUIRED_WITH = {"student_data_uri": ("teacher_model_uri", "test_data_uri")}


def build(placement: pl.Placement | None = None, label_parallelism: int = 4) -> GraphComponent:
    """The pipeline, with node-pool placement ``placement`` (default: TPU teacher, GPU student).

    ``label_parallelism`` caps the shards labelled at once (KFP needs it at compile time).
    """
    placement = placement or pl.Placement()
    server_placement = pl.teacher_server_placement_json(placement)
    student_placement = pl.student_launch_placement_json(placement)
    auth = pl.client_auth(placement)

    # The shard loop sits in its own sub-DAG so the endpoint enters it as a DAG input: kfp.local
    # 2.17 replaces any task output fed straight into a ParallelFor with the loop item.
    @dsl.pipeline(name="label-shards", description="pseudo-label every shard in parallel")
    def label_shards(data: Dataset, teacher_endpoint: str, shards: list, top_k: int, temperature: float,
                     config_json: str) -> list[Dataset]:
        with dsl.ParallelFor(shards, parallelism=label_parallelism, name="each-shard") as shard:
            labels = pseudo_label(data=data, teacher_endpoint=teacher_endpoint, shard_index=shard, shards=shards,
                                  top_k=top_k, temperature=temperature, config_json=config_json, **auth)
            deterministic(pl.teacher_client(pl.on_cpu(labels, placement), placement), retries=2)
        return dsl.Collected(labels.outputs["soft_labels"])

    @dsl.pipeline(name="distil-offline", description="serve the teacher, label in shards, train offline, evaluate")
    def distil_offline(student_data: Dataset, test_data: Dataset, teacher_model: Model, teacher_backend: str,
                       teacher_name_prefix: str, teacher_placement_json: str, teacher_serve_config_json: str,
                       teacher_replicas: int,
                       shards: list, top_k: int, label_temperature: float, label_config_json: str,
                       student_model: str, student_epochs: int, temperature: float, student_seed: int,
                       student_config_json: str, student_workers: int,
                       student_launch_json: str, eval_config_json: str, threads: int):
        served = serve_task(placement, teacher_model, backend=teacher_backend, name_prefix=teacher_name_prefix,
                            replicas=teacher_replicas, placement_json=teacher_placement_json,
                            config_json=teacher_serve_config_json)
        labels = label_shards(data=student_data, teacher_endpoint=served.outputs["endpoint"], shards=shards,
                              top_k=top_k, temperature=label_temperature, config_json=label_config_json)
        student = student_train(train_data=student_data, mode="offline", soft_labels=labels.output,
                                student_model=student_model, epochs=student_epochs, temperature=temperature,
                                seed=student_seed, threads=threads, config_json=student_config_json,
                                workers=student_workers, launch_json=student_launch_json)
        deterministic(pl.on_student_train(student, placement), retries=3)
        scored = evaluate(test_data=test_data, student=student.outputs["model"],
                          teacher_endpoint=served.outputs["endpoint"], title="offline distillation",
                          threads=threads, config_json=eval_config_json, **auth)
        deterministic(pl.teacher_client(pl.on_student_pool(scored, placement), placement), retries=1)

    @dsl.pipeline(name=NAME, description="Pseudo-label in parallel shards with a served teacher (yours by URI, or the "
                                         "demo's), then distil offline.")
    def offline_distillation(
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
        shards: list = [0, 1],  # noqa: B006 - KFP defaults are compile-time constants
        top_k: int = 0,
        label_temperature: float = 1.0,
        label_config_json: str = "{}",
        student_model: str = "mlp",
        student_epochs: int = 30,
        temperature: float = 4.0,
        student_seed: int = 0,
        student_config_json: str = "{}",
        student_workers: int = 1,
        student_launch_json: str = student_placement,
        eval_config_json: str = "{}",
        threads: int = 1,
    ):
        params = locals()  # this pipeline's parameters
        teardown = teardown_task(placement, backend=teacher_backend, name_prefix=teacher_name_prefix,
                                 config_json=teacher_serve_config_json)
        with dsl.ExitHandler(teardown, name="teacher-lifetime"):
            single_teacher_sources(placement, params, bind(distil_offline, params))

    return offline_distillation


offline_distillation = build()
