"""assemble: combine the teachers' labels of the unlabeled set into one soft-label distillation set (multi-teacher)."""


from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from crossdistill.components._common import CPU, image


@dsl.component(base_image=image(CPU), install_kfp_package=False)
def assemble(
    unlabeled: Input[Dataset],
    unlabeled_tables: Input[list[Dataset]],
    experts: Input[Artifact],
    trust_models: Input[Model],
    distill_set: Output[Dataset],
    metrics: Output[Metrics],
    method: str = "trust",
    min_trust: float = 0.5,
    keep_uncovered: bool = True,
    config_json: str = "{}",
):
    """Run crossdistill.experts.assembly on the unlabeled tables with the experts and trust models.

    ``keep_uncovered`` keeps examples no teacher is trusted on (with weight 0), so every unlabeled
    id has a row and the student can train on the whole unlabeled part. ``config_json`` holds any other AssembleConfig key; the explicit parameters win over it.
    """
    from crossdistill.config import step_config
    from crossdistill.experts.assembly import AssembleConfig, run_assemble

    teachers = [{"name": t.metadata.get("teacher") or f"teacher{i}", "table": t.path}
                for i, t in enumerate(unlabeled_tables)]
    result = run_assemble(step_config(AssembleConfig, config_json, {
        "teachers": teachers, "unlabeled": unlabeled.path, "experts": experts.path,
        "trust_models": trust_models.path, "method": method, "min_trust": min_trust,
        "keep_uncovered": keep_uncovered, "out": distill_set.path}, "assemble"))
    for key in ("coverage", "examples"):
        if isinstance(result.get(key), (int, float)):
            metrics.log_metric(key, float(result[key]))
    distill_set.metadata.update({"teachers": [t["name"] for t in teachers], "method": method})
