"""From stored columns to the model's float32 input, by the preprocessing spec recorded in the dataset.

Datasets store inputs compactly: ``x`` as float32 (already model-ready), ``x`` as uint8 (pixels), or
an ``image`` column of encoded bytes (PNG/JPEG). ``meta['preprocess']`` says how to turn them into the
float32 batch the student and the teacher see; a user may override it per step. Decoding runs while
reading (in DataLoader workers when training), never at import time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crossdistill.errors import DataError

INPUT_COLUMNS = ("x", "image")


def input_column(columns: list[str] | dict[str, Any], where: str) -> str:
    """The name of the input column of a dataset (``x`` or ``image``)."""
    for name in INPUT_COLUMNS:
        if name in columns:
            return name
    raise DataError(f"{where} has no input column: expected one of {list(INPUT_COLUMNS)} "
                    f"(columns: {sorted(columns)})")


class Preprocessor:
    """Callable ``(batch columns) -> float32 [B, ...]`` built from a dataset's meta (plus overrides)."""

    def __init__(self, meta: dict[str, Any], override: dict[str, Any] | None = None, where: str = "dataset") -> None:
        self.spec: dict[str, Any] = {**(meta.get("preprocess") or {}), **(override or {})}
        self.where = where

    def __call__(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        name = input_column(columns, self.where)
        values = columns[name]
        if name == "image":
            raise DataError(f"{self.where}: encoded 'image' columns need the image preprocessing of import-data")
        x = values.astype(np.float32, copy=False)
        scale = self.spec.get("scale")
        if scale is not None:
            x = x * np.float32(scale)
        mean, std = self.spec.get("mean"), self.spec.get("std")
        if mean is not None:
            x = x - np.asarray(mean, dtype=np.float32).reshape(self._channel_shape(x))
        if std is not None:
            x = x / np.asarray(std, dtype=np.float32).reshape(self._channel_shape(x))
        return np.ascontiguousarray(x, dtype=np.float32)

    @staticmethod
    def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
        """Broadcast per-channel statistics over [B, C, ...] (channels-first) inputs."""
        return (1, -1, *([1] * (x.ndim - 2))) if x.ndim > 2 else (1, -1)
