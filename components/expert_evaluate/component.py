"""expert-evaluate: find, for each label, the teachers that are experts on it (multi-teacher)."""


from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output

from crossdistill.components._common import CPU, image


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
    import os
    import shutil

    from crossdistill.config import step_config
    from crossdistill.experts.selection import ExpertEvaluateConfig, run_expert_evaluate

    teachers = [{"name": t.metadata.get("teacher") or f"teacher{i}", "table": t.path} for i, t in enumerate(val_tables)]
    os.makedirs(experts.path, exist_ok=True)
    result = run_expert_evaluate(step_config(ExpertEvaluateConfig, config_json, {
        "teachers": teachers, "val": val.path, "metric": metric, "margin": margin, "min_score": min_score,
        "out": experts.path}, "expert-evaluate"))
    shutil.copyfile(result["paths"]["html"], report.path)
    shutil.copyfile(result["paths"]["markdown"], summary.path)
    experts.metadata.update({"teachers": [t["name"] for t in teachers]})
