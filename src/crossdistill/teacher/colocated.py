"""Teachers answered inside the caller's process, behind the same interface as the gRPC client.

``teacher.url = "inprocess:<model uri>"`` in any client config loads the teacher with the same
adapters the server uses and answers sequentially, with the same ``TeacherOutput`` the gRPC client
returns, so the trainer, pseudo-labelling, evaluation and benchmarks can swap a remote teacher for a
local one (the co-located baseline the remote teacher is measured against). ``StoredTeacher`` answers
from a stored prediction table (a soft-label dataset, e.g. pseudo-label's output) by example id: the
multi-teacher tables read a teacher's earlier answers through the same interface as a live one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

from crossdistill.data.shards import DatasetReader
from crossdistill.errors import CrossdistillError, DataError, ModelFormatError, TeacherResponseError
from crossdistill.teacher import protocol as P
from crossdistill.teacher.adapters import TeacherAdapter, first_line, load_teacher
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig
from crossdistill.teacher.serve_config import resolve_class_names, resolve_vocab_fingerprint

INPROCESS = P.INPROCESS
T = TypeVar("T")


class ColocatedTeacher:
    """Same interface as TeacherClient (``infer``, ``stream``, ``metadata``), no network."""

    needs_inputs = True

    def __init__(self, cfg: TeacherClientConfig, adapter: TeacherAdapter | None = None) -> None:
        self.cfg = cfg
        self.uri = cfg.url[len(INPROCESS):]
        self.adapter = adapter or load_teacher(self.uri)

    def __enter__(self) -> ColocatedTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the adapter lives as long as this object."""

    def wait_ready(self, timeout_s: float = 0.0) -> None:
        """Always ready once constructed."""

    def metadata(self) -> dict[str, Any]:
        a = self.adapter
        return {"input_shape": list(a.input_shape or []), "num_classes": a.num_classes,
                "layers": {}, "num_parameters": a.num_parameters, "size_bytes": a.size_bytes,
                "platform": f"inprocess {self.uri}",
                **({"vocab_fingerprint": resolve_vocab_fingerprint(self.uri, None, a.num_classes)} if a.takes_tokens
                   else {"class_names": resolve_class_names(self.uri, None, a.num_classes)})}

    def infer(self, ids: np.ndarray, x: np.ndarray) -> P.TeacherOutput:
        x = np.ascontiguousarray(x, dtype=self.adapter.input_dtype)
        try:
            result = self.adapter.predict(x, tuple(self.cfg.layers))
        except CrossdistillError:
            raise
        except Exception as exc:  # a framework raises anything on a model/input mismatch
            raise ModelFormatError(f"in-process teacher {self.uri}: a forward pass on '{P.INPUT}' of shape "
                                   f"{list(x.shape)} failed: {first_line(exc)}") from None
        logits = result[P.LOGITS]
        want = (len(x), *(x.shape[1:] if self.adapter.takes_tokens else ()), self.adapter.num_classes)
        if logits.shape != want or not np.isfinite(logits).all():
            raise TeacherResponseError(f"in-process teacher {self.uri}: tensor '{P.LOGITS}' has shape "
                                       f"{logits.shape} or non-finite values; expected finite {list(want)}")
        out = P.TeacherOutput(ids=np.asarray(ids, dtype=np.int64), temperature=self.cfg.temperature,
                              layers={n: self._wire(result[n]) for n in self.cfg.layers})
        if self.cfg.top_k:
            lp, idx = P.topk_logprobs(logits, self.cfg.top_k, self.cfg.temperature)
            out.topk_logprobs, out.topk_indices = self._wire(lp), idx
        else:
            out.logits = self._wire(logits)
        return out

    def _wire(self, values: np.ndarray) -> np.ndarray:
        """What the client would decode: float32, rounded through FP16 when the wire is FP16."""
        return values.astype(np.float16).astype(np.float32) if self.cfg.fp16 else values.astype(np.float32)

    def stream(self, batches: Iterable[tuple[np.ndarray, np.ndarray, T]]) -> Iterator[tuple[P.TeacherOutput, T]]:
        """Sequential: each batch is answered before the next is read (nothing overlaps)."""
        for ids, x, payload in batches:
            yield self.infer(ids, x), payload


