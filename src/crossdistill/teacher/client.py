"""The student's side of the wire: an OIP v2 gRPC client with binary tensors and requests in flight.

``TeacherClient.stream`` keeps ``max_in_flight`` requests outstanding (gRPC futures, no extra threads)
so the teacher computes the next batches while the student steps on this one, and yields answers in
completion order. Each answer is paired with its batch by the ids the teacher echoes: a response
whose ids differ from its request's is an error, never silently re-aligned. Every tensor is checked
(name, dtype, shape, finite values) before the student sees it.
"""

from __future__ import annotations

import itertools
import queue
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from pydantic import Field

from crossdistill.config import StrictConfig
from crossdistill.errors import TeacherError, TeacherResponseError, TeacherUnavailableError
from crossdistill.teacher import protocol as P
from crossdistill.teacher.protocol import TeacherOutput

T = TypeVar("T")
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_MAX_MESSAGE = 256 << 20
_FLOAT = {"FP32": np.float32, "FP16": np.float16}
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "INT32": "int_contents"}
_NP = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


def oip_modules() -> tuple[Any, Any]:
    """KServe's generated OIP v2 protobuf modules ``(pb2, pb2_grpc)``.

    Importing ``kserve`` runs an argparse over ``sys.argv`` at module level (and exits on a flag like
    ``--config``, an abbreviation of its ``--configure_logging``), so the import sees only argv[0].
    """
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
    finally:
        sys.argv = saved
    return pb, pb_grpc


class TeacherClientConfig(StrictConfig):
    """How the student calls the teacher."""

    url: str = Field(..., description="host:port of the teacher's OIP gRPC endpoint, or inprocess:<model uri> "
                                      "to run the teacher inside this process (co-located baseline)")
    model_name: str = P.DEFAULT_MODEL_NAME
    max_in_flight: int = Field(4, ge=1, description="requests outstanding at once in stream()")
    timeout_s: float = Field(60.0, gt=0, description="per attempt")
    retries: int = Field(5, ge=0, description="extra attempts on UNAVAILABLE / DEADLINE_EXCEEDED")
    backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles per retry")
    deadline_s: float = Field(300.0, gt=0, description="overall time for one batch, retries included")
    top_k: int = Field(0, ge=0, description="0 = dense logits")
    temperature: float = Field(1.0, gt=0, description="for top-k log-probabilities")
    fp16: bool = False
    layers: list[str] = Field(default_factory=list, description="intermediate layers to return")


@dataclass
class _Call:
    """One batch on the wire: its request, its current attempt and what to hand back with the answer."""

    key: int
    ids: np.ndarray
    batch_size: int
    payload: Any
    request: Any
    started: float
    attempt: int = 0
    future: Any = None


