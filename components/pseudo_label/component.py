"""pseudo-label: have the served teacher label one shard of a dataset; the output is a soft-label Dataset."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from crossdistill.components._common import CPU, image


@dsl.component(base_image=image(CPU), install_kfp_package=False)
def pseudo_label(
    data: Input[Dataset],
    teacher_endpoint: str,
    soft_labels: Output[Dataset],
    teacher_token_file: str = "",
    teacher_ca_file: str = "",
    shard_index: int = 0,
    shards: list = [0],  # noqa: B006 - KFP defaults are compile-time constants
    top_k: int = 0,
    temperature: float = 1.0,
    teacher_name: str = "teacher",
    label_map: list = [],  # noqa: B006 - KFP defaults are compile-time constants
    config_json: str = "{}",
):
    """Label shard ``shard_index`` of ``len(shards)`` with crossdistill.teacher.pseudo_label.

    ``shards`` is the pipeline's list of shard indices (``[0, 1, ..., n-1]``, the same list the
    ParallelFor runs over), so every parallel task agrees on the shard count. ``top_k`` 0 keeps
    dense logits. ``teacher_name`` is recorded in the artifact's metadata (multi-teacher
    steps name their tables by it). ``label_map`` (train-teacher's output; empty = none) is written
    into the table's meta, so a specialist's narrower outputs map to global classes.
    ``teacher_token_file`` / ``teacher_ca_file`` (paths of the pipeline's mounted Secrets, empty = none)
    become ``token_file`` and ``tls.ca_file``. ``config_json`` holds any other PseudoLabelConfig key;
    the explicit ones win.
    """
    from crossdistill.config import step_config
    from crossdistill.errors import ConfigError
    from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label

    indices = sorted(int(s) for s in shards)
    if indices != list(range(len(indices))) or shard_index not in indices:
        raise ConfigError(f"pseudo-label: shards must be [0..n-1] and contain shard_index={shard_index}, got {shards}")
    cfg = step_config(PseudoLabelConfig, config_json, {
        "data": data.path, "out": soft_labels.path, "shard_index": shard_index, "num_shards": len(indices),
        "top_k": top_k, "temperature": temperature, "teacher_url": teacher_endpoint, "progress": False,
        **({"token_file": teacher_token_file} if teacher_token_file else {}),
        **({"tls": {"ca_file": teacher_ca_file}} if teacher_ca_file else {}),
        **({"label_map": [int(c) for c in label_map]} if label_map else {})}, "pseudo-label")
    run_pseudo_label(cfg)
    soft_labels.metadata.update({"shard_index": shard_index, "num_shards": len(indices), "top_k": top_k,
                                 "teacher": teacher_name, **({"label_map": cfg.label_map} if cfg.label_map else {})})
