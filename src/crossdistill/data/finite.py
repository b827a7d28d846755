"""Where an array first holds NaN or Inf: one check for imported features, stored soft labels and the
teacher server's inputs, each of which names the row (and the position inside it) in its own error."""

from __future__ import annotations

import numpy as np


def first_nonfinite(x: np.ndarray) -> tuple[int, int] | None:
    """``(row, position within the flattened row)`` of the first NaN or Inf of ``x`` (``[N, ...]``), or None
    when every value is finite or ``x`` is not floating point. A finite array costs one vectorised pass."""
    if x.dtype.kind != "f" or np.isfinite(x).all():
        return None
    flat = x.reshape(len(x), -1)
    row = int(np.flatnonzero(~np.isfinite(flat).all(axis=1))[0])
    return row, int(np.flatnonzero(~np.isfinite(flat[row]))[0])
