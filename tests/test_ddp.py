"""Data-parallel student training: real torchrun ranks on this machine's CPUs (gloo).

Two ranks each stream their own part of the digits student split (13 row groups) and average
gradients with DDP; the run is checked from outside, as a user sees it: steps and samples, a SIGKILL
of the whole torchrun in the middle and a rerun that ends with the weights of an uninterrupted run,
and the student's accuracy against single-process students of several seeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdistill.config import to_json
from crossdistill.data.shards import DatasetWriter, read_dataset
from crossdistill.data.stream import BatchStream
from crossdistill.deploy.student import run_student_train
from crossdistill.errors import ConfigError
from crossdistill.train import StudentTrainConfig, load_student, train_student

BATCH = 32  # per rank: two ranks step on 64 rows, like the one-process run they are compared with


@pytest.fixture(scope="module")
def parts(soft_label_splits, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    student, soft = read_dataset(soft_label_splits["student"]), read_dataset(soft_label_splits["dense"])
    for name, data, rows in (("student", student, 90), ("soft", soft, 250)):
        with DatasetWriter(str(root / name), data.meta, rows_per_shard=400, row_group_rows=rows) as w:
            w.write(data.columns)
    return {"student": str(root / "student"), "soft": str(root / "soft"), "root": root,
            "test": read_dataset(soft_label_splits["test"])}


def _cfg(parts, out, **kw) -> StudentTrainConfig:
    base = dict(train_data=parts["student"], soft_labels=parts["soft"], out=str(out), mode="offline",
                model={"name": "mlp", "kwargs": {"hidden": [32], "dropout": 0.2}}, epochs=10, batch_size=BATCH,
                lr=3e-3, checkpoint_every=5, keep_checkpoints=0, threads=1, progress=False, seed=7,
                shuffle_buffer=200, workers=2)
    base.update(kw)
    return StudentTrainConfig.parse(base)


def _accuracy(model_uri: str, test) -> float:
    model, _ = load_student(model_uri)
    with torch.no_grad():
        return float((model(torch.from_numpy(test["x"])).argmax(1).numpy() == test["y"]).mean())


@pytest.fixture(scope="module")
def two_ranks(parts):
    """An uninterrupted two-rank run, started the way the student-train step starts one (workers=2)."""
    return run_student_train(_cfg(parts, parts["root"] / "uninterrupted"))


def test_two_ranks_use_each_row_once_per_epoch(parts, two_ranks):
    n = len(read_dataset(parts["student"], columns=["id"]))
    streams = [BatchStream(parts["student"], batch_size=BATCH, seed=7, shuffle_buffer=200, num_classes=10,
                           rank=r, world=2) for r in range(2)]
    assert sum(s.num_rows for s in streams) == n and min(s.num_rows for s in streams) > 0.4 * n
    per_epoch = max(s.batches_per_epoch for s in streams)
    assert two_ranks.finished and two_ranks.steps == 10 * per_epoch
    assert two_ranks.samples_seen == 10 * n  # both parts, every row once per epoch
    assert [h["samples_seen"] for h in two_ranks.history][-1] == 10 * n
    for epoch in range(10):  # the parts of one epoch are disjoint and cover the split
        keys = np.concatenate([k for s in streams for k in s.batch_keys(epoch)])
        assert np.array_equal(np.sort(keys), np.arange(n))


def test_killed_torchrun_resumes_to_the_same_weights(parts, two_ranks, tmp_path):
    out = tmp_path / "killed"
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(to_json(_cfg(parts, out)))
    torchrun = Path(sys.executable).parent / "torchrun"
    crossdistill = Path(sys.executable).parent / "crossdistill"
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", str(crossdistill), "student-train",
               "--config", str(cfg_file)]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 120
    while not list((out / "checkpoints").glob("ckpt-*.pt")) and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, without a goodbye
    proc.wait()
    assert not (out / "model.pt").exists(), "the run ended before it could be killed"
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr
    a, b = load_student(two_ranks.model_uri), load_student(str(out / "model.pt"))
    assert b[1]["extra"]["steps"] == two_ranks.steps and b[1]["extra"]["samples_seen"] == two_ranks.samples_seen
    assert all(torch.equal(a[0].state_dict()[k], v) for k, v in b[0].state_dict().items())


def test_two_ranks_student_is_within_seed_noise_of_one_process(parts, two_ranks, tmp_path):
    single = [_accuracy(train_student(_cfg(parts, tmp_path / f"s{seed}", workers=1, batch_size=2 * BATCH,
                                           seed=seed)).model_uri, parts["test"]) for seed in (7, 8, 9)]
    ddp = _accuracy(two_ranks.model_uri, parts["test"])
    print('single-process', single, 'two ranks', ddp)
    assert min(single) > 0.85
    assert min(single) - 0.02 <= ddp <= max(single) + 0.02, (ddp, single)


def test_workers_must_match_torchrun(parts, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="workers=3 but torchrun started 2 process"):
        train_student(_cfg(parts, tmp_path / "out", workers=3))