class TeacherClient:
    """OIP v2 gRPC client for one teacher model. Use as a context manager or call ``close()``."""

    def __init__(self, cfg: TeacherClientConfig) -> None:
        self.cfg = cfg
        self._pb, pb_grpc = oip_modules()
        self._channel = grpc.insecure_channel(cfg.url, options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)])
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._keys = itertools.count()
        self._meta: dict[str, Any] | None = None

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the server and the model say ready, else TeacherUnavailableError."""
        end = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            try:
                if (self._stub.ServerReady(self._pb.ServerReadyRequest(), timeout=2.0).ready
                        and self._stub.ModelReady(self._pb.ModelReadyRequest(name=self.cfg.model_name),
                                                  timeout=2.0).ready):
                    return
                last = "server up, model not ready"
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            if time.monotonic() >= end:
                raise TeacherUnavailableError(f"teacher at {self.cfg.url} (model '{self.cfg.model_name}') not ready "
                                              f"after {timeout_s:.0f}s ({last})")
            time.sleep(0.2)

    def metadata(self) -> dict[str, Any]:
        """Model metadata: input shape, num_classes, layer shapes, num_parameters, size_bytes (when served by us)."""
        try:
            resp = self._stub.ModelMetadata(self._pb.ModelMetadataRequest(name=self.cfg.model_name),
                                            timeout=self.cfg.timeout_s)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc) from None
        tensors_in = {t.name: list(t.shape) for t in resp.inputs}
        tensors_out = {t.name: list(t.shape) for t in resp.outputs}
        meta: dict[str, Any] = {"name": resp.name, "platform": resp.platform, "inputs": tensors_in,
                                "outputs": tensors_out}
        inp = tensors_in.get(P.INPUT)
        meta["input_shape"] = inp[1:] if inp and len(inp) > 1 and all(d > 0 for d in inp[1:]) else None
        logits = tensors_out.get(P.LOGITS)
        meta["num_classes"] = logits[-1] if logits and len(logits) == 2 and logits[-1] > 0 else None
        meta["layers"] = {n[len(P.LAYER_PREFIX):]: s for n, s in tensors_out.items() if n.startswith(P.LAYER_PREFIX)}
        for token in resp.platform.split()[1:]:
            key, _, value = token.partition("=")
            if value.isdigit():
                meta[key] = int(value)
        self._meta = meta
        return meta

    # ------------------------------------------------------------------ inference
    def infer(self, ids: np.ndarray, x: np.ndarray) -> TeacherOutput:
        """The teacher's answer for one batch (blocking, with retries)."""
        out, _ = next(self.stream([(ids, x, None)]))
        return out

    def wire_bytes(self, ids: np.ndarray, x: np.ndarray) -> tuple[int, int]:
        """Serialized sizes ``(request, response)`` of one batch as it crosses the wire (protobuf bytes)."""
        self._expectations()
        call = self._new_call(ids, x, None)
        response = self._stub.ModelInfer(call.request, timeout=self.cfg.timeout_s)
        self._decode(call, response)  # the answer must still be valid
        return call.request.ByteSize(), response.ByteSize()

    def stream(self, batches: Iterable[tuple[np.ndarray, np.ndarray, T]]) -> Iterator[tuple[TeacherOutput, T]]:
        """Answers for ``(ids, x, payload)`` batches, ``max_in_flight`` outstanding, in completion order."""
        self._expectations()
        done: queue.Queue[_Call] = queue.Queue()
        pending: dict[int, _Call] = {}
        source = iter(batches)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.cfg.max_in_flight:
                    try:
                        ids, x, payload = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    call = self._new_call(ids, x, payload)
                    pending[call.key] = call
                    self._send(call, done)
                if not pending:
                    return
                call = done.get()
                exc = call.future.exception()
                if exc is not None:
                    self._retry_or_raise(call, exc, done)
                    continue
                del pending[call.key]
                yield self._decode(call, call.future.result()), call.payload
        finally:
            for call in pending.values():
                if call.future is not None:
                    call.future.cancel()

    def _new_call(self, ids: np.ndarray, x: np.ndarray, payload: Any) -> _Call:
        x = np.ascontiguousarray(x, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if x.ndim < 2 or len(x) != len(ids):
            raise TeacherError(f"batch 'input' has shape {list(x.shape)} and 'ids' {list(ids.shape)}: expected "
                               f"[B, ...] and [B]")
        pb = self._pb
        key = next(self._keys)
        params = {P.PARAM_TOP_K: pb.InferParameter(int64_param=self.cfg.top_k),
                  P.PARAM_TEMPERATURE: pb.InferParameter(string_param=repr(float(self.cfg.temperature))),
                  P.PARAM_FP16: pb.InferParameter(bool_param=self.cfg.fp16)}
        if self.cfg.layers:
            params[P.PARAM_LAYERS] = pb.InferParameter(string_param=",".join(self.cfg.layers))
        request = pb.ModelInferRequest(
            model_name=self.cfg.model_name, id=f"b{key}", parameters=params,
            inputs=[pb.ModelInferRequest.InferInputTensor(name=P.INPUT, datatype="FP32", shape=list(x.shape)),
                    pb.ModelInferRequest.InferInputTensor(name=P.IDS, datatype="INT64", shape=[len(ids)])],
            raw_input_contents=[x.tobytes(), ids.tobytes()])
        return _Call(key, ids, len(ids), payload, request, time.monotonic())

    def _send(self, call: _Call, done: queue.Queue[_Call]) -> None:
        remaining = self.cfg.deadline_s - (time.monotonic() - call.started)
        call.future = self._stub.ModelInfer.future(call.request, timeout=max(0.01, min(self.cfg.timeout_s, remaining)))
        call.future.add_done_callback(lambda _f, c=call: done.put(c))

    def _retry_or_raise(self, call: _Call, exc: BaseException, done: queue.Queue[_Call]) -> None:
        if not isinstance(exc, grpc.RpcError) or exc.code() not in _RETRYABLE:
            raise self._rpc_error(exc) from None
        elapsed = time.monotonic() - call.started
        delay = self.cfg.backoff_s * (2 ** call.attempt)
        if call.attempt >= self.cfg.retries or elapsed + delay >= self.cfg.deadline_s:
            raise TeacherUnavailableError(
                f"teacher at {self.cfg.url} (model '{self.cfg.model_name}') did not answer: {exc.code().name} "
                f"({exc.details()}) after {call.attempt + 1} attempt(s) in {elapsed:.1f}s "
                f"(retries={self.cfg.retries}, deadline_s={self.cfg.deadline_s})") from None
        time.sleep(delay)
        call.attempt += 1
        self._send(call, done)

    def _rpc_error(self, exc: BaseException) -> TeacherError:
        if isinstance(exc, grpc.RpcError):
            if exc.code() in _RETRYABLE:
                return TeacherUnavailableError(f"teacher at {self.cfg.url}: {exc.code().name} ({exc.details()})")
            return TeacherError(f"teacher at {self.cfg.url} (model '{self.cfg.model_name}') refused the request: "
                                f"{exc.code().name}: {exc.details()}")
        return TeacherError(f"teacher at {self.cfg.url}: {exc}")

    # ------------------------------------------------------------------ validation
    def _expectations(self) -> None:
        if self._meta is None:
            try:
                self.metadata()
            except TeacherError:
                self._meta = {}  # a server without metadata: shapes are still checked against the batch

    def _decode(self, call: _Call, resp: Any) -> TeacherOutput:
        tensors = _tensors(resp)
        b = call.batch_size
        ids = self._take(tensors, P.IDS, ("INT64", "INT32"), (b,), call).astype(np.int64)
        if not np.array_equal(ids, call.ids):
            bad = int(np.flatnonzero(ids != call.ids)[0])
            raise TeacherResponseError(
                f"tensor '{P.IDS}' from {self.cfg.url} does not echo the request's ids (position {bad}: got "
                f"{ids[bad]}, expected {call.ids[bad]}): the answer belongs to another batch")
        meta = self._meta or {}
        c = meta.get("num_classes")
        out = TeacherOutput(ids=ids, temperature=float(self.cfg.temperature))
        if self.cfg.top_k == 0:
            out.logits = self._take(tensors, P.LOGITS, tuple(_FLOAT), (b, c), call, finite=True)
        else:
            k = self.cfg.top_k
            out.topk_logprobs = self._take(tensors, P.TOPK_LOGPROBS, tuple(_FLOAT), (b, k), call, finite=True)
            out.topk_indices = self._take(tensors, P.TOPK_INDICES, ("INT64", "INT32"), (b, k), call).astype(np.int64)
            hi = c if c else None
            if out.topk_indices.min(initial=0) < 0 or (hi and out.topk_indices.max(initial=0) >= hi):
                raise TeacherResponseError(f"tensor '{P.TOPK_INDICES}' from {self.cfg.url} has class indices outside "
                                           f"[0, {hi or 'num_classes'})")
            if np.any(out.topk_logprobs > 1e-4):
                raise TeacherResponseError(f"tensor '{P.TOPK_LOGPROBS}' from {self.cfg.url} holds values > 0: "
                                           f"expected log-probabilities")
        for name in self.cfg.layers:
            shape = meta.get("layers", {}).get(name)
            want = (b, *shape[1:]) if shape else (b, None)
            out.layers[name] = self._take(tensors, P.LAYER_PREFIX + name, tuple(_FLOAT), want, call, finite=True,
                                          any_rank=shape is None)
        return out

    def _take(self, tensors: dict[str, tuple[str, list[int], np.ndarray]], name: str, dtypes: tuple[str, ...],
              shape: tuple[int | None, ...], call: _Call, *, finite: bool = False,
              any_rank: bool = False) -> np.ndarray:
        expected = "[" + ", ".join("*" if d is None else str(d) for d in shape) + (", ...]" if any_rank else "]")
        if name not in tensors:
            raise TeacherResponseError(f"response from {self.cfg.url} has no tensor '{name}' (got {sorted(tensors)}); "
                                       f"expected {'/'.join(dtypes)} {expected}")
        dtype, got_shape, array = tensors[name]
        if dtype not in dtypes:
            raise TeacherResponseError(f"tensor '{name}' from {self.cfg.url} has datatype {dtype}, expected "
                                       f"{'/'.join(dtypes)} {expected}")
        fixed = got_shape[:len(shape)] if any_rank else got_shape
        if len(fixed) != len(shape) or any(w is not None and g != w for g, w in zip(fixed, shape, strict=True)):
            raise TeacherResponseError(f"tensor '{name}' from {self.cfg.url} has shape {got_shape}, expected {expected} "
                                       f"(batch of {call.batch_size})")
        if finite and not np.all(np.isfinite(array)):
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise TeacherResponseError(f"tensor '{name}' from {self.cfg.url} holds {bad} NaN/Inf value(s) "
                                       f"(shape {got_shape}); expected finite numbers")
        return array.astype(np.float32) if dtype in _FLOAT else array


def _tensors(resp: Any) -> dict[str, tuple[str, list[int], np.ndarray]]:
    """``{name: (datatype, shape, array)}`` from raw binary contents or typed contents."""
    out = {}
    raw = list(resp.raw_output_contents)
    for i, t in enumerate(resp.outputs):
        shape = [int(d) for d in t.shape]
        np_dtype = _NP.get(t.datatype)
        if np_dtype is None:
            out[t.name] = (t.datatype, shape, np.zeros(0))
            continue
        if raw:
            flat = np.frombuffer(raw[i], dtype=np_dtype)
        else:
            field = _CONTENTS.get(t.datatype)
            flat = np.asarray(getattr(t.contents, field), dtype=np_dtype) if field else np.zeros(0, np_dtype)
        count = int(np.prod(shape)) if shape else 1
        if flat.size != count:
            raise TeacherResponseError(f"tensor '{t.name}' declares shape {shape} ({count} values) but carries "
                                       f"{flat.size}")
        out[t.name] = (t.datatype, shape, flat.reshape(shape))
    return out
