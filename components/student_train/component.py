"""student-train: train the PyTorch student online (teacher endpoint), offline (soft labels) or on hard labels."""


from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from crossdistill.components._common import STUDENT, image


@dsl.component(base_image=image(STUDENT), install_kfp_package=False)
def student_train(
    train_data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    mode: str = "online",
    teacher_endpoint: str = "",
    teacher_token_file: str = "",
    teacher_ca_file: str = "",
    soft_labels: Input[list[Dataset]] = None,
    soft_label_set: Input[Dataset] = None,
    student_model: str = "mlp",
    epochs: int = 30,
    temperature: float = 4.0,
    seed: int = 0,
    threads: int = 1,
    workers: int = 1,
    launch_json: str = "{}",
    config_json: str = "{}",
):
    """Train with crossdistill.deploy.student.run_student_train into ``<model>``.

    ``mode``: ``online`` talks to ``teacher_endpoint`` (gRPC host:port) every batch, ``offline``
    reads the collected ``soft_labels`` shards and/or one
    ``soft_label_set`` (the multi-teacher assembled set), ``hard`` uses the labels alone. Checkpoints go to
    ``<model>/checkpoints`` and training resumes from them, so a retried task continues where the
    failed one stopped wherever the output path survives a retry (FUSE-mounted object storage).
    ``teacher_token_file`` / ``teacher_ca_file`` (paths of the pipeline's mounted Secrets, empty = none)
    become the teacher client's ``token_file`` and ``tls.ca_file``.
    ``launch_json`` (StudentLaunchConfig keys) says where training runs: ``backend`` ``local`` in this task
    (``workers`` > 1: data-parallel ranks under torchrun), ``trainjob`` / ``pytorchjob`` in a Kubeflow Trainer
    TrainJob / PyTorchJob of ``workers`` processes that this task creates and waits for, placed by the
    other keys (resources, node_selector, tolerations, ...).
    ``config_json`` holds any other StudentTrainConfig key; the explicit parameters win over it.
    """
    import os

    from crossdistill.config import json_object, step_config
    from crossdistill.deploy.student import StudentTrainConfig, run_student_train
    from crossdistill.errors import ConfigError

    auth = {**({"token_file": teacher_token_file} if teacher_token_file else {}),
            **({"tls": {"ca_file": teacher_ca_file}} if teacher_ca_file else {})}
    data = {"train_data": train_data.path, "out": model.path, "mode": mode, "epochs": epochs,
            "temperature": temperature, "seed": seed, "threads": threads, "resume": True, "progress": False,
            "model": {"name": student_model}, "workers": workers}
    if mode == "online":
        if not teacher_endpoint:
            raise ConfigError("student-train: mode=online needs teacher_endpoint (gRPC host:port of teacher-serve)")
        data["teacher"] = {"url": teacher_endpoint, **auth}
    if mode == "offline":
        paths = [a.path for a in (soft_labels or [])] + ([soft_label_set.path] if soft_label_set else [])
        if not paths:
            raise ConfigError("student-train: mode=offline needs soft_labels (pseudo-label shards) or soft_label_set")
        data["soft_labels"] = paths
    os.makedirs(model.path, exist_ok=True)
    placed = {"launch": json_object(launch_json, "student-train: launch_json")}
    result = run_student_train(step_config(StudentTrainConfig, config_json, data, "student-train", defaults=placed))
    model_uri = str(result.model_uri)
    model.metadata.update({"file": os.path.relpath(model_uri, model.path), "framework": "pytorch",
                           "mode": mode, "model": student_model})
    for key, value in sorted(vars(result).items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
