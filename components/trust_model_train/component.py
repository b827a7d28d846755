"""trust-model-train: learn, per teacher, when its answer can be trusted (multi-teacher)."""


from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from crossdistill.components._common import CPU, image


@dsl.component(base_image=image(CPU), install_kfp_package=False)
def trust_model_train(
    val: Input[Dataset],
    val_tables: Input[list[Dataset]],
    trust_models: Output[Model],
    metrics: Output[Metrics],
    model: str = "logreg",
    joint_model: str = "mlp",
    seed: int = 0,
    config_json: str = "{}",
):
    """Train crossdistill.experts.trust models on the labeled validation tables into ``trust_models``.

    ``config_json`` holds any other TrustModelTrainConfig key; the explicit parameters win over it.
    """
    import os

    from crossdistill.config import step_config
    from crossdistill.experts.trust import TrustModelTrainConfig, run_trust_model_train

    teachers = [{"name": t.metadata.get("teacher") or f"teacher{i}", "table": t.path} for i, t in enumerate(val_tables)]
    os.makedirs(trust_models.path, exist_ok=True)
    result = run_trust_model_train(step_config(TrustModelTrainConfig, config_json, {
        "teachers": teachers, "val": val.path, "model": model, "joint_model": joint_model, "seed": seed,
        "out": trust_models.path}, "trust-model-train"))

    def log_numbers(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key != "paths":
                    log_numbers(f"{prefix}_{key}" if prefix else str(key), item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(prefix, float(value))

    log_numbers("", result)
    trust_models.metadata.update({"teachers": [t["name"] for t in teachers]})
