"""Label a dataset with a teacher: the one loop that asks a teacher about many stored inputs.

Pseudo-labelling, evaluation and the multi-teacher tables all call :func:`label_dataset`. The
teacher is anything with the teacher interface (``metadata()``, ``stream(batches)``): the OIP gRPC
client, the in-process teacher (``inprocess:<model uri>``, both from :func:`open_teacher`), or a
stored prediction table (:class:`~crossdistill.teacher.colocated.StoredTeacher`), which answers by id
and so is sent no inputs. The dataset is read fragment by fragment (row group by row group) and
turned into model inputs by the dataset's :class:`~crossdistill.data.preprocess.Preprocessor`; the
teacher keeps several requests in flight across fragment boundaries, and each fragment's answers are
handed on, in fragment order, as soon as they are all in. Memory is bounded by a few fragments'
inputs and answers, whatever the size of the dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from tqdm import tqdm

from crossdistill.data.preprocess import Preprocessor, input_column
from crossdistill.data.shards import DatasetReader, Fragment
from crossdistill.data.text import model_inputs
from crossdistill.errors import ConfigError, TeacherResponseError
from crossdistill.teacher import protocol as P
from crossdistill.teacher.colocated import StoredTeacher, open_teacher
from crossdistill.teacher.protocol import TeacherOutput

T = TypeVar("T")

__all__ = ["LabeledFragment", "Teacher", "StoredTeacher", "check_vocabulary", "label_dataset", "open_teacher",
           "output_columns"]


class Teacher(Protocol):
    """The one teacher interface (TeacherClient, ColocatedTeacher, StoredTeacher)."""

    def metadata(self) -> dict[str, Any]: ...

    def stream(self, batches: Iterable[tuple[np.ndarray, Any, T]]) -> Iterator[tuple[TeacherOutput, T]]: ...


def check_vocabulary(meta: Mapping[str, Any], name: str, fingerprint: str, where: str) -> None:
    """Stop before the first request unless a teacher (``meta``: its metadata, or the meta of soft labels it
    wrote; ``name``: e.g. its URL) has the vocabulary (``vocab_fingerprint``) that ``where`` (the student's
    data) was tokenized with: with another vocabulary a token id means another token on each side, and
    distillation would teach nonsense."""
    theirs = meta.get("vocab_fingerprint")
    if theirs != fingerprint:
        said = f"vocabulary {theirs}" if theirs else "no vocabulary fingerprint (no tokenizer beside its model)"
        raise ConfigError(f"teacher {name} has {said} but {where} was tokenized with vocabulary {fingerprint}: "
                          "teacher and student must share one tokenizer")


@dataclass
class LabeledFragment:
    """One fragment's answers, rows in the fragment's order.

    ``outputs``: ``logits`` or ``topk_logprobs`` + ``topk_indices``, plus ``layer/<name>`` (the
    soft-label dataset's columns; empty for a fragment without rows). ``columns``: the extra dataset
    columns asked for (e.g. ``y``). ``input_shape``: the model input's shape per example (None when
    the teacher needs no inputs or the fragment is empty).
    """

    index: int  # position in the list of fragments labelled
    fragment: Fragment
    ids: np.ndarray
    outputs: dict[str, np.ndarray]
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def output_columns(out: TeacherOutput) -> dict[str, np.ndarray]:
    """A teacher answer as soft-label dataset columns (float32 values, indices as compact as they came)."""
    cols: dict[str, np.ndarray] = {}
    if out.logits is not None:
        cols[P.LOGITS] = np.asarray(out.logits, dtype=np.float32)
    if out.topk_logprobs is not None:
        cols[P.TOPK_LOGPROBS] = np.asarray(out.topk_logprobs, dtype=np.float32)
        cols[P.TOPK_INDICES] = np.asarray(out.topk_indices)
    for name, value in out.layers.items():
        cols[P.LAYER_PREFIX + name] = np.asarray(value, dtype=np.float32)
    if P.LOGITS not in cols and P.TOPK_LOGPROBS not in cols:
        raise TeacherResponseError(f"teacher answer has neither '{P.LOGITS}' nor '{P.TOPK_LOGPROBS}'")
    return cols


@dataclass
class _Pending:
    fragment: Fragment
    ids: np.ndarray
    columns: dict[str, np.ndarray]
    input_shape: tuple[int, ...] | None
    waiting: int
    parts: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


def label_dataset(teacher: Teacher, reader: DatasetReader, fragments: Sequence[Fragment] | None = None, *,
                  batch_size: int = 256, columns: Sequence[str] = (), preprocess: dict[str, Any] | None = None,
                  progress: str | None = None) -> Iterator[LabeledFragment]:
    """The teacher's answers for ``fragments`` of ``reader`` (default: all), one fragment at a time, in order.

    Each fragment is read, preprocessed and sent as ``batch_size`` batches; ``teacher.stream`` keeps
    its requests in flight across fragments. ``columns`` are further dataset columns handed on with the
    answers; ``preprocess`` overrides the dataset's preprocessing spec; ``progress`` is a progress bar's
    label (None: no bar). Raises TeacherResponseError if an answer's ids differ from its batch's or a
    batch got no answer; the teacher's own errors pass through.
    """
    frags = list(reader.fragments if fragments is None else fragments)
    needs_inputs = getattr(teacher, "needs_inputs", True)
    wanted = list(columns)
    if needs_inputs:
        wanted.insert(0, input_column(reader.column_names(), reader.description))
    prep = Preprocessor(reader.meta, preprocess, where=reader.description)
    text = reader.meta.get("kind") == "text"
    pending: dict[int, _Pending] = {}

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray | None, tuple[int, int]]]:
        for k, frag in enumerate(frags):
            cols = reader.read(frag, wanted)
            ids = cols["id"]
            x = prep(cols) if needs_inputs and len(ids) else None
            if x is not None and text:
                x = model_inputs(x)
            starts = range(0, len(ids), batch_size)
            pending[k] = _Pending(frag, ids, {c: cols[c] for c in columns}, None if x is None else x.shape[1:],
                                  len(starts))
            for s in starts:
                yield ids[s:s + batch_size], None if x is None else x[s:s + batch_size], (k, s)

    def finished(k: int) -> LabeledFragment:
        p = pending.pop(k)
        parts = [p.parts[s] for s in sorted(p.parts)]
        outputs = {c: np.concatenate([q[c] for q in parts]) for c in parts[0]} if parts else {}
        return LabeledFragment(k, p.fragment, p.ids, outputs, p.columns, p.input_shape)

    bar = tqdm(total=sum(f.num_rows for f in frags), desc=progress, unit="ex", disable=progress is None)
    next_k = 0
    with bar:
        for out, (k, s) in teacher.stream(batches()):
            p = pending[k]
            sent = p.ids[s:s + batch_size]
            if not np.array_equal(np.asarray(out.ids, dtype=np.int64).reshape(-1), sent) or s in p.parts:
                raise TeacherResponseError(f"{reader.description}: the answer for rows {p.fragment.start + s}.."
                                           f"{p.fragment.start + s + len(sent) - 1} carries other ids than "
                                           f"that batch (or came twice)")
            p.parts[s] = output_columns(out)
            p.waiting -= 1
            bar.update(len(sent))
            while next_k in pending and pending[next_k].waiting == 0:
                yield finished(next_k)
                next_k += 1
    while next_k in pending and pending[next_k].waiting == 0:
        yield finished(next_k)
        next_k += 1
    if next_k < len(frags):
        frag = frags[next_k]
        raise TeacherResponseError(f"{reader.description}: rows {frag.start}..{frag.start + frag.num_rows - 1} "
                                   f"(shard {frag.shard}) got no teacher answer")
