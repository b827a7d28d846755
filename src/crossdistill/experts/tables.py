"""Prediction tables: one teacher's outputs on known inputs, in the teacher's own label space.

A table is a soft-label dataset (``id`` + ``logits`` or ``topk_logprobs``/``topk_indices``) whose meta
names the ``teacher`` and carries a ``label_map``: entry ``j`` is the global class id of the teacher's
output ``j``. A specialist that knows only some classes therefore outputs a narrower vector; the
table lifts it into the global space with zeros on the classes it does not cover. Tables load from a
stored dataset, or from a teacher asked about datasets (``table_from_teacher``: a live OIP endpoint, an
in-process teacher or a stored table, through ``crossdistill.teacher.labeling.label_dataset``), into
the same in-memory form (probabilities in float64 computed from the float32 wire/storage values by the
same code), so all paths give identical results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from crossdistill.config import StrictConfig
from crossdistill.data.shards import Dataset, DatasetReader, read_dataset, write_dataset
from crossdistill.errors import DataError


@dataclass
class PredictionTable:
    """Teacher ``teacher``'s distribution over its own outputs for each example id."""

    teacher: str
    ids: np.ndarray  # int64 [N]
    probs: np.ndarray  # float64 [N, K], K = len(label_map)
    label_map: np.ndarray  # int64 [K]: teacher output index -> global class id
    num_classes: int  # size of the global label space
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.probs = np.asarray(self.probs, dtype=np.float64)
        self.label_map = validate_label_map(self.label_map, self.probs.shape[-1] if self.probs.ndim == 2 else -1,
                                            self.num_classes, where=f"teacher '{self.teacher}'")
        if self.probs.ndim != 2 or len(self.probs) != len(self.ids):
            raise DataError(f"teacher '{self.teacher}': probs has shape {self.probs.shape}, expected "
                            f"[{len(self.ids)}, {len(self.label_map)}] (one row per id)")
        if len(np.unique(self.ids)) != len(self.ids):
            raise DataError(f"teacher '{self.teacher}': table has duplicate example ids")
        if not np.isfinite(self.probs).all():
            raise DataError(f"teacher '{self.teacher}': probs hold NaN or Inf")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def covered(self) -> np.ndarray:
        """bool ``[C]``: which global classes this teacher can output."""
        mask = np.zeros(self.num_classes, dtype=bool)
        mask[self.label_map] = True
        return mask

    def global_probs(self) -> np.ndarray:
        """float64 ``[N, C]``: the distribution in the global label space (0 on uncovered classes)."""
        out = np.zeros((len(self.ids), self.num_classes), dtype=np.float64)
        out[:, self.label_map] = self.probs
        return out

    def predictions(self) -> np.ndarray:
        """int64 ``[N]``: the global class the teacher picks for each example."""
        return self.label_map[np.argmax(self.probs, axis=1)]

    def align(self, ids: np.ndarray, *, where: str = "") -> PredictionTable:
        """The rows for ``ids`` in that order; a missing id is an error naming the teacher."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        pos = np.searchsorted(self.ids, ids, sorter=order)
        pos = np.clip(pos, 0, max(len(self.ids) - 1, 0))
        found = order[pos] if len(self.ids) else np.zeros(0, dtype=np.int64)
        ok = (len(self.ids) > 0) & (self.ids[found] == ids) if len(ids) else np.ones(0, dtype=bool)
        if len(ids) and not np.all(ok):
            missing = ids[~ok]
            raise DataError(f"teacher '{self.teacher}' has no prediction for {len(missing)} example id(s) "
                            f"{where}(first: {missing[:5].tolist()}); label the same inputs with every teacher")
        return PredictionTable(self.teacher, ids, self.probs[found], self.label_map, self.num_classes,
                               dict(self.meta))


def validate_label_map(label_map: Sequence[int] | np.ndarray | None, width: int, num_classes: int, *,
                       where: str) -> np.ndarray:
    """Check a label map against the output width and the global class count; identity when None."""
    if num_classes <= 0:
        raise DataError(f"{where}: num_classes must be positive, got {num_classes}")
    if label_map is None:
        if width != num_classes:
            raise DataError(f"{where}: outputs {width} classes but the global label space has {num_classes}; "
                            "give a label_map (teacher output index -> global class id)")
        return np.arange(num_classes, dtype=np.int64)
    raw = np.asarray(label_map)
    if raw.ndim != 1 or (raw.size and not np.issubdtype(raw.dtype, np.integer)):
        raise DataError(f"{where}: label_map must be a flat list of integer class ids, got {np.asarray(label_map).tolist()!r}")
    lm = raw.astype(np.int64)
    if width >= 0 and len(lm) != width:
        raise DataError(f"{where}: label_map has {len(lm)} entries but the teacher outputs {width} values "
                        "(one global class id per output index expected)")
    if len(lm) == 0:
        raise DataError(f"{where}: label_map is empty (the teacher must cover at least one class)")
    if lm.min() < 0 or lm.max() >= num_classes:
        bad = lm[(lm < 0) | (lm >= num_classes)]
        raise DataError(f"{where}: label_map holds class ids {bad.tolist()} outside 0..{num_classes - 1}")
    if len(np.unique(lm)) != len(lm):
        raise DataError(f"{where}: label_map maps two outputs to the same class: {lm.tolist()}")
    return lm


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _probs_from_columns(cols: dict[str, np.ndarray], width: int | None, where: str) -> np.ndarray:
    """Probabilities from dense logits, or from a top-k pair (remaining mass spread evenly)."""
    if "logits" in cols:
        logits = np.asarray(cols["logits"])
        if logits.ndim != 2:
            raise DataError(f"{where}: 'logits' must be [N, C], got shape {logits.shape}")
        return softmax(logits)
    if "topk_logprobs" in cols and "topk_indices" in cols:
        if width is None:
            raise DataError(f"{where}: top-k outputs need num_classes (teacher output width) in meta")
        lp = np.asarray(cols["topk_logprobs"], dtype=np.float64)
        idx = np.asarray(cols["topk_indices"], dtype=np.int64)
        if lp.shape != idx.shape or lp.ndim != 2:
            raise DataError(f"{where}: topk_logprobs {lp.shape} and topk_indices {idx.shape} must both be [N, k]")
        if idx.size and (idx.min() < 0 or idx.max() >= width):
            raise DataError(f"{where}: topk_indices outside 0..{width - 1}")
        k = lp.shape[1]
        top = np.exp(lp)
        rest = np.clip(1.0 - top.sum(axis=1, keepdims=True), 0.0, None)
        fill = rest / (width - k) if width > k else np.zeros_like(rest)
        probs = np.repeat(fill, width, axis=1)
        np.put_along_axis(probs, idx, top, axis=1)
        return probs / probs.sum(axis=1, keepdims=True)
    raise DataError(f"{where}: no 'logits' or 'topk_logprobs'+'topk_indices' columns "
                    f"(columns: {sorted(cols)})")


def table_from_dataset(ds: Dataset, *, teacher: str | None = None, label_map: Sequence[int] | None = None,
                       num_classes: int | None = None, where: str = "dataset") -> PredictionTable:
    """A table from an in-memory soft-label dataset; arguments override the dataset's meta."""
    meta = dict(ds.meta)
    width = meta.get("num_classes")
    cols = {k: v for k, v in ds.columns.items()}
    probs = _probs_from_columns(cols, width, where)
    lm = label_map if label_map is not None else meta.get("label_map")
    global_c = num_classes or meta.get("global_num_classes")
    if global_c is None:
        if lm is not None:
            raise DataError(f"{where}: a label_map is given but not the global class count; "
                            "pass num_classes or set meta 'global_num_classes'")
        global_c = probs.shape[1]
    name = teacher or str(meta.get("teacher") or meta.get("name") or "teacher")
    lm_arr = validate_label_map(lm, probs.shape[1], int(global_c), where=f"{where} (teacher '{name}')")
    return PredictionTable(name, ds.ids, probs, lm_arr, int(global_c), meta)


