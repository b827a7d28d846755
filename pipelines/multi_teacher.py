"""multi-teacher-distillation: several teachers label the data; experts and trust models decide what the student learns.

prepare-data -> for each teacher (ParallelFor): train-teacher -> teacher-serve -> pseudo-label val
and unlabeled -> expert-evaluate and trust-model-train on the val tables -> assemble the unlabeled
tables into one distillation set -> student-train (offline, on the unlabeled part) -> evaluate against every teacher; an
exit handler tears every teacher down.
"""

from components.assemble.component import assemble
from components.evaluate.component import evaluate
from components.expert_evaluate.component import expert_evaluate
from components.pseudo_label.component import pseudo_label
from components.student_train.component import student_train
from components.trust_model_train.component import trust_model_train
from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from pipelines import placement as pl
from pipelines.common import data_task, deterministic, serve_task, teacher_task, teardown_task

NAME = "multi-teacher-distillation"

# One item per teacher: "teacher" names it (not "name": a loop item's .name is KFP's own attribute).
# The shipped scenario (the patent's dog-breed example on digits): three specialists, each trained on
# and outputting only its classes ("classes"), and one weak generalist trained on a handful of examples
# ("max_examples"); [] / 0 mean every class / every example. Every item carries every key.
DEFAULT_TEACHERS = [
    {"teacher": "specialist0", "arch": "mlp", "seed": 1, "classes": [0, 1, 2, 3], "max_examples": 0},
    {"teacher": "specialist1", "arch": "mlp", "seed": 2, "classes": [3, 4, 5, 6], "max_examples": 0},
    {"teacher": "specialist2", "arch": "mlp", "seed": 3, "classes": [6, 7, 8, 9, 0], "max_examples": 0},
    {"teacher": "generalist", "arch": "mlp", "seed": 4, "classes": [], "max_examples": 30},
]


def build(placement: pl.Placement | None = None, teacher_parallelism: int = 4) -> GraphComponent:
    """The pipeline, with node-pool placement ``placement``; ``teacher_parallelism`` teachers at once."""
    placement = placement or pl.Placement()
    server_placement = pl.teacher_server_placement_json(placement)

    @dsl.pipeline(name=NAME, description="Several teachers label the data; per-label experts and trust models "
                                         "assemble the set the student distils from.")
    def multi_teacher_distillation(
        teachers: list = DEFAULT_TEACHERS,
        dataset: str = "digits",
        student_labels: int = 64,
        data_seed: int = 0,
        data_config_json: str = "{}",
        teacher_epochs: int = 40,
        teacher_config_json: str = "{}",
        teacher_backend: str = "local",
        teacher_name_prefix: str = "crossdistill-teacher",
        teacher_serve_config_json: str = "{}",
        teacher_placement_json: str = server_placement,
        label_config_json: str = "{}",
        expert_metric: str = "f1",
        expert_min_score: float = 0.5,
        expert_config_json: str = "{}",
        trust_model: str = "logreg",
        trust_joint_model: str = "mlp",
        trust_config_json: str = "{}",
        assemble_method: str = "trust",
        min_trust: float = 0.5,
        keep_uncovered: bool = True,
        assemble_config_json: str = "{}",
        student_model: str = "mlp",
        student_epochs: int = 30,
        temperature: float = 4.0,
        student_seed: int = 0,
        student_config_json: str = "{}",
        eval_config_json: str = "{}",
        threads: int = 1,
    ):
        teardown = teardown_task(placement, backend=teacher_backend, name_prefix=teacher_name_prefix,
                                 teacher_ids=teachers, config_json=teacher_serve_config_json)
        with dsl.ExitHandler(teardown, name="teachers-lifetime"):
            data = data_task(placement, dataset=dataset, student_labels=student_labels, seed=data_seed,
                             config_json=data_config_json)
            with dsl.ParallelFor(teachers, parallelism=teacher_parallelism, name="each-teacher") as t:
                teacher = teacher_task(placement, data, epochs=teacher_epochs, arch=t.arch, seed=t.seed,
                                       threads=threads, classes=t.classes, max_examples=t.max_examples,
                                       config_json=teacher_config_json)
                served = serve_task(placement, teacher, backend=teacher_backend, name_prefix=teacher_name_prefix,
                                    teacher_id=t.teacher, placement_json=teacher_placement_json,
                                    config_json=teacher_serve_config_json)
                val_labels = pseudo_label(data=data.outputs["val"], teacher_endpoint=served.outputs["endpoint"],
                                          teacher_name=t.teacher, label_map=teacher.outputs["label_map"],
                                          config_json=label_config_json)
                deterministic(pl.teacher_client(pl.on_cpu(val_labels, placement)), retries=2).set_display_name("label-val")
                pool_labels = pseudo_label(data=data.outputs["unlabeled"],
                                           teacher_endpoint=served.outputs["endpoint"], teacher_name=t.teacher,
                                           label_map=teacher.outputs["label_map"], config_json=label_config_json)
                deterministic(pl.teacher_client(pl.on_cpu(pool_labels, placement)), retries=2).set_display_name("label-unlabeled")
            experts = expert_evaluate(val=data.outputs["val"],
                                      val_tables=dsl.Collected(val_labels.outputs["soft_labels"]), metric=expert_metric,
                                      min_score=expert_min_score, config_json=expert_config_json)
            deterministic(pl.on_cpu(experts, placement))
            trust = trust_model_train(val=data.outputs["val"], model=trust_model,
                                      val_tables=dsl.Collected(val_labels.outputs["soft_labels"]),
                                      joint_model=trust_joint_model, seed=data_seed, config_json=trust_config_json)
            deterministic(pl.on_cpu(trust, placement), retries=1)
            distill_set = assemble(unlabeled=data.outputs["unlabeled"],
                                   unlabeled_tables=dsl.Collected(pool_labels.outputs["soft_labels"]),
                                   experts=experts.outputs["experts"], trust_models=trust.outputs["trust_models"],
                                   method=assemble_method, min_trust=min_trust, keep_uncovered=keep_uncovered,
                                   config_json=assemble_config_json)
            deterministic(pl.on_cpu(distill_set, placement))
            # The student learns from the assembled labels of the unlabeled part (every id has one).
            student = student_train(train_data=data.outputs["unlabeled"], mode="offline",
                                    soft_label_set=distill_set.outputs["distill_set"], student_model=student_model,
                                    epochs=student_epochs, temperature=temperature, seed=student_seed,
                                    threads=threads, config_json=student_config_json)
            deterministic(pl.on_student_pool(student, placement), retries=3)
            scored = evaluate(test_data=data.outputs["test"], student=student.outputs["model"],
                              teacher_endpoints=dsl.Collected(served.outputs["endpoint"]),
                              teacher_label_maps=dsl.Collected(teacher.outputs["label_map"]),
                              title="multi-teacher distillation", threads=threads, config_json=eval_config_json)
            deterministic(pl.on_student_pool(scored, placement), retries=1)

    return multi_teacher_distillation


multi_teacher_distillation = build()
