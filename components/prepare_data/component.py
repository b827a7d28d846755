"""prepare-data: split a demo dataset into typed Dataset artifacts (teacher train, val, test, student, unlabeled)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from crossdistill.components._common import CPU, image


@dsl.component(base_image=image(CPU), install_kfp_package=False)
def prepare_data(
    train: Output[Dataset],
    val: Output[Dataset],
    test: Output[Dataset],
    student: Output[Dataset],
    unlabeled: Output[Dataset],
    dataset: str = "digits",
    student_labels: int = 64,
    seed: int = 0,
    config_json: str = "{}",
):
    """Write the five splits of ``dataset`` (crossdistill.data.splits.prepare_data), one artifact each.

    ``config_json`` holds any other PrepareDataConfig key; the explicit parameters win over it.
    """
    import shutil
    import tempfile

    from crossdistill.config import step_config
    from crossdistill.data.splits import PrepareDataConfig
    from crossdistill.data.splits import prepare_data as run

    staging = tempfile.mkdtemp(prefix="prepare-data-")
    uris = run(step_config(PrepareDataConfig, config_json, {
        "dataset": dataset, "student_labels": student_labels, "seed": seed, "out": staging}, "prepare-data"))
    for name, artifact in (("train", train), ("val", val), ("test", test), ("student", student),
                           ("unlabeled", unlabeled)):
        shutil.copytree(uris[name], artifact.path, dirs_exist_ok=True)
        artifact.metadata.update({"split": name, "dataset": dataset})
    shutil.rmtree(staging, ignore_errors=True)
