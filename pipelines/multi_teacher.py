"""multi-teacher-distillation: several teachers label the data; experts and trust models decide what the student learns.

The teachers and data are the user's (each ``teachers`` item's ``model_uri``, and ``val_data_uri``,
``unlabeled_data_uri``, ``test_data_uri``, imported by URI) or, with ``val_data_uri`` empty, the demo's
(prepare-data, then train-teacher per item). For each teacher (ParallelFor): teacher-serve ->
pseudo-label val and unlabeled; then expert-evaluate and trust-model-train on the val tables ->
assemble the unlabeled tables into one distillation set -> student-train (offline, on the unlabeled
part) -> evaluate against every teacher; an exit handler tears every teacher down.
"""

from collections.abc import Mapping
from typing import Any

from kfp import dsl
from kfp.dsl import Dataset, Model, PipelineTask
from kfp.dsl.graph_component import GraphComponent

from crossdistill.components.assemble.component import assemble
from crossdistill.components.evaluate.component import evaluate
from crossdistill.components.expert_evaluate.component import expert_evaluate
from crossdistill.components.pseudo_label.component import pseudo_label
from crossdistill.components.student_train.component import student_train
from crossdistill.components.trust_model_train.component import trust_model_train
from crossdistill.pipelines import placement as pl
from crossdistill.pipelines.common import (
    data_task,
    deterministic,
    imported,
    serve_task,
    teacher_task,
    teardown_task,
)

NAME = "multi-teacher-distillation"

# One item per teacher: "teacher" names it (not "name": a loop item's .name is KFP's own attribute).
# The shipped scenario (the patent's dog-breed example on digits): three specialists, each trained on
# and outputting only its classes ("classes"), and one weak generalist trained on a handful of examples
# ("max_examples"); [] / 0 mean every class / every example. Every item carries every key. On the
# user's data (val_data_uri set) each item's "model_uri" is the user's teacher, "classes" its label map
# (output index i = global class classes[i]; [] = every class in order); arch/seed/max_examples are unused.
DEFAULT_TEACHERS = [
    {"teacher": "specialist0", "arch": "mlp", "seed": 1, "classes": [0, 1, 2, 3], "max_examples": 0, "model_uri": ""},
    {"teacher": "specialist1", "arch": "mlp", "seed": 2, "classes": [3, 4, 5, 6], "max_examples": 0, "model_uri": ""},
    {"teacher": "specialist2", "arch": "mlp", "seed": 3, "classes": [6, 7, 8, 9, 0], "max_examples": 0,
     "model_uri": ""},
    {"teacher": "generalist", "arch": "mlp", "seed": 4, "classes": [], "max_examples": 30, "model_uri": ""},
]

# A pipeline run on the user's data needs these set with it (run-local checks before it starts), and
# every ``teachers`` item's "model_uri".
REQUIRED_WITH = {"val_data_uri": ("unlabeled_data_uri", "test_data_uri")}


def _learn_from_tables(placement: pl.Placement, p: Mapping[str, Any], val: Any, unlabeled: Any, test: Any,
                       val_labels: PipelineTask, pool_labels: PipelineTask, served: PipelineTask,
                       label_maps: Any) -> None:
    """expert-evaluate, trust-model-train, assemble, student-train and evaluate on the loop's tables.

    ``p`` is the pipeline's parameters (its ``locals()``); ``val_labels`` / ``pool_labels`` / ``served``
    are the loop's pseudo-label and teacher-serve tasks, collected here; ``label_maps`` evaluate's
    ``teacher_label_maps``.
    """
    auth = pl.client_auth(placement)
    experts = expert_evaluate(val=val, val_tables=dsl.Collected(val_labels.outputs["soft_labels"]),
                              metric=p["expert_metric"], min_score=p["expert_min_score"],
                              config_json=p["expert_config_json"])
    deterministic(pl.on_cpu(experts, placement))
    trust = trust_model_train(val=val, model=p["trust_model"], val_tables=dsl.Collected(val_labels.outputs["soft_labels"]),
                              joint_model=p["trust_joint_model"], seed=p["data_seed"], config_json=p["trust_config_json"])
    deterministic(pl.on_cpu(trust, placement), retries=1)
    distill_set = assemble(unlabeled=unlabeled, unlabeled_tables=dsl.Collected(pool_labels.outputs["soft_labels"]),
                           experts=experts.outputs["experts"], trust_models=trust.outputs["trust_models"],
                           method=p["assemble_method"], min_trust=p["min_trust"], keep_uncovered=p["keep_uncovered"],
                           config_json=p["assemble_config_json"])
    deterministic(pl.on_cpu(distill_set, placement))
    # The student learns from the assembled labels of the unlabeled part (every id has one).
    student = student_train(train_data=unlabeled, mode="offline", soft_label_set=distill_set.outputs["distill_set"],
                            student_model=p["student_model"], epochs=p["student_epochs"], temperature=p["temperature"],
                            seed=p["student_seed"], threads=p["threads"], config_json=p["student_config_json"],
                            workers=p["student_workers"], launch_json=p["student_launch_json"])
    deterministic(pl.on_student_train(student, placement), retries=3)
    scored = evaluate(test_data=test, student=student.outputs["model"],
                      teacher_endpoints=dsl.Collected(served.outputs["endpoint"]), teacher_label_maps=label_maps,
                      title="multi-teacher distillation", threads=p["threads"], config_json=p["eval_config_json"],
                      **auth)
    deterministic(pl.teacher_client(pl.on_student_pool(scored, placement), placement), retries=1)


