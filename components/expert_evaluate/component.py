"""expert-evaluate: find, for each label, the teachers that are experts on it (multi-teacher)."""


from components._common import CPU, image
from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output


@dsl.component(base_image=image(CPU), install_kfp_package=False)
def expert_evaluate(
    val: Input[Dataset],
    val_tables: Input[list[Dataset]],
    experts: Output[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    metric: str = "f1",
    margin: float = 0.0,
    min_score: float = 0.5,
    config_json: str = "{}",
):
    """Run crossdistill.experts.selection on the teachers' validation tables; ``experts`` holds experts.json.

    Each table is a pseudo-label output whose metadata names its ``teacher``. ``config_json``
    holds any other ExpertEvaluateConfig key; the explicit parameters win over it.
    """
    import json
    import os
    import shutil

    from crossdistill.config import deep_merge
    from crossdistill.errors import ConfigError
    from crossdistill.experts.selection import ExpertEvaluateConfig, run_expert_evaluate

    try:
        base = json.loads(config_json or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"expert-evaluate: config_json is not valid JSON: {exc}") from None
    teachers = [{"name": t.metadata.get("teacher") or f"teacher{i}", "table": t.path} for i, t in enumerate(val_tables)]
    os.makedirs(experts.path, exist_ok=True)
    cfg = ExpertEvaluateConfig.parse(deep_merge(base, {
        "teachers": teachers, "val": val.path, "metric": metric, "margin": margin, "min_score": min_score,
        "out": experts.path}), source="expert-evaluate config_json")
    result = run_expert_evaluate(cfg)
    shutil.copyfile(result["paths"]["html"], report.path)
    shutil.copyfile(result["paths"]["markdown"], summary.path)
    experts.metadata.update({"teachers": [t["name"] for t in teachers]})
