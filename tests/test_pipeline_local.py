"""Whole pipelines through kfp.local.SubprocessRunner on digits: online in the normal suite, the rest slow."""

import json
import tempfile
from pathlib import Path

import pytest
from pipelines.run_local import run_local

FAST_EVAL = json.dumps({"latency_repeats": 2, "latency_warmup": 0, "export": ["torchscript"]})
TEACHERS_DIR = Path(tempfile.gettempdir()) / "crossdistill-teachers"


def _outputs(root: Path, task: str) -> dict:
    [path] = root.glob(f"*/{task}/executor_output.json")
    return {name: spec["artifacts"][0] for name, spec in json.loads(path.read_text())["artifacts"].items()}


def _no_teacher_left(root: Path, prefix: str) -> None:
    """The servers this run started (named in teacher-serve's outputs) have no pid file left."""
    names = [json.loads(p.read_text())["parameterValues"]["name"] for p in root.glob("**/teacher-serve/executor_output.json")]
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
    shards = sorted(tmp_path.glob("*/for-loop-*/pseudo-label/executor_output.json"))
    assert len(shards) == 3
    indices = {json.loads(p.read_text())["artifacts"]["soft_labels"]["artifacts"][0]["metadata"]["shard_index"]
               for p in shards}
    assert indices == {0, 1, 2}
    _check_evaluate(tmp_path)
    _no_teacher_left(tmp_path, "cd-test-offline")


@pytest.mark.slow
def test_multi_teacher_pipeline_end_to_end(tmp_path):
    from pipelines.multi_teacher import DEFAULT_TEACHERS

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
