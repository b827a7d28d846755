"""import-data: read the user's data (Parquet, CSV, JSON Lines, NumPy, image folder, WebDataset, HF dataset) into a crossdistill Dataset."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from crossdistill.components._common import CPU, image


@dsl.component(base_image=image(CPU), install_kfp_package=False)
def import_data(
    source: str,
    data: Output[Dataset],
    metrics: Output[Metrics],
    format: str = "auto",
    features: list = [],  # noqa: B006 - KFP defaults are compile-time constants
    label: str = "",
    id: str = "",
    config_json: str = "{}",
):
    """Import ``source`` (a file, folder or glob at any fsspec URI) with crossdistill.data.importing.import_data.

    ``format``: ``auto`` (from the file extensions), ``parquet``, ``csv``, ``jsonl``, ``npy``, ``npz``,
    ``imagefolder``, ``webdataset`` or ``hf``. ``features`` (input columns; empty = every column but the
    label and id), ``label`` (label column; empty = none, every row unlabeled) and ``id`` (id column;
    empty = ids 0..N-1 in source order) name the columns. ``config_json`` holds any other
    ImportDataConfig key (``class_names``, ``keep_labels``, image ``size`` / ``mean`` / ``std``, ...);
    the explicit parameters win over it. With ``holdout`` in ``config_json`` the artifact is a folder of
    ``train`` / ``val`` / ``test`` datasets. The summary's counts (rows, labeled, num_classes) are logged
    as metrics; its class names are kept in the artifact's metadata.
    """
    from crossdistill.config import step_config
    from crossdistill.data.importing import ImportDataConfig
    from crossdistill.data.importing import import_data as run

    explicit = {"source": source, "format": format, "out": data.path,
                **({"features": [str(f) for f in features]} if features else {}),
                **({"label": label} if label else {}), **({"id": id} if id else {})}
    summary = run(step_config(ImportDataConfig, config_json, explicit, "import-data"))
    for key, value in sorted(summary.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    data.metadata.update({"source": source, "format": summary.get("format", format),
                          **{k: summary[k] for k in ("class_names", "num_classes", "rows") if k in summary}})
