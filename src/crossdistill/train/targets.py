"""Where a batch's targets come from: its hard labels, stored soft labels, or a live teacher.

Every source turns the stream of :class:`Batch` es into ``(batch, Targets | None)`` pairs in batch
order, with the teacher's outputs already in the dataset's class order (:func:`teacher_order`): a
teacher or soft-label set that declares other class names is refused before any training step,
naming both lists. For text data (``class_names`` None, ``vocabulary`` the data's fingerprint) the
teacher answers per position and is kept as it came (dense logits or top-k, for the token losses);
a teacher or soft-label set of another vocabulary is refused before any step, naming both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from crossdistill.data.classes import teacher_order
from crossdistill.data.shards import DatasetReader
from crossdistill.data.stream import Batch
from crossdistill.data.text import model_inputs
from crossdistill.errors import ConfigError, DataError, TeacherResponseError
from crossdistill.losses.topk import teacher_probs_at
from crossdistill.teacher.client import TeacherClientConfig
from crossdistill.teacher.colocated import open_teacher
from crossdistill.teacher.labeling import check_vocabulary
from crossdistill.teacher.protocol import LAYER_PREFIX, TeacherOutput

log = logging.getLogger(__name__)


@dataclass
class Targets:
    """The teacher's signal for one batch, in the dataset's class order (CPU tensors)."""

    probs: torch.Tensor | None  # distribution at the training temperature (None for text: see below)
    logits: torch.Tensor | None = None  # dense logits (None for top-k); text: [B, T, V]
    layers: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: torch.Tensor | None = None  # per-example weights of the soft term (assembled sets)
    topk_logprobs: torch.Tensor | None = None  # text: the teacher's top-k per position [B, T, k], as it came
    topk_indices: torch.Tensor | None = None
    topk_temperature: float | None = None


class TargetSource(Protocol):
    """A source of targets: which soft-label columns it reads with the data, and the targets per batch."""

    soft_uris: list[str] | None
    soft_columns: list[str]

    def layer_shapes(self, first: Batch | None) -> dict[str, tuple[int, ...]]:
        """Shapes (no batch axis) of the teacher layers the feature pairs use."""

    def targets(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Targets | None]]:
        """The batches, in order, each with its targets."""


class _Remap:
    """Teacher output columns -> dataset classes (dense: take columns; top-k: rename indices)."""

    def __init__(self, order: np.ndarray | None) -> None:
        self.order = order
        self.inverse = None if order is None else np.argsort(order)

    def logits(self, values: np.ndarray) -> np.ndarray:
        return values if self.order is None else values[:, self.order]

    def indices(self, values: np.ndarray) -> np.ndarray:
        return values if self.inverse is None else self.inverse[values]


def _signal(temperature: float, num_classes: int, remap: _Remap | None, *, logits: np.ndarray | None = None,
            topk_logprobs: np.ndarray | None = None, topk_indices: np.ndarray | None = None,
            topk_temperature: float | None = None) -> Targets:
    if remap is None:  # text: per position, kept as it came; the token losses rebuild the distribution
        if logits is not None:
            return Targets(None, torch.as_tensor(np.asarray(logits, dtype=np.float32)))
        return Targets(None, topk_logprobs=torch.as_tensor(np.asarray(topk_logprobs, dtype=np.float32)),
                       topk_indices=torch.as_tensor(np.asarray(topk_indices, dtype=np.int64)),
                       topk_temperature=topk_temperature)
    if logits is not None:
        dense = torch.as_tensor(remap.logits(np.asarray(logits, dtype=np.float32)))
        return Targets(teacher_probs_at(temperature, logits=dense), dense)
    assert topk_logprobs is not None and topk_indices is not None
    indices = remap.indices(np.asarray(topk_indices, dtype=np.int64))
    return Targets(teacher_probs_at(temperature, topk_logprobs=topk_logprobs, topk_indices=indices,
                                    topk_temperature=topk_temperature, num_classes=num_classes))


class HardLabels:
    """No teacher: the labels are the only target."""

    soft_uris: list[str] | None = None
    soft_columns: list[str] = []

    def layer_shapes(self, first: Batch | None) -> dict[str, tuple[int, ...]]:
        return {}

    def targets(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Targets | None]]:
        for batch in batches:
            yield batch, None


class StoredSoftLabels:
    """Soft labels of a pseudo-label (or assembled) dataset, read in step with the inputs by the stream."""

    def __init__(self, uris: str | list[str], class_names: Sequence[str] | None, temperature: float,
                 layers: Sequence[str], dense_needed: bool, vocabulary: tuple[str, str] | None = None) -> None:
        self.soft_uris = [uris] if isinstance(uris, str) else list(uris)
        reader = DatasetReader(self.soft_uris)
        where, spec = reader.description, reader.spec
        self.where, self.temperature = where, temperature
        self.num_classes = len(class_names) if class_names is not None else int(reader.meta.get("num_classes") or 0)
        if "logits" in spec:
            self.soft_columns, width = ["logits"], (spec["logits"]["shape"] or [None])[-1]
        elif "topk_logprobs" in spec and "topk_indices" in spec:
            if dense_needed:
                raise ConfigError(f"loss=logit_matching needs dense logits, {where} holds top-k log-probabilities")
            self.soft_columns, width = ["topk_logprobs", "topk_indices"], reader.meta.get("num_classes")
            self.topk_temperature = reader.meta.get("temperature")
            if self.topk_temperature is not None and float(self.topk_temperature) != temperature:
                log.warning("soft labels %s are top-k at T=%s, training at T=%s: re-tempering (exact within "
                            "the top k, approximate for the tail)", where, self.topk_temperature, temperature)
        else:
            raise DataError(f"{where} has neither a 'logits' column nor 'topk_logprobs' + 'topk_indices' "
                            f"(columns: {sorted(spec)})")
        self.remap: _Remap | None = None
        if class_names is not None:
            self.remap = _Remap(teacher_order(class_names, reader.meta.get("class_names"), width,
                                              f"soft labels {where}"))
        elif vocabulary is not None:
            check_vocabulary(reader.meta, f"of the soft labels {where}", *vocabulary)
        self.layers = list(dict.fromkeys(layers))
        for name in self.layers:
            if LAYER_PREFIX + name not in spec:
                raise DataError(f"{where} has no column '{LAYER_PREFIX + name}' for feature pair teacher='{name}' "
                                f"(columns: {sorted(spec)})")
        self._layer_shapes = {n: tuple(spec[LAYER_PREFIX + n]["shape"]) for n in self.layers}
        self.soft_columns += [LAYER_PREFIX + n for n in self.layers]
        if "weight" in spec:
            self.soft_columns.append("weight")

    def layer_shapes(self, first: Batch | None) -> dict[str, tuple[int, ...]]:
        return dict(self._layer_shapes)

    def targets(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Targets | None]]:
        for batch in batches:
            s = batch.soft
            if "logits" in s:
                target = _signal(self.temperature, self.num_classes, self.remap, logits=s["logits"])
            else:
                target = _signal(self.temperature, self.num_classes, self.remap, topk_logprobs=s["topk_logprobs"],
                                 topk_indices=s["topk_indices"], topk_temperature=self.topk_temperature)
            target.layers = {n: torch.as_tensor(s[LAYER_PREFIX + n], dtype=torch.float32) for n in self.layers}
            if "weight" in s:
                target.weights = torch.as_tensor(s["weight"], dtype=torch.float32)
            yield batch, target


def _grouped(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive items in lists of ``size`` (the last may be shorter)."""
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _rows(out: TeacherOutput, lo: int, hi: int) -> TeacherOutput:
    """Rows ``lo:hi`` of a teacher answer that covered several student batches."""
    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[lo:hi]

    return TeacherOutput(ids=out.ids[lo:hi], logits=cut(out.logits), topk_logprobs=cut(out.topk_logprobs),
                         topk_indices=cut(out.topk_indices), temperature=out.temperature,
                         layers={k: v[lo:hi] for k, v in out.layers.items()})


