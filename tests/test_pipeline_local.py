"""Whole pipelines through kfp.local.SubprocessRunner on digits: online in the normal suite, the rest slow."""

import json
import re
import tempfile
from pathlib import Path

import pytest

from crossdistill.pipelines.run_local import run_local

FAST_EVAL = json.dumps({"latency_repeats": 2, "latency_warmup": 0, "export": ["torchscript"]})
TEACHERS_DIR = Path(tempfile.gettempdir()) / "crossdistill-teachers"


def _runs_of(root: Path, task: str, pattern: str = "*/*") -> list[Path]:
    """The output folders of ``task``'s runs: kfp.local names them after the component (``evaluate-4``
    when the pipeline holds several evaluate tasks, one per branch)."""
    return [p for p in root.glob(pattern) if re.fullmatch(rf"{task}(-\d+)*", p.name)]


def _outputs(root: Path, task: str) -> dict:
    [folder] = _runs_of(root, task)
    path = folder / "executor_output.json"
    return {name: spec["artifacts"][0] for name, spec in json.loads(path.read_text())["artifacts"].items()}


def _no_teacher_left(root: Path, prefix: str) -> None:
    """The servers this run started (named in teacher-serve's outputs) have no pid file left."""
    names = [json.loads((p / "executor_output.json").read_text())["parameterValues"]["name"]
             for p in _runs_of(root, "teacher-serve", "**/*")]
    assert names and all(n.startswith(prefix) for n in names)
    assert not [n for n in names if (TEACHERS_DIR / n / f"{n}.pid").exists()], "teacher-teardown left a server running"


