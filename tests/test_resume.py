"""Checkpoints and resume: a stopped or SIGKILLed run continues at the same data position."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from crossdistill.data.shards import DatasetReader, DatasetWriter, read_dataset, write_dataset
from crossdistill.errors import ConfigError
from crossdistill.train import StudentTrainConfig, load_student, train_student
from crossdistill.train.checkpoint import list_checkpoints

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def splits(soft_label_splits, tmp_path_factory):
    """The digits student split and its dense soft labels rewritten as several shards of several row groups
    (inputs and soft labels cut differently); ``root`` is this module's own output dir."""
    root = tmp_path_factory.mktemp("resume")
    student, soft = read_dataset(soft_label_splits["student"]), read_dataset(soft_label_splits["dense"])
    return {"student": _write(root / "student", student, rows_per_shard=400, row_group_rows=90),
            "soft": _write(root / "soft", soft, rows_per_shard=500, row_group_rows=250), "root": root}


def _write(uri, data, rows_per_shard: int, row_group_rows: int) -> str:
    with DatasetWriter(str(uri), data.meta, rows_per_shard=rows_per_shard, row_group_rows=row_group_rows) as w:
        w.write(data.columns)
    return str(uri)


def _cfg(splits, out, **kw) -> StudentTrainConfig:
    base = dict(train_data=splits["student"], soft_labels=splits["soft"], out=str(out), mode="offline",
                model={"name": "mlp", "kwargs": {"hidden": [32], "dropout": 0.2}}, epochs=3, batch_size=32,
                lr=3e-3, schedule="onecycle", optimizer="adamw", weight_decay=1e-3, checkpoint_every=10,
                keep_checkpoints=0, threads=1, progress=False, seed=7, shuffle_buffer=200)
    base.update(kw)
    return StudentTrainConfig.parse(base)


def _weights(uri: str) -> dict[str, torch.Tensor]:
    model, _ = load_student(uri)
    return model.state_dict()


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(splits):
    out = splits["root"] / "reference"
    result = train_student(_cfg(splits, out))
    return result, _weights(result.model_uri)


def test_uninterrupted_run_writes_checkpoints_and_log(splits, reference):
    result, _ = reference
    n = len(read_dataset(splits["student"], columns=["id"]))
    per_epoch = -(-n // 32)
    assert result.steps == 3 * per_epoch
    assert result.samples_seen == 3 * n
    assert result.finished
    out = splits["root"] / "reference"
    steps = [s for s, _ in list_checkpoints(str(out))]
    assert steps == [*range(10, result.steps + 1, 10), result.steps] if result.steps % 10 else \
        list(range(10, result.steps + 1, 10))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log == result.history
    assert log[-1]["step"] == result.steps and log[-1]["samples_seen"] == result.samples_seen
    # a finished run started again (e.g. a retried pipeline step) trains no further
    again = train_student(_cfg(splits, out))
    assert (again.steps, again.samples_seen, again.history) == (result.steps, result.samples_seen, result.history)


def test_stop_at_max_steps_then_resume_matches_uninterrupted(splits, reference, tmp_path):
    ref, ref_weights = reference
    first = train_student(_cfg(splits, tmp_path, max_steps=37))  # mid-epoch, off the checkpoint grid
    assert (first.steps, first.finished) == (37, False)
    assert [s for s, _ in list_checkpoints(str(tmp_path))][-1] == 37
    resumed = train_student(_cfg(splits, tmp_path))
    assert (resumed.steps, resumed.samples_seen) == (ref.steps, ref.samples_seen)
    assert resumed.finished
    assert _same_weights(_weights(resumed.model_uri), ref_weights)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in ref.history]


