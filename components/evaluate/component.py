"""evaluate: score the student (and its teachers) on the test split; metrics, confusion matrix, report."""


from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from crossdistill.components._common import STUDENT, image


@dsl.component(base_image=image(STUDENT), install_kfp_package=False)
def evaluate(
    test_data: Input[Dataset],
    student: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Markdown],
    exported: Output[Model],
    teacher_endpoint: str = "",
    teacher_token_file: str = "",
    teacher_ca_file: str = "",
    teacher_endpoints: list[str] = [],  # noqa: B006 - KFP defaults are compile-time constants
    teacher_label_maps: list = [],  # noqa: B006 - KFP defaults are compile-time constants
    baseline: Input[Model] = None,
    baseline_name: str = "baseline",
    reference: Input[Model] = None,
    reference_name: str = "reference",
    title: str = "crossdistill student",
    threads: int = 1,
    config_json: str = "{}",
):
    """Run crossdistill.evaluate.run.run_evaluate; ``exported`` holds TorchScript + ONNX and metrics.json.

    ``teacher_endpoint`` (the one teacher) adds teacher accuracy, calibration, latency and the
    student's agreement with it (``teacher_*`` metrics). ``teacher_endpoints`` (every teacher of a
    multi-teacher run) are scored as ``teacher0``, ``teacher1``, ... with the student's agreement,
    plus their average and majority vote (``ensemble_*``); ``teacher_label_maps`` (train-teacher's
    ``label_map`` outputs, or the multi-teacher pipeline's ``teachers`` items, whose ``classes`` is the
    label map; one per entry of ``teacher_endpoints``; empty = every teacher outputs every class) maps
    a specialist's narrower outputs onto the global classes, and ``teacher<i>_covered_accuracy`` is its accuracy on its own classes. ``baseline`` and
    ``reference`` (optional) are further students scored beside it in the comparison table.
    ``teacher_token_file`` / ``teacher_ca_file`` (paths of the pipeline's mounted Secrets, empty = none)
    become the teacher clients' ``token_file`` and ``tls.ca_file``.
    ``config_json`` holds any other EvaluateConfig key; the explicit parameters win over it.
    """
    import os
    import shutil

    from crossdistill.config import step_config
    from crossdistill.evaluate.run import EvaluateConfig, run_evaluate
    from crossdistill.evaluate.teachers import endpoint_teachers

    def model_file(artifact: Model) -> str:
        file = artifact.metadata.get("file", "")
        return os.path.join(artifact.path, file) if file else artifact.path

    auth = {**({"token_file": teacher_token_file} if teacher_token_file else {}),
            **({"tls": {"ca_file": teacher_ca_file}} if teacher_ca_file else {})}
    explicit = {"test_data": test_data.path, "student": model_file(student), "out": exported.path,
                "title": title, "threads": threads}
    students = {name: model_file(a) for name, a in ((baseline_name, baseline), (reference_name, reference)) if a}
    if students:
        explicit["baselines"] = students
    if teacher_endpoint:
        explicit["teacher"] = {"url": teacher_endpoint, **auth}
    if teacher_endpoints:
        # Items are label maps, or teacher items whose "classes" is one (the pipeline's teachers list).
        label_maps = [m.get("classes") or [] if isinstance(m, dict) else m for m in teacher_label_maps]
        explicit["teachers"] = [{**t, "client": {**t["client"], **auth}}
                                for t in endpoint_teachers(teacher_endpoints, label_maps)]
    os.makedirs(exported.path, exist_ok=True)
    result = run_evaluate(step_config(EvaluateConfig, config_json, explicit, "evaluate"))
    for key, value in result["scalars"].items():
        metrics.log_metric(key, value)
    cm = result["student"].get("confusion_matrix")
    if cm is not None:
        classes = result["dataset"]["class_names"]
        confusion.log_confusion_matrix([str(c) for c in classes], [[int(v) for v in row] for row in cm])
    shutil.copyfile(result["report"], report.path)
    with open(summary.path, "w") as f:
        f.write(result["summary_markdown"])
    exported.metadata.update({"file": student.metadata.get("file", ""), "framework": "pytorch",
                              "exports": sorted(result.get("exports", {}))})
