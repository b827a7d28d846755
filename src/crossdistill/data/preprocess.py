"""From stored columns to the model's float32 input, by the preprocessing spec recorded in the dataset.

Datasets store inputs compactly: ``x`` as float32 (already model-ready), ``x`` as uint8 (pixels), or
an ``image`` column of encoded bytes (PNG/JPEG). ``meta['preprocess']`` says how to turn them into the
float32 batch the student and the teacher see; a user may override it per step. Decoding runs while
reading (in DataLoader workers when training), never at import time.

The image spec (written by import-data): ``{"kind": "image", "size": [H, W], "channels": 1 | 3,
"scale": 1/255, "mean": [...], "std": [...]}``; every image is decoded, converted to grey (1 channel)
or RGB (3), resized to ``size`` (bilinear) and laid out channels-first ``[C, H, W]``, then
``(pixel * scale - mean) / std`` per channel.

Text datasets (import-data ``text=``) store token ids in a ``tokens`` column and record the spec
``{"kind": "text"}``: their inputs stay integers, int64 ``[B, seq_len + 1]`` (token ids are never scaled).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from crossdistill.errors import DataError

INPUT_COLUMNS = ("x", "image", "tokens")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def input_column(columns: list[str] | dict[str, Any], where: str) -> str:
    """The name of the input column of a dataset (``x``, ``image`` or ``tokens``)."""
    for name in INPUT_COLUMNS:
        if name in columns:
            return name
    raise DataError(f"{where} has no input column: expected one of {list(INPUT_COLUMNS)} "
                    f"(columns: {sorted(columns)})")


def image_info(data: bytes, where: str) -> tuple[int, int, int]:
    """Decode one encoded image fully (Pillow); its (height, width, channels: 1 grey or 3 colour).

    A file that does not decode is a DataError naming ``where``.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.height, im.width, 1 if im.mode in GREY_MODES else 3
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: the image does not decode: {exc}") from None


def decode_image(data: bytes, size: tuple[int, int], channels: int, where: str) -> np.ndarray:
    """One encoded image as uint8 ``[channels, H, W]``, resized (bilinear) to ``size = (H, W)``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: the image does not decode: {exc}") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


class Preprocessor:
    """Callable ``(batch columns) -> float32 [B, ...]`` built from a dataset's meta (plus overrides); a text
    dataset's tokens come out as int64 ``[B, seq_len + 1]``."""

    def __init__(self, meta: dict[str, Any], override: dict[str, Any] | None = None, where: str = "dataset") -> None:
        self.spec: dict[str, Any] = {**(meta.get("preprocess") or {}), **(override or {})}
        self.where = where

    def __call__(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        return self.normalize(self.decode(columns))

    def decode(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """The batch's inputs as stored values (encoded images decoded to uint8 ``[B, C, H, W]``): compact,
        for a shuffle buffer to hold; :meth:`normalize` makes them model-ready."""
        name = input_column(columns, self.where)
        return self._decode(columns["image"], columns.get("id")) if name == "image" else columns[name]

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Decoded inputs -> contiguous float32 ``(x * scale - mean) / std`` (each part of the spec optional);
        token ids (spec kind ``text``) -> contiguous int64, unchanged."""
        if self.spec.get("kind") == "text":
            return np.ascontiguousarray(x, dtype=np.int64)
        scale, mean, std = self.spec.get("scale"), self.spec.get("mean"), self.spec.get("std")
        x = np.array(x, dtype=np.float32) if scale is not None or mean is not None or std is not None \
            else x.astype(np.float32, copy=False)  # a copy of its own when it is changed in place below
        if scale is not None:
            x *= np.float32(scale)
        if mean is not None:
            x -= self._per_channel("mean", mean, x)
        if std is not None:
            x /= self._per_channel("std", std, x)
        return np.ascontiguousarray(x)

    def _per_channel(self, key: str, values: Any, x: np.ndarray) -> np.ndarray:
        """The spec's ``mean`` or ``std`` shaped to broadcast over channels-first ``x``: one number for every
        channel, or one per channel (axis 1); anything else is a DataError naming the key and both counts."""
        try:
            stats = np.asarray(values, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            stats = None
        channels = x.shape[1] if x.ndim > 1 else 1
        if stats is None or len(stats) not in (1, channels):
            raise DataError(f"{self.where}: preprocess '{key}'={values!r}: expected a number or one per channel "
                            f"({channels} channel(s): inputs of shape {list(x.shape[1:])}, channels first)")
        if key == "std" and not (np.isfinite(stats).all() and (stats > 0).all()):
            raise DataError(f"{self.where}: preprocess 'std'={values!r}: expected finite numbers > 0")
        return stats.reshape((1, -1, *([1] * (x.ndim - 2))) if x.ndim > 2 else (1, -1))

    def _image_params(self) -> tuple[tuple[int, int], int]:
        size, channels = self.spec.get("size"), self.spec.get("channels")
        if self.spec.get("kind") != "image" or size is None or channels not in (1, 3):
            raise DataError(f"{self.where}: an 'image' column needs a preprocess spec with kind 'image', size "
                            f"[H, W] and channels 1 or 3 (got {self.spec}); import it with import-data or "
                            "override the spec")
        if isinstance(size, int):
            size = [size, size]
        return (int(size[0]), int(size[1])), int(channels)

    def _decode(self, images: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
        size, channels = self._image_params()
        out = np.empty((len(images), channels, *size), dtype=np.uint8)
        for i, data in enumerate(images):
            where = f"{self.where}: id {ids[i]}" if ids is not None else f"{self.where}: row {i} of the batch"
            out[i] = decode_image(data, size, channels, where)
        return out