def _check_evaluate(root: Path, min_teacher_acc: float = 0.5) -> dict:
    out = _outputs(root, "evaluate")
    metrics = out["metrics"]["metadata"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    rows = out["confusion"]["metadata"]["confusionMatrix"]["rows"]
    assert sum(sum(r["row"]) for r in rows) == metrics["num_examples"]
    assert "<html" in Path(out["report"]["uri"]).read_text().lower()
    assert Path(out["summary"]["uri"]).read_text().startswith("# ")
    assert (Path(out["exported"]["uri"]) / "metrics.json").is_file()
    return metrics


def test_online_pipeline_end_to_end(tmp_path):
    run_local("online", {"teacher_epochs": 3, "student_epochs": 2, "teacher_name_prefix": "cd-test-online",
                         "eval_config_json": FAST_EVAL}, pipeline_root=tmp_path)
    metrics = _check_evaluate(tmp_path)
    assert metrics["teacher_accuracy"] > 0.5  # a 3-epoch MLP teacher on digits is far above chance
    assert "teacher_agreement" in metrics
    train = _outputs(tmp_path, "student-train")
    assert train["model"]["metadata"]["mode"] == "online"
    _no_teacher_left(tmp_path, "cd-test-online")


@pytest.mark.slow
def test_offline_pipeline_end_to_end(tmp_path):
    run_local("offline", {"teacher_epochs": 3, "student_epochs": 2, "shards": [0, 1, 2],
                          "teacher_name_prefix": "cd-test-offline", "eval_config_json": FAST_EVAL},
              pipeline_root=tmp_path)
    shards = _runs_of(tmp_path, "pseudo-label", "*/for-loop-*/*")
    assert len(shards) == 3
    indices = {json.loads((p / "executor_output.json").read_text())["artifacts"]["soft_labels"]["artifacts"][0]
               ["metadata"]["shard_index"] for p in shards}
    assert indices == {0, 1, 2}
    _check_evaluate(tmp_path)
    _no_teacher_left(tmp_path, "cd-test-offline")


@pytest.mark.slow
def test_multi_teacher_pipeline_end_to_end(tmp_path):
    from crossdistill.pipelines.multi_teacher import DEFAULT_TEACHERS

    run_local("multi-teacher", {"teacher_epochs": 10, "student_epochs": 3, "teacher_name_prefix": "cd-test-multi",
                                "eval_config_json": FAST_EVAL}, pipeline_root=tmp_path)
    metrics = _check_evaluate(tmp_path)
    # The default scenario: three specialists (only their classes, a label map) and one weak generalist.
    configured = {t["teacher"]: t for t in DEFAULT_TEACHERS}
    assert sum(bool(t["classes"]) for t in DEFAULT_TEACHERS) == 3
    assert [t["max_examples"] for t in DEFAULT_TEACHERS if not t["classes"]] == [30]
    seen = {}
    for loop in tmp_path.glob("*/for-loop-*"):
        trained = json.loads((loop / "train-teacher" / "executor_output.json").read_text())
        label_map = trained["parameterValues"]["label_map"]
        teacher_metrics = trained["artifacts"]["metrics"]["artifacts"][0]["metadata"]
        for task in ("pseudo-label", "pseudo-label-2"):
            labelled = json.loads((loop / task / "executor_output.json").read_text())
            table = labelled["artifacts"]["soft_labels"]["artifacts"][0]
            seen.setdefault(table["metadata"]["teacher"], []).append(label_map)
            meta = json.loads((Path(table["uri"]) / "manifest.json").read_text())["meta"]
            assert meta["num_classes"] == len(label_map) and meta.get("global_num_classes", 10) == 10
        name = table["metadata"]["teacher"]
        want = configured[name]["classes"] or list(range(10))
        assert label_map == want
        if configured[name]["classes"]:
            assert meta["label_map"] == want
        else:
            assert teacher_metrics["train_examples"] == 30
    assert sorted(seen) == sorted(configured)
    # The student is scored against every teacher (teacher<i>, in the loop's order); specialists through
    # their label maps; and against the teachers' plain average and majority vote.
    for i, t in enumerate(DEFAULT_TEACHERS):
        prefix = f"teacher{i}_"
        assert 0.0 <= metrics[f"{prefix}accuracy"] <= 1.0 and 0.0 <= metrics[f"{prefix}student_agreement"] <= 1.0
        if t["classes"]:
            assert metrics[f"{prefix}num_outputs"] == len(t["classes"])
            assert metrics[f"{prefix}accuracy"] <= len(t["classes"]) / 10 + 0.05  # it never names other classes
            assert metrics[f"{prefix}covered_accuracy"] > 0.5
    assert 0.0 <= metrics["ensemble_average_accuracy"] <= 1.0 and "ensemble_majority_vote_accuracy" in metrics
    summary = Path(_outputs(tmp_path, "evaluate")["summary"]["uri"]).read_text()
    assert "| majority vote of teachers | ensemble |" in summary
    assemble = _outputs(tmp_path, "assemble")
    assert sorted(assemble["distill_set"]["metadata"]["teachers"]) == sorted(configured)
    _no_teacher_left(tmp_path, "cd-test-multi")


def _users_teacher(path: Path, ds) -> str:
    """A teacher made outside crossdistill: a plain Keras model fitted on the teacher owner's labels."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=ds["x"].shape[1:]), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ds["x"], ds["y"], epochs=15, batch_size=64, verbose=0)
    model.save(path)
    return str(path)


@pytest.mark.slow
def test_online_pipeline_distils_the_users_teacher_on_the_users_data(tmp_path, digits):
    """`pipeline run-local online --set teacher_model_uri=... --set student_data_uri=... --set test_data_uri=...`,
    the student trained by two data-parallel ranks (``student_workers=2``)."""
    import numpy as np

    from crossdistill import pipeline_cli
    from crossdistill.data.shards import Dataset, write_dataset

    order = np.random.default_rng(7).permutation(len(digits))
    student_rows, test_rows = order[:1200], order[1200:]
    y = digits["y"][student_rows].copy()
    y[60:] = -1  # the student owner holds 60 labels
    meta = dict(digits.meta, name="my-digits")
    student = write_dataset(str(tmp_path / "mine" / "student"), Dataset(
        {"id": digits.ids[student_rows], "x": digits["x"][student_rows], "y": y}, meta), num_shards=2)
    test = write_dataset(str(tmp_path / "mine" / "test"), Dataset(
        {"id": digits.ids[test_rows], "x": digits["x"][test_rows], "y": digits["y"][test_rows]}, meta))
    teacher = _users_teacher(tmp_path / "mine" / "teacher.keras",
                             {"x": digits["x"][student_rows], "y": digits["y"][student_rows]})
    root = tmp_path / "kfp"
    assert pipeline_cli.main([
        "run-local", "online", "--pipeline-root", str(root), "--set", f"teacher_model_uri={teacher}",
        "--set", f"student_data_uri={student}", "--set", f"test_data_uri={test}", "--set", "student_epochs=2",
        "--set", "student_workers=2", "--set", "teacher_name_prefix=cd-test-yours",
        "--set", f"eval_config_json={FAST_EVAL}"]) == 0
    # Nothing of the demo ran: no data prepared, no teacher trained.
    assert not _runs_of(root, "prepare-data") and not _runs_of(root, "train-teacher")
    metrics = _check_evaluate(root)
    assert metrics["num_examples"] == len(test_rows)  # scored on the user's test set
    assert metrics["teacher_accuracy"] > 0.8  # the user's own Keras teacher, served and asked over gRPC
    train = _outputs(root, "student-train")
    assert train["model"]["metadata"]["mode"] == "online"
    # two data-parallel ranks (torchrun in the task), each asking the teacher for its own batches
    from crossdistill.train import load_student

    info = load_student(str(Path(train["model"]["uri"]) / train["model"]["metadata"]["file"]))[1]["extra"]
    assert info["workers"] == 2 and info["finished"] and info["samples_seen"] == 2 * len(student_rows)
    _no_teacher_left(root, "cd-test-yours")
