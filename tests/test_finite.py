"""data.finite.first_nonfinite: the one NaN/Inf locator behind import, stored soft labels and the teacher server."""

from __future__ import annotations

import numpy as np

from crossdistill.data.finite import first_nonfinite


def test_the_first_nonfinite_value_is_named_by_row_and_position_in_the_row():
    x = np.zeros((4, 2, 3), dtype=np.float32)
    assert first_nonfinite(x) is None
    x[3, 0, 0] = np.inf
    x[2, 1, 1] = np.nan  # row 2 comes first; inside it, flattened position 1 * 3 + 1
    assert first_nonfinite(x) == (2, 4)
    assert first_nonfinite(np.array([1.0, -np.inf, np.nan])) == (1, 0)
    assert first_nonfinite(np.arange(6).reshape(3, 2)) is None  # integers hold no NaN
