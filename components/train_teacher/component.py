"""train-teacher: train the demo Keras teacher (the teacher owner's side) into a Model artifact."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from crossdistill.components._common import TEACHER, image


@dsl.component(base_image=image(TEACHER), install_kfp_package=False)
def train_teacher(
    train: Input[Dataset],
    val: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    epochs: int = 40,
    arch: str = "mlp",
    seed: int = 0,
    threads: int = 1,
    classes: list = [],  # noqa: B006 - KFP defaults are compile-time constants
    max_examples: int = 0,
    config_json: str = "{}",
) -> NamedTuple("Outputs", [("label_map", list)]):
    """Train with crossdistill.teacher.train_keras; the model is ``<model>/teacher.keras``.

    ``classes`` (non-empty) makes a specialist trained on, and outputting, only those global classes;
    ``max_examples`` (> 0) a weak teacher trained on that many examples. The output ``label_map``
    (teacher output index -> global class id, identity for a generalist) is also in the model's
    metadata; pseudo-label writes it into the tables so the multi-teacher steps read the teacher right.
    ``config_json`` holds any other TeacherTrainConfig key; the explicit parameters win over it.
    """
    import os
    from collections import namedtuple

    from crossdistill.config import step_config
    from crossdistill.teacher.train_keras import TeacherTrainConfig, train_keras_teacher

    os.makedirs(model.path, exist_ok=True)
    cfg = step_config(TeacherTrainConfig, config_json, {
        "train": train.path, "val": val.path, "out": os.path.join(model.path, "teacher.keras"),
        "epochs": epochs, "arch": arch, "seed": seed, "threads": threads,
        **({"classes": [int(c) for c in classes]} if classes else {}),
        **({"max_examples": max_examples} if max_examples > 0 else {})}, "train-teacher")
    result = train_keras_teacher(cfg)
    model.metadata.update({"file": "teacher.keras", "framework": "keras", "arch": cfg.arch,
                           "label_map": result["label_map"], "num_classes": result["num_classes"]})
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    return namedtuple("Outputs", ["label_map"])(result["label_map"])
