"""online-distillation: the student learns from a served teacher over gRPC, batch by batch.

prepare-data -> train-teacher -> teacher-serve -> student-train (online) -> evaluate, all inside an
exit handler whose teacher-teardown removes the served teacher however the run ends.
"""


from components.evaluate.component import evaluate
from components.student_train.component import student_train
from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from pipelines import placement as pl
from pipelines.common import deterministic, prepare_train_serve, teardown_task

NAME = "online-distillation"


def build(placement: pl.Placement | None = None) -> GraphComponent:
    """The pipeline, with node-pool placement ``placement`` (default: TPU teacher, GPU student)."""
    placement = placement or pl.Placement()
    server_placement = pl.teacher_server_placement_json(placement)

    @dsl.pipeline(name=NAME, description="Distil a Keras teacher into a PyTorch student online over gRPC (OIP v2).")
    def online_distillation(
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
        teacher_placement_json: str = server_placement,
        student_model: str = "mlp",
        student_epochs: int = 30,
        temperature: float = 4.0,
        student_seed: int = 0,
        student_config_json: str = "{}",
        eval_config_json: str = "{}",
        compare_baselines: bool = False,
        threads: int = 1,
    ):
        teardown = teardown_task(placement, backend=teacher_backend, name_prefix=teacher_name_prefix,
                                 config_json=teacher_serve_config_json)
        with dsl.ExitHandler(teardown, name="teacher-lifetime"):
            data, _, served = prepare_train_serve(placement, locals())  # this pipeline's parameters
            student = student_train(train_data=data.outputs["student"], mode="online",
                                    teacher_endpoint=served.outputs["endpoint"], student_model=student_model,
                                    epochs=student_epochs, temperature=temperature, seed=student_seed,
                                    threads=threads, config_json=student_config_json)
            deterministic(pl.on_student_pool(student, placement), retries=3)
            scored = evaluate(test_data=data.outputs["test"], student=student.outputs["model"],
                              teacher_endpoint=served.outputs["endpoint"], title="online distillation",
                              threads=threads, config_json=eval_config_json)
            deterministic(pl.on_student_pool(scored, placement), retries=1)
            with dsl.If(compare_baselines == True, name="compare-baselines"):  # noqa: E712 - a KFP condition
                # The same student on the student owner's few labels alone, and (for reference) on all labels.
                few = student_train(train_data=data.outputs["student"], mode="hard", student_model=student_model,
                                    epochs=student_epochs, seed=student_seed, threads=threads,
                                    config_json=student_config_json).set_display_name("student-few-labels")
                full = student_train(train_data=data.outputs["train"], mode="hard", student_model=student_model,
                                     epochs=student_epochs, seed=student_seed, threads=threads,
                                     config_json=student_config_json).set_display_name("student-all-labels")
                for task in (few, full):
                    deterministic(pl.on_student_pool(task, placement), retries=3)
                compared = evaluate(test_data=data.outputs["test"], student=student.outputs["model"],
                                    teacher_endpoint=served.outputs["endpoint"], baseline=few.outputs["model"],
                                    baseline_name="few labels only", reference=full.outputs["model"],
                                    reference_name="all labels (reference)",
                                    title="online distillation vs. the student's baselines", threads=threads,
                                    config_json=eval_config_json).set_display_name("evaluate-vs-baselines")
                deterministic(pl.on_student_pool(compared, placement), retries=1)

    return online_distillation


online_distillation = build()