def _label(placement: pl.Placement, p: Mapping[str, Any], data: Any, served: PipelineTask, teacher: Any,
           label_map: Any, display_name: str) -> PipelineTask:
    """pseudo-label of ``data`` by the loop's served teacher (named ``teacher``), a teacher client."""
    task = pseudo_label(data=data, teacher_endpoint=served.outputs["endpoint"], teacher_name=teacher,
                        label_map=label_map, config_json=p["label_config_json"], **pl.client_auth(placement))
    return deterministic(pl.teacher_client(pl.on_cpu(task, placement), placement), retries=2).set_display_name(
        display_name)


def build(placement: pl.Placement | None = None, teacher_parallelism: int = 4) -> GraphComponent:
    """The pipeline, with node-pool placement ``placement``; ``teacher_parallelism`` teachers at once."""
    placement = placement or pl.Placement()
    server_placement = pl.teacher_server_placement_json(placement)
    student_placement = pl.student_launch_placement_json(placement)

    @dsl.pipeline(name=NAME, description="Several teachers label the data; per-label experts and trust models "
                                         "assemble the set the student distils from.")
    def multi_teacher_distillation(
        teachers: list = DEFAULT_TEACHERS,
        val_data_uri: str = "",
        unlabeled_data_uri: str = "",
        test_data_uri: str = "",
        dataset: str = "digits",
        student_labels: int = 64,
        data_seed: int = 0,
        data_config_json: str = "{}",
        teacher_epochs: int = 40,
        teacher_config_json: str = "{}",
        teacher_backend: str = "local",
        teacher_name_prefix: str = "crossdistill-teacher",
        teacher_serve_config_json: str = "{}",
        teacher_replicas: int = 1,
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
        student_workers: int = 1,
        student_launch_json: str = student_placement,
        eval_config_json: str = "{}",
        threads: int = 1,
    ):
        p = locals()  # this pipeline's parameters
        teardown = teardown_task(placement, backend=teacher_backend, name_prefix=teacher_name_prefix,
                                 teacher_ids=teachers, config_json=teacher_serve_config_json)
        serve = {"backend": teacher_backend, "name_prefix": teacher_name_prefix,
                 "placement_json": teacher_placement_json, "config_json": teacher_serve_config_json,
                 "replicas": teacher_replicas}
        with dsl.ExitHandler(teardown, name="teachers-lifetime"):
            with dsl.If(val_data_uri == "", name="demo-data"):
                data = data_task(placement, dataset=dataset, student_labels=student_labels, seed=data_seed,
                                 config_json=data_config_json)
                with dsl.ParallelFor(teachers, parallelism=teacher_parallelism, name="each-teacher") as t:
                    teacher = teacher_task(placement, data, epochs=teacher_epochs, arch=t.arch, seed=t.seed,
                                           threads=threads, classes=t.classes, max_examples=t.max_examples,
                                           config_json=teacher_config_json)
                    served = serve_task(placement, teacher.outputs["model"], teacher_id=t.teacher, **serve)
                    val_labels = _label(placement, p, data.outputs["val"], served, t.teacher,
                                        teacher.outputs["label_map"], "label-val")
                    pool_labels = _label(placement, p, data.outputs["unlabeled"], served, t.teacher,
                                         teacher.outputs["label_map"], "label-unlabeled")
                _learn_from_tables(placement, p, data.outputs["val"], data.outputs["unlabeled"], data.outputs["test"],
                                   val_labels, pool_labels, served, dsl.Collected(teacher.outputs["label_map"]))
            with dsl.Else(name="your-data"):
                val = imported(val_data_uri, Dataset, "import-val-data")
                unlabeled = imported(unlabeled_data_uri, Dataset, "import-unlabeled-data")
                test = imported(test_data_uri, Dataset, "import-test-data")
                with dsl.ParallelFor(teachers, parallelism=teacher_parallelism, name="each-teacher") as t:
                    served = serve_task(placement, imported(t.model_uri, Model, "import-teacher"),
                                        teacher_id=t.teacher, **serve)
                    val_labels = _label(placement, p, val, served, t.teacher, t.classes, "label-val")
                    pool_labels = _label(placement, p, unlabeled, served, t.teacher, t.classes, "label-unlabeled")
                # evaluate reads each item's "classes" as that teacher's label map.
                _learn_from_tables(placement, p, val, unlabeled, test, val_labels, pool_labels, served, teachers)

    return multi_teacher_distillation


multi_teacher_distillation = build()