class LiveTeacher:
    """A teacher asked about every batch (gRPC endpoint or in-process), ``rpc_batches`` batches per request.

    Requests stay ``max_in_flight`` deep and come back in completion order; they are put back in batch
    order, so a run consumes the same targets in the same order whatever the arrival order.
    """

    soft_uris: list[str] | None = None
    soft_columns: list[str] = []

    def __init__(self, cfg: TeacherClientConfig, class_names: Sequence[str] | None, temperature: float,
                 layers: Sequence[str], rpc_batches: int, vocabulary: tuple[str, str] | None = None) -> None:
        wanted = [n for n in dict.fromkeys(layers) if n not in cfg.layers]
        self.cfg = cfg.model_copy(update={"layers": [*cfg.layers, *wanted]}) if wanted else cfg
        self.layers, self.temperature, self.rpc_batches = list(dict.fromkeys(layers)), temperature, rpc_batches
        with open_teacher(self.cfg) as client:
            client.wait_ready(self.cfg.deadline_s)  # a teacher still starting (or restarting) is waited for
            self.meta = client.metadata()
            if class_names is None and vocabulary is not None:
                check_vocabulary(self.meta, self.cfg.url, *vocabulary)
        self.num_classes = len(class_names) if class_names is not None else int(self.meta.get("num_classes") or 0)
        self.remap: _Remap | None = None
        if class_names is not None:
            self.remap = _Remap(teacher_order(class_names, self.meta.get("class_names"),
                                              self.meta.get("num_classes"), f"teacher {self.cfg.url}"))
        self.tokens = class_names is None  # text: the teacher reads each row's inputs, tokens 0..L-1

    def layer_shapes(self, first: Batch | None) -> dict[str, tuple[int, ...]]:
        known = self.meta.get("layers") or {}
        shapes = {n: tuple(known[n][1:]) for n in self.layers if n in known and all(d > 0 for d in known[n][1:])}
        if len(shapes) < len(self.layers) and first is not None:
            with open_teacher(self.cfg) as client:
                out = client.infer(first.ids[:2], first.x[:2])
            shapes = {n: tuple(out.layers[n].shape[1:]) for n in self.layers}
        return shapes

    def _target(self, out: TeacherOutput) -> Targets:
        shape = None if out.logits is None else np.shape(out.logits)
        if shape is not None and (len(shape) != (3 if self.tokens else 2) or shape[-1] != self.num_classes):
            raise TeacherResponseError(f"teacher returned logits of shape {shape}, the data has "
                                       f"{self.num_classes} classes")
        if out.logits is None and (out.topk_logprobs is None or out.topk_indices is None):
            raise TeacherResponseError("teacher reply has neither logits nor topk_logprobs + topk_indices")
        try:
            target = _signal(self.temperature, self.num_classes, self.remap, logits=out.logits,
                             topk_logprobs=out.topk_logprobs, topk_indices=out.topk_indices,
                             topk_temperature=out.temperature)
        except DataError as exc:
            raise TeacherResponseError(f"teacher top-k reply does not fit the data's classes: {exc}") from None
        target.layers = {n: torch.as_tensor(np.asarray(out.layers[n], dtype=np.float32))
                         for n in self.layers if n in out.layers}
        return target

    def targets(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Targets | None]]:
        client = open_teacher(self.cfg)
        groups = (list(enumerate(g, start=i * self.rpc_batches)) for i, g in
                  enumerate(_grouped(batches, self.rpc_batches)))
        requests = ((np.concatenate([b.ids for _, b in g]),
                     np.concatenate([model_inputs(b.x) if self.tokens else b.x for _, b in g]), g) for g in groups)
        pending: dict[int, tuple[Batch, Targets]] = {}
        expected = 0
        stream = client.stream(requests)
        try:
            for out, members in stream:  # the client checked the echoed ids
                lo = 0
                for seq, batch in members:
                    pending[seq] = (batch, self._target(_rows(out, lo, lo + len(batch))))
                    lo += len(batch)
                while expected in pending:  # back in batch order
                    yield pending.pop(expected)
                    expected += 1
        finally:
            stream.close()
            client.close()