def load_table(uri: str, *, teacher: str | None = None, label_map: Sequence[int] | None = None,
               num_classes: int | None = None) -> PredictionTable:
    """Read a stored prediction table (a soft-label dataset) from any URI."""
    return table_from_dataset(read_dataset(uri), teacher=teacher, label_map=label_map,
                              num_classes=num_classes, where=uri)


def save_table(uri: str, table: PredictionTable, *, num_shards: int = 1) -> str:
    """Write ``table`` as a dense soft-label dataset (log-probabilities as ``logits``)."""
    logp = np.log(np.clip(table.probs, 1e-30, None)).astype(np.float32)
    meta = {**table.meta, "teacher": table.teacher, "label_map": table.label_map.tolist(),
            "num_classes": int(len(table.label_map)), "global_num_classes": int(table.num_classes),
            "mode": "dense", "temperature": 1.0}
    return write_dataset(uri, Dataset({"id": table.ids, "logits": logp}, meta), num_shards=num_shards)


def table_from_teacher(teacher: Any, data: DatasetReader | Sequence[DatasetReader], *, name: str,
                       num_classes: int, label_map: Sequence[int] | None = None, batch_size: int = 256,
                       progress: str | None = None) -> PredictionTable:
    """Ask ``teacher`` (any source of the teacher interface: endpoint, in-process, stored table) about
    every row of ``data`` (one dataset or several, labelled in turn) through ``label_dataset``.

    The answers go through the same conversion as a stored table, so a stored copy of the same
    outputs loads to the identical table. Only the answers are kept, never the inputs.
    """
    from crossdistill.teacher.labeling import label_dataset

    readers = [data] if isinstance(data, DatasetReader) else list(data)
    parts = [part for reader in readers
             for part in label_dataset(teacher, reader, batch_size=batch_size, progress=progress) if len(part)]
    if not parts:
        raise DataError(f"teacher '{name}': no inputs to label (empty dataset)")
    keep = [c for c in parts[0].outputs if not c.startswith("layer/")]
    cols = {c: np.concatenate([p.outputs[c] for p in parts]) for c in keep}
    meta = teacher.metadata()
    width = len(label_map) if label_map is not None else (meta.get("num_classes") or num_classes)
    probs = _probs_from_columns(cols, width, f"teacher '{name}'")
    lm = label_map if label_map is not None else meta.get("label_map")
    lm_arr = validate_label_map(lm, probs.shape[1], num_classes, where=f"teacher '{name}'")
    return PredictionTable(name, np.concatenate([p.ids for p in parts]), probs, lm_arr, num_classes,
                           {"teacher": name, "mode": "topk" if "topk_logprobs" in cols else "dense",
                            "class_names": meta.get("class_names")})


