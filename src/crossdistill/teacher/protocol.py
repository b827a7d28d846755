"""The wire contract between a student and a teacher over the Open Inference Protocol (v2).

Request: tensor ``input`` (FP32, ``[B, *input_shape]``) and ``ids`` (INT64, ``[B]``, stable example
ids), plus request parameters: ``top_k`` (int, 0 = dense logits), ``temperature`` (float, for top-k
log-probabilities), ``fp16`` (bool, halves the logits on the wire), ``layers`` (comma-separated
names of intermediate layers to return). Response: ``ids`` echoed, then ``logits`` (``[B, C]``), or
``topk_logprobs`` + ``topk_indices`` (``[B, k]``: log-softmax(z / T) of the k largest classes, so the
student knows exactly how much probability mass lies outside the top k; the indices in the smallest
type that holds every class, :func:`~crossdistill.data.shards.index_dtype`: UINT16 up to 65,536 classes, INT32 above), and
``layer/<name>`` per requested layer. Any OIP server that returns ``logits`` (``[B, C]``, FP32/FP64/FP16) for ``input``
(Triton, MLServer, ...) can teach in dense mode: the client pairs an answer with its request, and
checks the ``ids`` echo (``[B]`` or ``[B, 1]``) only when the server sends one.

A token model (a language model: integer inputs) takes ``input`` as INT32/INT64 token ids ``[B, T]``
(each in ``0..V-1``, checked) and answers per position: ``logits`` ``[B, T, V]`` or top-k ``[B, T, k]``
(``num_classes`` is the vocabulary size V). Its metadata carries ``vocab_fingerprint`` (the SHA-256 of
its tokenizer's vocabulary, :func:`crossdistill.data.text.vocab_fingerprint`), which a student compares
with its own data's before the first request (:func:`crossdistill.teacher.labeling.check_vocabulary`).

Messages in either direction stay under one size limit: the server advertises ``max_message_bytes``
in its metadata (``DEFAULT_MAX_MESSAGE_BYTES`` when it does not) and the client splits a batch whose
request or answer would exceed it into several calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crossdistill.data.shards import index_dtype

INPUT = "input"
IDS = "ids"
LOGITS = "logits"
TOPK_LOGPROBS = "topk_logprobs"
TOPK_INDICES = "topk_indices"
LAYER_PREFIX = "layer/"

PARAM_TOP_K = "top_k"
PARAM_TEMPERATURE = "temperature"
PARAM_FP16 = "fp16"
PARAM_LAYERS = "layers"

DEFAULT_MODEL_NAME = "teacher"
INPROCESS = "inprocess:"  # teacher.url prefix: the teacher runs inside the caller's process
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # one gRPC message, either direction, when a server advertises no limit


@dataclass
class TeacherOutput:
    """What the teacher said about one batch, keyed by example id."""

    ids: np.ndarray
    logits: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None
    topk_indices: np.ndarray | None = None
    temperature: float = 1.0
    layers: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def topk_logprobs(logits: np.ndarray, k: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """log-softmax(z / T) over the last axis, of its k largest entries (largest first; ties: lower index
    first) and their indices (:func:`index_dtype` of the last axis): ``[..., C]`` -> ``[..., k]`` twice."""
    width = logits.shape[-1]
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    if k < width:  # the k largest in O(C), then ordered among themselves
        index = np.argpartition(-logp, k - 1, axis=-1)[..., :k]
    else:
        index = np.broadcast_to(np.arange(width), logp.shape).copy()
    values = np.take_along_axis(logp, index, axis=-1)
    order = np.lexsort((index, -values), axis=-1)
    index = np.take_along_axis(index, order, axis=-1)
    return np.take_along_axis(values, order, axis=-1).astype(np.float32), index.astype(index_dtype(width))