def test_resume_restores_feature_projections(splits, tmp_path):
    student = read_dataset(splits["student"])
    soft = read_dataset(splits["soft"])
    with_layer = write_dataset(str(tmp_path / "soft"), soft.with_columns(**{"layer/scores": soft["logits"] * 0.5}))
    assert np.array_equal(soft.ids, student.ids)
    kw = dict(soft_labels=with_layer, features=[{"student": "1", "teacher": "scores"}], epochs=2)
    full = train_student(_cfg(splits, tmp_path / "full", **kw))
    train_student(_cfg(splits, tmp_path / "part", max_steps=25, **kw))
    resumed = train_student(_cfg(splits, tmp_path / "part", **kw))
    assert resumed.steps == full.steps
    assert _same_weights(_weights(resumed.model_uri), _weights(full.model_uri))
    assert resumed.history == [{**h, "samples_per_s": r["samples_per_s"]} for h, r in zip(full.history,
                                                                                         resumed.history, strict=True)]


def test_resume_false_starts_over_and_changed_config_is_refused(splits, tmp_path):
    train_student(_cfg(splits, tmp_path, max_steps=5))
    again = train_student(_cfg(splits, tmp_path, max_steps=3, resume=False))
    assert again.steps == 3
    with pytest.raises(ConfigError, match="batch_size"):
        train_student(_cfg(splits, tmp_path, batch_size=16))
    with pytest.raises(ConfigError, match="shuffle_buffer"):
        train_student(_cfg(splits, tmp_path, shuffle_buffer=100))
    # the same rows at the same URI, cut into other row groups, stream in another order: refused too
    data = read_dataset(splits["student"])
    uri = _write(tmp_path / "data", data, rows_per_shard=400, row_group_rows=90)
    train_student(_cfg(splits, tmp_path / "layout", train_data=uri, max_steps=3))
    shutil.rmtree(uri)
    _write(uri, data, rows_per_shard=10_000, row_group_rows=100)
    with pytest.raises(ConfigError, match="cannot resume from .*: data changed"):
        train_student(_cfg(splits, tmp_path / "layout", train_data=uri))


def test_the_data_is_several_row_groups_and_bigger_than_the_shuffle_buffer(splits):
    inputs, soft = DatasetReader(splits["student"]), DatasetReader(splits["soft"])
    assert len({f.shard for f in inputs.fragments}) >= 3 and len(inputs.fragments) >= 10
    assert [f.num_rows for f in inputs.fragments] != [f.num_rows for f in soft.fragments]
    assert inputs.num_examples > 4 * _cfg(splits, "x").shuffle_buffer


def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted(splits, tmp_path):
    """`crossdistill student-train` killed by SIGKILL after some checkpoints, then run again to the end."""
    kw = dict(epochs=12, batch_size=16, checkpoint_every=7, num_workers=1)
    cfg = _cfg(splits, tmp_path / "killed", **kw)
    config = tmp_path / "student.json"
    config.write_text(cfg.model_dump_json())
    cli = [sys.executable, "-m", "crossdistill.cli", "student-train", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    per_epoch = -(-len(DatasetReader(splits["student"])) // 16)
    child = subprocess.Popen(cli, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list_checkpoints(cfg.out)) < 3 or list_checkpoints(cfg.out)[-1][0] % per_epoch == 0:
            if child.poll() is not None:
                pytest.fail(f"training child exited early: {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared within 120 s")
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    killed_at = list_checkpoints(cfg.out)[-1][0]
    assert not (tmp_path / "killed" / "model.pt").exists(), "the child finished before it was killed"

    # the rerun reads with no worker: the order does not depend on num_workers
    rerun = subprocess.run([*cli, "num_workers=0"], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    reference = train_student(_cfg(splits, tmp_path / "reference", **kw))
    log = [json.loads(line) for line in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert killed_at < log[-1]["step"]
    assert (log[-1]["step"], log[-1]["samples_seen"]) == (reference.steps, reference.samples_seen)
    assert [{k: v for k, v in h.items() if k != "samples_per_s"} for h in log] == \
        [{k: v for k, v in h.items() if k != "samples_per_s"} for h in reference.history]
    assert _same_weights(_weights(str(tmp_path / "killed" / "model.pt")), _weights(reference.model_uri))