def stack_tables(tables: Sequence[PredictionTable], ids: np.ndarray, *, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Aligned global distributions ``[T, N, C]`` and coverage ``[T, C]`` of several teachers on ``ids``."""
    if not tables:
        raise DataError("no teachers given (need at least one prediction table)")
    check_compatible(tables)
    aligned = [t.align(ids, where=where) for t in tables]
    return np.stack([a.global_probs() for a in aligned]), np.stack([t.covered for t in tables])


def check_compatible(tables: Sequence[PredictionTable]) -> None:
    """All teachers share one global label space and have distinct names."""
    sizes = {t.teacher: t.num_classes for t in tables}
    if len(set(sizes.values())) > 1:
        raise DataError(f"teachers disagree on the global number of classes: {sizes} "
                        "(every label_map must map into the same label space)")
    names = [t.teacher for t in tables]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"teacher names must be distinct, got duplicates {dupes}")


class TeacherSource(StrictConfig):
    """Where one teacher's predictions come from: a stored table, or a live OIP endpoint."""

    name: str = Field(..., min_length=1, description="teacher name used in reports")
    table: str | None = Field(None, description="URI of a stored prediction table (soft-label dataset)")
    endpoint: dict[str, Any] | None = Field(None, description="TeacherClientConfig fields (url, model_name, ...)")
    label_map: list[int] | None = Field(None, description="teacher output index -> global class id; "
                                                          "default: the table's meta, else identity")

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSource:
        if (self.table is None) == (self.endpoint is None):
            raise ValueError(f"teacher '{self.name}': give exactly one of 'table' or 'endpoint'")
        return self


def open_source(src: TeacherSource) -> Any:
    """The teacher of ``src`` behind the one teacher interface: its stored table, or its endpoint."""
    from crossdistill.teacher.client import TeacherClientConfig
    from crossdistill.teacher.labeling import StoredTeacher, open_teacher

    if src.table is not None:
        return StoredTeacher(src.table, name=src.name)
    return open_teacher(TeacherClientConfig.parse(src.endpoint, source=f"teacher '{src.name}' endpoint"))


def load_source(src: TeacherSource, *, num_classes: int, data: DatasetReader | Sequence[DatasetReader] = (),
                batch_size: int = 256) -> PredictionTable:
    """The table of ``src`` on the rows of ``data``: its stored table (all of it when no data is given)
    or its endpoint's answers, both through ``table_from_teacher``."""
    readers = [data] if isinstance(data, DatasetReader) else list(data)
    if not readers:
        if src.table is None:
            raise DataError(f"teacher '{src.name}' is a live endpoint: it needs a dataset with inputs to label")
        return load_table(src.table, teacher=src.name, label_map=src.label_map, num_classes=num_classes)
    with open_source(src) as teacher:
        return table_from_teacher(teacher, readers, name=src.name, num_classes=num_classes,
                                  label_map=src.label_map, batch_size=batch_size)
