"""evaluate: score the student (and its teachers) on the test split; metrics, confusion matrix, report."""


from components._common import STUDENT, image
from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


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
    teacher_endpoints: list[str] = [],  # noqa: B006 - KFP defaults are compile-time constants
    teacher_label_maps: list = [],  # noqa: B006 - KFP defaults are compile-time constants
    baseline: Input[Model] = None,
    baseline_name: str = "baseline",
    reference: Input[Model] = None,
    reference_name: str = "reference",  # noqa: B006 - KFP defaults are compile-time constants
    title: str = "crossdistill student",
    threads: int = 1,
    config_json: str = "{}",
):
    """Run crossdistill.evaluate.run.run_evaluate; ``exported`` holds TorchScript + ONNX and metrics.json.

    ``teacher_endpoint`` (one teacher) or ``teacher_endpoints`` (every teacher of a multi-teacher
    run) add teacher accuracy and student-teacher agreement. ``teacher_label_maps`` (train-teacher's
    ``label_map`` outputs, one per entry of ``teacher_endpoints``; empty = every teacher outputs every
    class) lets a specialist be scored: its narrower outputs are mapped to global classes through
    crossdistill.experts.tables, and ``teacher<i>_covered_accuracy`` is its accuracy on its own classes. ``baseline`` and ``reference`` (optional)
    are further students scored beside it in the comparison table. ``config_json`` holds any other
    EvaluateConfig key; the explicit parameters win over it.
    """
    import json
    import os
    import shutil

    import numpy as np
    import torch

    from crossdistill.config import deep_merge
    from crossdistill.data.shards import read_dataset
    from crossdistill.errors import ConfigError
    from crossdistill.evaluate.run import EvaluateConfig, run_evaluate
    from crossdistill.experts.tables import table_from_endpoint
    from crossdistill.teacher.client import TeacherClient, TeacherClientConfig
    from crossdistill.train.models import load_student

    try:
        base = json.loads(config_json or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"evaluate: config_json is not valid JSON: {exc}") from None
    def scalars(values: dict) -> dict:
        return {k: float(v) for k, v in (values or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def model_file(artifact: Model) -> str:
        file = artifact.metadata.get("file", "")
        return os.path.join(artifact.path, file) if file else artifact.path

    file = student.metadata.get("file", "")
    data = {"test_data": test_data.path, "student": model_file(student),
            "out": exported.path, "title": title, "threads": threads}
    extra = {name: model_file(a) for name, a in ((baseline_name, baseline), (reference_name, reference)) if a}
    if extra:
        data["baselines"] = deep_merge(base.get("baselines") or {}, extra)
    endpoints = [e for e in [teacher_endpoint, *teacher_endpoints] if e]
    maps = [[int(c) for c in m] if m else None for m in (teacher_label_maps or [])]
    if maps and len(maps) != len(endpoints):
        raise ConfigError(f"evaluate: {len(maps)} teacher_label_maps for {len(endpoints)} teacher endpoints "
                          "(one per teacher expected, in the same order)")
    maps = maps or [None] * len(endpoints)
    test_meta = read_dataset(test_data.path, columns=["y"]).meta
    num_classes = int(test_meta.get("num_classes") or 0)
    # A specialist (label map other than 0..C-1) cannot be scored by run_evaluate, which needs C outputs.
    special = [m is not None and m != list(range(num_classes)) for m in maps]
    if endpoints and not special[0]:
        data["teacher"] = deep_merge(base.get("teacher") or {}, {"url": endpoints[0]})
    os.makedirs(exported.path, exist_ok=True)
    cfg = EvaluateConfig.parse(deep_merge(base, data), source="evaluate config_json")
    result = run_evaluate(cfg)
    logged = scalars(result["student"])
    if result.get("teacher"):
        logged.update({f"teacher_{k}": v for k, v in scalars(result["teacher"]).items()})
    student_pred = None
    # Every further teacher: score it and the student's agreement with it (no second export).
    for i, url in enumerate(endpoints):
        prefix = "teacher_" if i == 0 else f"teacher{i}_"
        if special[i]:
            if student_pred is None:
                test = read_dataset(test_data.path)
                test = test.take(np.flatnonzero(test.labeled_mask()))
                net, _ = load_student(cfg.student)
                with torch.inference_mode():
                    student_pred = net(torch.as_tensor(test["x"], dtype=torch.float32)).argmax(1).numpy()
            client_cfg = TeacherClientConfig.parse(deep_merge(base.get("teacher") or {}, {"url": url}),
                                                   source=f"evaluate teacher {i}")
            with TeacherClient(client_cfg) as client:
                client.wait_ready(cfg.teacher_ready_timeout_s)
                table = table_from_endpoint(client, test, teacher=f"teacher{i}", num_classes=num_classes,
                                            label_map=maps[i], batch_size=cfg.batch_size)
            pred, y = table.predictions(), test["y"]
            covered = np.isin(y, maps[i])
            logged.update({f"{prefix}accuracy": float((pred == y).mean()),
                           f"{prefix}covered_accuracy": float((pred[covered] == y[covered]).mean()),
                           f"{prefix}num_outputs": float(len(maps[i]))})
            logged[f"{prefix}student_agreement" if i else "teacher_agreement"] = float((pred == student_pred).mean())
            continue
        if i == 0:
            continue
        extra = run_evaluate(EvaluateConfig.parse(deep_merge(cfg.model_dump(mode="json"), {
            "teacher": {"url": url}, "export": [], "latency_repeats": 1, "latency_warmup": 0,
            "out": os.path.join(exported.path, f"teacher-{i}")}), source=f"evaluate teacher {i}"))
        logged.update({f"{prefix}{k}": v for k, v in scalars(extra["teacher"]).items()})
        logged[f"{prefix}student_agreement"] = float(extra["student"]["teacher_agreement"])
    for key, value in sorted(logged.items()):
        metrics.log_metric(key, value)
    cm = result["student"].get("confusion_matrix")
    if cm is not None:
        classes = result["dataset"]["class_names"]
        confusion.log_confusion_matrix([str(c) for c in classes], [[int(v) for v in row] for row in cm])
    shutil.copyfile(result["report"], report.path)
    def cell(value, fmt: str = "{}") -> str:
        return "-" if value is None else fmt.format(value)

    lines = [f"# {title}", "", "| model | role | accuracy | teacher agreement | parameters | latency b=1 (ms) |",
             "|---|---|---|---|---|---|"]
    for row in result.get("comparison", []):
        lines.append(f"| {row['name']} | {row['role']} | {cell(row.get('accuracy'), '{:.4f}')} "
                     f"| {cell(row.get('teacher_agreement'), '{:.4f}')} | {cell(row.get('num_parameters'))} "
                     f"| {cell(row.get('latency_b1_ms'), '{:.3f}')} |")
    lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in sorted(logged.items())]
    with open(summary.path, "w") as f:
        f.write("\n".join(lines) + "\n")
    exported.metadata.update({"file": file, "framework": "pytorch", "exports": sorted(result.get("exports", {}))})
