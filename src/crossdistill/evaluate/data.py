"""The test split as evaluation sees it: labels and ids in memory, inputs streamed fragment by fragment.

Only ``id`` and ``y`` of every row are held (a few bytes per example); model inputs are read, decoded
and preprocessed (``crossdistill.data.preprocess``) one fragment at a time whenever a model is run over
the split, so a test set of any size is scored in bounded memory. Predictions (``[N, C]``) are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossdistill.data.classes import class_names
from crossdistill.data.preprocess import Preprocessor, input_column
from crossdistill.data.shards import UNLABELED, DatasetReader
from crossdistill.errors import DataError


@dataclass
class EvalData:
    """The labelled rows of a test dataset: ``ids``/``y`` of those rows, ``keep`` their mask over all rows."""

    uri: str
    reader: DatasetReader
    ids: np.ndarray
    y: np.ndarray
    keep: np.ndarray
    class_names: list[str]
    meta: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_test(uri: str) -> EvalData:
    """Open ``uri``, read its ``id`` and ``y`` columns, check labels against its ``class_names``."""
    reader = DatasetReader(uri)
    if "y" not in reader.column_names():
        raise DataError(f"{uri}: no label column 'y' (columns: {reader.column_names()}); evaluation needs labels")
    input_column(reader.column_names(), uri)
    names = class_names(reader.meta, uri)
    parts = list(reader.iter_batches(["y"]))
    ids = np.concatenate([p["id"] for p in parts]) if parts else np.zeros(0, np.int64)
    y = np.concatenate([p["y"] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
    keep = y != UNLABELED
    if not keep.any():
        raise DataError(f"{uri}: no labeled examples (column 'y' is all -1); evaluation needs labels")
    bad = keep & ((y < 0) | (y >= len(names)))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{uri}: row {row} (id {int(ids[row])}) has label {int(y[row])}, outside the "
                        f"{len(names)} classes {names} of its manifest meta")
    return EvalData(uri, reader, ids[keep], y[keep], keep, names, dict(reader.meta))


def predict(model: Callable[[np.ndarray], np.ndarray], test: EvalData, batch_size: int,
            check_shape: Callable[[tuple[int, ...]], None] | None = None) -> tuple[np.ndarray, tuple[int, ...]]:
    """``model`` (float32 inputs -> outputs ``[B, C]``) over the labelled rows, streamed; returns the
    outputs ``[N, C]`` and the input shape per example. ``check_shape`` sees that shape before the
    first call."""
    prep = Preprocessor(test.meta, where=test.uri)
    column = input_column(test.reader.column_names(), test.uri)
    outs: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for frag in test.reader.fragments:
        mask = test.keep[frag.start:frag.start + frag.num_rows]
        if not mask.any():
            continue
        x = prep(test.reader.read(frag, [column]))[mask]
        if shape is None:
            shape = tuple(int(d) for d in x.shape[1:])
            if check_shape is not None:
                check_shape(shape)
        outs.extend(model(x[s:s + batch_size]) for s in range(0, len(x), batch_size))
    assert shape is not None  # load_test insists on labelled rows
    return np.concatenate(outs), shape
