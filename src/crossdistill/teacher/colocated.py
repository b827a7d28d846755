"""A teacher inside the student's process: the co-located baseline the remote teacher is measured against.

``teacher.url = "inprocess:<model uri>"`` in any client config loads the teacher with the same
adapters the server uses and answers sequentially, with the same ``TeacherOutput`` the gRPC client
returns, so the trainer, pseudo-labelling and benchmarks can swap a remote teacher for a local one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

from crossdistill.errors import TeacherResponseError
from crossdistill.teacher import protocol as P
from crossdistill.teacher.adapters import TeacherAdapter, load_teacher
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig

INPROCESS = "inprocess:"
T = TypeVar("T")


class ColocatedTeacher:
    """Same interface as TeacherClient (``infer``, ``stream``, ``metadata``), no network."""

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
                "platform": f"inprocess {self.uri}"}

    def infer(self, ids: np.ndarray, x: np.ndarray) -> P.TeacherOutput:
        result = self.adapter.predict(np.ascontiguousarray(x, dtype=np.float32), tuple(self.cfg.layers))
        logits = result[P.LOGITS]
        if logits.shape != (len(x), self.adapter.num_classes) or not np.isfinite(logits).all():
            raise TeacherResponseError(f"in-process teacher {self.uri}: tensor '{P.LOGITS}' has shape "
                                       f"{logits.shape} or non-finite values; expected finite "
                                       f"[{len(x)}, {self.adapter.num_classes}]")
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