def open_teacher(cfg: TeacherClientConfig) -> TeacherClient | ColocatedTeacher:
    """A gRPC client for ``host:port``, or the co-located teacher for ``inprocess:<model uri>``."""
    if cfg.url.startswith(INPROCESS):
        return ColocatedTeacher(cfg)
    return TeacherClient(cfg)


_OUTPUTS = (P.LOGITS, P.TOPK_LOGPROBS, P.TOPK_INDICES)


class StoredTeacher:
    """A stored prediction table answering by example id (``x`` is ignored: the answers exist already).

    Opening reads the manifest and the ``id`` column only; answers are read fragment by fragment (the
    last two are cached), so asking in the table's own row order reads each fragment once. Its
    ``metadata()`` is the table's meta (``num_classes``, ``class_names``, ``label_map``, ...).
    """

    needs_inputs = False

    def __init__(self, uri: str, name: str | None = None) -> None:
        self.uri = uri
        self.reader = DatasetReader(uri)
        self.name = name or str(self.reader.meta.get("teacher") or uri)
        self.columns = [c for c in self.reader.column_names()
                        if c in _OUTPUTS or c.startswith(P.LAYER_PREFIX)]
        if P.LOGITS not in self.columns and not {P.TOPK_LOGPROBS, P.TOPK_INDICES} <= set(self.columns):
            raise DataError(f"{uri}: not a prediction table: no '{P.LOGITS}' or '{P.TOPK_LOGPROBS}' + "
                            f"'{P.TOPK_INDICES}' columns (columns: {self.reader.column_names()})")
        ids = np.concatenate([b["id"] for b in self.reader.iter_batches(["id"])] or [np.zeros(0, np.int64)])
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        if len(self._sorted) > 1 and np.any(self._sorted[1:] == self._sorted[:-1]):
            dup = self._sorted[1:][self._sorted[1:] == self._sorted[:-1]]
            raise DataError(f"{uri}: prediction table has duplicate example ids (first: {dup[:5].tolist()})")
        self._starts = np.array([f.start for f in self.reader.fragments], dtype=np.int64)
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def __enter__(self) -> StoredTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the cached fragments."""
        self._cache.clear()

    def wait_ready(self, timeout_s: float = 0.0) -> None:
        """Always ready once opened."""

    def metadata(self) -> dict[str, Any]:
        return {**self.reader.meta, "platform": f"table {self.uri}", "layers": {},
                "class_names": self.reader.meta.get("class_names"), "num_classes": self.reader.meta.get("num_classes")}

    def infer(self, ids: np.ndarray, x: np.ndarray | None = None) -> P.TeacherOutput:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = np.clip(np.searchsorted(self._sorted, ids), 0, max(len(self._sorted) - 1, 0))
        found = (self._sorted[pos] == ids) if len(self._sorted) else np.zeros(len(ids), dtype=bool)
        if not found.all():
            missing = ids[~found]
            raise DataError(f"prediction table {self.uri} has no answer for {len(missing)} example id(s) "
                            f"(first: {missing[:5].tolist()}); label the same inputs with every teacher")
        rows = self._order[pos]
        frag = np.searchsorted(self._starts, rows, side="right") - 1
        cols = {c: np.empty((len(ids), *self.reader.spec[c]["shape"]), dtype=self.reader.spec[c]["dtype"])
                for c in self.columns}
        for k in dict.fromkeys(frag.tolist()):
            here = frag == k
            part = self._fragment(k)
            local = rows[here] - self._starts[k]
            for c in self.columns:
                cols[c][here] = part[c][local]
        out = P.TeacherOutput(ids=ids, temperature=float(self.reader.meta.get("temperature", 1.0)),
                              logits=cols.get(P.LOGITS), topk_logprobs=cols.get(P.TOPK_LOGPROBS),
                              topk_indices=cols.get(P.TOPK_INDICES),
                              layers={c[len(P.LAYER_PREFIX):]: v for c, v in cols.items()
                                      if c.startswith(P.LAYER_PREFIX)})
        return out

    def _fragment(self, k: int) -> dict[str, np.ndarray]:
        if k not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = self.reader.read(self.reader.fragments[k], self.columns)
        return self._cache[k]

    def stream(self, batches: Iterable[tuple[np.ndarray, Any, T]]) -> Iterator[tuple[P.TeacherOutput, T]]:
        """Answers in request order (lookups, nothing overlaps)."""
        for ids, x, payload in batches:
            yield self.infer(ids, x), payload
