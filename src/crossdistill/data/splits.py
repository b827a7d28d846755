"""Train / validation / test splits, and the student owner's view: the same inputs, few labels.

This is the cross-party setting of the cross-platform patent: the teacher's owner holds ``train``
with every label; the student's owner holds the same kind of inputs (``student``) with only
``student_labels`` of them labeled (``y = -1`` elsewhere), and ``unlabeled`` is that set's rest.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.data.shards import UNLABELED, Dataset, write_dataset
from crossdistill.data.sources import load_source
from crossdistill.errors import ConfigError

SPLITS = ("train", "val", "test", "student", "unlabeled")


class PrepareDataConfig(StrictConfig):
    """Configuration of `crossdistill prepare-data`."""

    dataset: Literal["digits", "fashion-mnist"] = "digits"
    source_uri: str | None = Field(None, description="folder of the IDX files (fashion-mnist); Debian's by default")
    out: str = Field("runs/data", description="where the splits are written (any fsspec URI)")
    seed: int = 0
    test_fraction: float = Field(0.3, gt=0, lt=1, description="ignored with official_test")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    official_test: bool = Field(False, description="use the dataset's own test split (fashion-mnist)")
    student_labels: int = Field(64, ge=0, description="labels the student owner keeps (stratified)")
    limit_train: int | None = Field(None, gt=0, description="subsample the training part, for quick runs")
    num_shards: int = Field(1, ge=1)


def split_dataset(data: Dataset, cfg: PrepareDataConfig) -> dict[str, Dataset]:
    """Split deterministically (by ``cfg.seed``) into the five named parts."""
    rng = np.random.default_rng(cfg.seed)
    n = len(data)
    if cfg.official_test:
        start = data.meta.get("official_test_from_id")
        if start is None:
            raise ConfigError(f"official_test: dataset '{cfg.dataset}' has no official test split")
        test_idx = np.flatnonzero(data.ids >= start)
        rest = rng.permutation(np.flatnonzero(data.ids < start))
    else:
        perm = rng.permutation(n)
        n_test = int(round(cfg.test_fraction * n))
        test_idx, rest = perm[:n_test], perm[n_test:]
    n_val = int(round(cfg.val_fraction * len(rest)))
    val_idx, train_idx = rest[:n_val], rest[n_val:]
    if cfg.limit_train:
        train_idx = train_idx[: cfg.limit_train]
    train = data.take(np.sort(train_idx))
    if cfg.student_labels > len(train):
        raise ConfigError(f"student_labels={cfg.student_labels} exceeds the {len(train)} training examples")
    keep = stratified_indices(train["y"], cfg.student_labels, rng)
    y_student = np.full(len(train), UNLABELED, dtype=np.int64)
    y_student[keep] = train["y"][keep]
    student = train.with_columns(y=y_student)
    unlabeled_idx = np.setdiff1d(np.arange(len(train)), keep)
    unlabeled = Dataset({"id": train.ids[unlabeled_idx], "x": train["x"][unlabeled_idx]}, dict(train.meta))
    return {"train": train, "val": data.take(np.sort(val_idx)), "test": data.take(np.sort(test_idx)),
            "student": student, "unlabeled": unlabeled}


def stratified_indices(y: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices spread as evenly as possible over the classes."""
    classes = np.unique(y)
    pools = {c: list(rng.permutation(np.flatnonzero(y == c))) for c in classes}
    picked: list[int] = []
    while len(picked) < count:
        for c in classes:
            if pools[c] and len(picked) < count:
                picked.append(int(pools[c].pop()))
    return np.sort(np.array(picked, dtype=np.int64))


def prepare_data(cfg: PrepareDataConfig) -> dict[str, str]:
    """Load the source, split it and write every part; returns split name -> URI."""
    data = load_source(cfg.dataset, cfg.source_uri)
    parts = split_dataset(data, cfg)
    out = {}
    for name in SPLITS:
        uri = storage.join(cfg.out, name)
        write_dataset(uri, parts[name], num_shards=cfg.num_shards)
        out[name] = uri
    return out
