"""Label spaces: a dataset's classes by name, and how a teacher's outputs map onto them.

A dataset records ``class_names`` in its meta (import-data writes them; the number of classes is
always ``len(class_names)``, never ``max(label) + 1``). A teacher may declare its own output names; the
student side then reorders the teacher's outputs to the dataset's order by name, and refuses to train
or evaluate when the two lists do not hold the same names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crossdistill.errors import DataError


def class_names(meta: dict[str, Any], where: str) -> list[str]:
    """The dataset's class names (``meta['class_names']``, else ``'0'..'C-1'`` from ``num_classes``)."""
    names = meta.get("class_names")
    if names:
        names = [str(n) for n in names]
        if len(set(names)) != len(names):
            raise DataError(f"{where}: class_names has duplicates: {names}")
        if meta.get("num_classes") not in (None, len(names)):
            raise DataError(f"{where}: num_classes={meta['num_classes']} but class_names has {len(names)} "
                            f"entries: {names}")
        return names
    if meta.get("num_classes"):
        return [str(i) for i in range(int(meta["num_classes"]))]
    raise DataError(f"{where}: the dataset records neither class_names nor num_classes in its manifest meta "
                    "(import it with `crossdistill import-data`, which records them)")


def teacher_order(dataset_names: Sequence[str], teacher_names: Sequence[str] | None, num_outputs: int | None,
                  where: str) -> np.ndarray | None:
    """Column index into the teacher's outputs for each dataset class, or None when already aligned.

    Without declared teacher names the outputs are taken in dataset order and only their number is
    checked. With names, both lists must hold the same names (any order); otherwise a DataError names
    both lists.
    """
    ds = list(dataset_names)
    if teacher_names is None:
        if num_outputs is not None and num_outputs != len(ds):
            raise DataError(f"{where}: the teacher has {num_outputs} outputs, the data has {len(ds)} classes "
                            f"{ds}; declare the teacher's class names (teacher-serve class_names) or use "
                            f"data with the teacher's label set")
        return None
    tn = [str(n) for n in teacher_names]
    if sorted(tn) != sorted(ds) or len(set(tn)) != len(tn):
        missing = [n for n in ds if n not in tn]
        extra = [n for n in tn if n not in ds]
        raise DataError(f"{where}: the teacher's classes {tn} do not match the data's classes {ds} "
                        f"(only in data: {missing}; only in teacher: {extra})")
    if tn == ds:
        return None
    position = {n: i for i, n in enumerate(tn)}
    return np.array([position[n] for n in ds], dtype=np.int64)
