"""The teacher server: a ``kserve.Model`` over a ``TeacherAdapter``, on KServe's data plane.

Speaks the Open Inference Protocol v2 on gRPC and REST exactly as ``teacher/protocol.py`` describes:
``input`` + ``ids`` in, ``ids`` echoed plus ``logits`` (FP32 or FP16), or top-k log-probabilities at a
temperature, plus ``layer/<name>`` outputs for the layers the owner exposes (``expose_layers``).
OIP metadata has no free-form field, so ``num_parameters``, ``size_bytes``, ``max_message_bytes`` and
the URL-quoted JSON ``class_names`` ride as ``key=value`` tokens in ``platform``
(``"crossdistill/keras num_parameters=50826 size_bytes=645354 max_message_bytes=67108864"``). Never
the weights.

The teacher may belong to another party than its students, so the server is built for a trust
boundary rather than taken whole from ``kserve.ModelServer``: both ports bind ``host`` only; TLS
(mutual with a client CA) and a bearer token on every call (``teacher/transport.py``; the REST
liveness path ``/v2/health/live`` stays open for Kubernetes probes and says nothing but "live");
no model repository load/unload, no ``/docs`` or ``/openapi.json``, ``/metrics`` only when asked;
and every malformed request is refused as INVALID_ARGUMENT / 400 with its reason (tensor, expected
vs got) before anything is decoded, never INTERNAL / 500.

Process entry (what ``deploy/local.py`` launches)::

    python -m crossdistill.teacher.server --config teacher-serve.json [--ready-file path]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import socket
import sys
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from crossdistill.data.finite import first_nonfinite
from crossdistill.data.shards import index_dtype
from crossdistill.errors import CrossdistillError, ModelFormatError
from crossdistill.teacher import protocol as P
from crossdistill.teacher.adapters import TeacherAdapter, first_line, load_teacher
from crossdistill.teacher.client import oip_modules
from crossdistill.teacher.serve_config import (
    CONNECTION_AGE_GRACE_S,
    SERVE_FAILED,
    TeacherServeConfig,
    resolve_class_names,
    resolve_vocab_fingerprint,
)
from crossdistill.teacher.transport import (
    GrpcTokenCheck,
    RestTokenCheck,
    address,
    grpc_server_credentials,
    read_token,
    uvicorn_tls,
)

_pb, _pb_grpc = oip_modules()  # imports kserve with sys.argv shielded from its module-level argument parser
import kserve  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request, Response  # noqa: E402
from fastapi.responses import JSONResponse, ORJSONResponse  # noqa: E402
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER  # noqa: E402
from kserve.errors import InferenceError, InvalidInput, ModelNotFound, ModelNotReady  # noqa: E402
from kserve.model_repository import ModelRepository  # noqa: E402
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor  # noqa: E402
from kserve.protocol.grpc.servicer import InferenceServicer  # noqa: E402
from kserve.protocol.infer_type import (  # noqa: E402
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    get_content,  # noqa: E402
)
from kserve.protocol.rest.v2_datamodels import InferenceRequest  # noqa: E402
from pydantic import ValidationError  # noqa: E402

log = logging.getLogger("crossdistill.teacher.server")
LIVE_PATH = "/v2/health/live"  # the one path open without a token: Kubernetes probes carry none
_ITEMSIZE = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "INT32": 4, "UINT32": 4,
             "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8, "BYTES": 1}
_FLOAT_IN = ("FP32", "FP64", "FP16")
_INT_IDS = ("INT64", "INT32")


# ------------------------------------------------------------------------------------- request checks

def check_declared(name: str, datatype: str, shape: Any, limit: int) -> int:
    """The element count of a tensor as declared, refusing unknown datatypes, bad or empty shapes and
    sizes over ``limit`` bytes (checked before a byte is decoded)."""
    if datatype not in _ITEMSIZE:
        raise InvalidInput(f"input '{name}' has datatype {datatype!r}: not an Open Inference Protocol datatype "
                           f"({', '.join(_ITEMSIZE)})")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                       for d in shape):
        raise InvalidInput(f"input '{name}' has shape {shape!r}: expected a list of non-negative integers")
    count = math.prod(shape)
    if count == 0:
        raise InvalidInput(f"input '{name}' has shape {list(shape)}: no values (an empty batch); expected at least "
                           f"one row")
    if count * _ITEMSIZE[datatype] > limit:
        raise InvalidInput(f"input '{name}' declares shape {list(shape)} ({count} {datatype} values, "
                           f"{count * _ITEMSIZE[datatype]} bytes): over this teacher's max_message_bytes={limit}")
    return count


def check_grpc_request(request: Any, limit: int) -> None:
    """Every input of a gRPC ModelInferRequest carries exactly the bytes or values its shape declares."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"request has {len(request.inputs)} input tensors but {len(raw)} raw_input_contents: "
                           f"expected one raw content per input")
    for i, t in enumerate(request.inputs):
        count = check_declared(t.name, t.datatype, list(t.shape), limit)
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"input '{t.name}' has typed contents besides raw_input_contents: send one")
            want = count * _ITEMSIZE[t.datatype]
            if t.datatype != "BYTES" and len(raw[i]) != want:
                raise InvalidInput(f"input '{t.name}' ({t.datatype} {list(t.shape)}) carries {len(raw[i])} raw "
                                   f"bytes, expected {want}")
        else:
            got = len(get_content(t.datatype, t.contents))
            if got != count:
                raise InvalidInput(f"input '{t.name}' ({t.datatype} {list(t.shape)}) carries {got} values in its "
                                   f"contents, expected {count}" + (" (FP16 goes in raw_input_contents)"
                                                                    if t.datatype == "FP16" else ""))


def decode_rest_request(body: bytes, header_length: str | None, model_name: str, limit: int) -> InferRequest:
    """A REST infer body (JSON, or JSON + binary tensors after ``header_length`` bytes) as an InferRequest."""
    if header_length is None:
        head_bytes, tail = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(f"header {INFERENCE_CONTENT_LENGTH_HEADER}={header_length!r} is not an integer") \
                from None
        if not 0 < length <= len(body):
            raise InvalidInput(f"header {INFERENCE_CONTENT_LENGTH_HEADER}={length}: expected 1..{len(body)} (the body "
                               f"length)")
        head_bytes, tail = body[:length], body[length:]
    try:
        head = json.loads(head_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    binary = {}
    if isinstance(head, dict) and tail:
        offset = 0
        for item in head.get("inputs") or []:
            size = ((item.get("parameters") or {}).get("binary_data_size") if isinstance(item, dict) else None)
            if size is None:
                continue
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{item.get('name')}': binary_data_size={size!r}, expected a byte count")
            binary[id(item)] = tail[offset:offset + size]
            offset += size
            item["data"] = []
        if offset != len(tail):
            raise InvalidInput(f"request carries {len(tail)} binary bytes after the JSON header but its inputs' "
                               f"binary_data_size add up to {offset}")
    try:
        parsed = InferenceRequest.model_validate(head)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise InvalidInput(f"request is not an OIP v2 inference request: {where}: {first['msg']} "
                           f"({exc.error_count()} problem(s))") from None
    request = InferRequest.from_inference_request(parsed, model_name)
    for item, tensor in zip(head["inputs"], request.inputs, strict=True):
        count = check_declared(tensor.name, tensor.datatype, tensor.shape, limit)
        if id(item) in binary:
            data = binary[id(item)]
            if len(data) != count * _ITEMSIZE[tensor.datatype] and tensor.datatype != "BYTES":
                raise InvalidInput(f"input '{tensor.name}' ({tensor.datatype} {tensor.shape}) carries {len(data)} "
                                   f"binary bytes, expected {count * _ITEMSIZE[tensor.datatype]}")
            tensor._raw_data = data  # kserve keeps binary tensor data here (as InferRequest.from_grpc does)
    return request


def tensor_array(tensor: InferInput, kinds: str) -> np.ndarray:
    """A checked tensor's values as numpy; JSON/typed data must be numbers of ``kinds`` (numpy dtype kinds)."""
    data = tensor.data
    if isinstance(data, list) and data:
        try:
            array = np.asarray(data)
        except (ValueError, TypeError) as exc:  # ragged nesting, mixed types
            raise InvalidInput(f"input '{tensor.name}' data is not a rectangular array of numbers: "
                               f"{str(exc).splitlines()[0]}") from None
        if array.dtype.kind not in kinds:
            found = {"U": "strings", "S": "bytes", "O": "mixed values", "b": "booleans", "f": "floats"}.get(
                array.dtype.kind, array.dtype.name)
            raise InvalidInput(f"input '{tensor.name}' ({tensor.datatype}) holds {found}, expected numbers")
        if array.size != math.prod(tensor.shape):
            raise InvalidInput(f"input '{tensor.name}' has {array.size} values, its shape {tensor.shape} declares "
                               f"{math.prod(tensor.shape)}")
        return array.reshape(tensor.shape)
    try:
        return tensor.as_numpy()
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input '{tensor.name}' ({tensor.datatype} {tensor.shape}) cannot be decoded: "
                           f"{str(exc).splitlines()[0]}") from None


def request_parameters(parameters: Any) -> dict[str, Any]:
    """Request parameters as plain values (gRPC InferParameter oneofs unwrapped; an empty one refused)."""
    out: dict[str, Any] = {}
    for key, value in (parameters or {}).items():
        if isinstance(value, _pb.InferParameter):
            which = value.WhichOneof("parameter_choice")
            if which is None:
                raise InvalidInput(f"parameter '{key}' has no value: expected a bool, int64 or string parameter")
            value = getattr(value, which)
        out[key] = value
    return out


def _number(params: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInput(f"parameter '{key}' is {value!r} ({type(value).__name__}): expected a {kind.__name__}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise InvalidInput(f"parameter '{key}'={value!r} is not an int")
    try:
        number = kind(float(value)) if kind is float else kind(value)
    except (ValueError, OverflowError):
        raise InvalidInput(f"parameter '{key}'={value!r} is not a {kind.__name__}") from None
    if kind is float and not math.isfinite(number):
        raise InvalidInput(f"parameter '{key}'={value!r}: expected a finite number")
    return number


# ------------------------------------------------------------------------------------------ the model

class TeacherModel(kserve.Model):
    """Serves one teacher; the framework forward runs in a thread pool so requests overlap."""

    def __init__(self, name: str, adapter: TeacherAdapter, concurrency: int = 4, *,
                 expose_layers: list[str] | None = None, class_names: list[str] | None = None,
                 max_message_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(name)
        self.adapter = adapter
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teacher")
        self.expose_layers = list(expose_layers or [])
        unknown = [n for n in self.expose_layers if n not in adapter.layer_names()]
        if unknown:
            raise ModelFormatError(f"expose_layers: the teacher {adapter.source} has no layer(s) {unknown}; its "
                                   f"layers: {adapter.layer_names()[:50]}")
        self.class_names = class_names
        self.vocab_fingerprint: str | None = None  # a token model's vocabulary, served for students to compare
        self.max_message_bytes = max_message_bytes
        self._layer_shapes: dict[str, list[int]] = {}
        self.ready = False

    def load(self) -> bool:
        """Probe one zero input (output width, exposed layers' shapes, warm-up); a failure names the model."""
        if self.adapter.input_shape is not None:
            shape = [1, *self.adapter.input_shape]
            try:
                probe = self.adapter.predict(np.zeros(shape, self.adapter.input_dtype), self.expose_layers)
            except Exception as exc:  # a framework raises anything on a model/input mismatch
                raise ModelFormatError(f"{self.adapter.source}: a forward pass on '{P.INPUT}' of shape {shape} "
                                       f"failed: {first_line(exc)}") from None
            self._layer_shapes = {n: [-1, *probe[n].shape[1:]] for n in self.expose_layers}
        self.ready = True
        return self.ready

    def platform(self) -> str:
        """``crossdistill/<format>`` and the ``key=value`` facts a client may know (never weights)."""
        a = self.adapter
        text = (f"crossdistill/{a.format} num_parameters={a.num_parameters} size_bytes={a.size_bytes} "
                f"max_message_bytes={self.max_message_bytes}")
        if self.class_names is not None:
            text += " class_names=" + urllib.parse.quote(json.dumps(self.class_names, separators=(",", ":")), safe="")
        if self.vocab_fingerprint is not None:
            text += f" vocab_fingerprint={self.vocab_fingerprint}"
        return text

    def get_input_types(self) -> list[dict[str, Any]]:
        shape = list(self.adapter.input_shape) if self.adapter.input_shape is not None else [-1]
        kind = "INT64" if self.adapter.takes_tokens else "FP32"
        return [{"name": P.INPUT, "datatype": kind, "shape": [-1, *shape]},
                {"name": P.IDS, "datatype": "INT64", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        c = self.adapter.num_classes or -1
        per = [-1] * len(self.adapter.input_shape or [-1]) if self.adapter.takes_tokens else []  # positions
        outs = [{"name": P.IDS, "datatype": "INT64", "shape": [-1]},
                {"name": P.LOGITS, "datatype": "FP32", "shape": [-1, *per, c]},
                {"name": P.TOPK_LOGPROBS, "datatype": "FP32", "shape": [-1, *per, -1]},
                {"name": P.TOPK_INDICES, "datatype": _DATATYPES[index_dtype(c if c > 0 else 1 << 17)],
                 "shape": [-1, *per, -1]}]
        outs += [{"name": P.LAYER_PREFIX + n, "datatype": "FP32", "shape": s} for n, s in self._layer_shapes.items()]
        return outs

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput("the teacher speaks the Open Inference Protocol v2 only (POST /v2/models/<name>/infer)")
        x, ids, top_k, temperature, fp16, layers = self._parse(payload)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._pool, self.adapter.predict, x, layers)
        except Exception as exc:  # the input was checked: this is the teacher's own failure
            log.exception("teacher forward failed")
            raise InferenceError(f"teacher forward failed: {exc}") from None
        outputs = [_output(P.IDS, ids)]
        logits = result[P.LOGITS]
        float_t = np.float16 if fp16 else np.float32
        if top_k == 0:
            outputs.append(_output(P.LOGITS, logits.astype(float_t)))
        else:
            logprobs, index = P.topk_logprobs(logits, top_k, temperature)
            outputs += [_output(P.TOPK_LOGPROBS, logprobs.astype(float_t)), _output(P.TOPK_INDICES, index)]
        outputs += [_output(P.LAYER_PREFIX + n, result[n].astype(float_t)) for n in layers]
        params: dict[str, Any] = {"num_classes": int(logits.shape[-1]), P.PARAM_TOP_K: top_k,
                                  P.PARAM_TEMPERATURE: repr(float(temperature)),
                                  "num_parameters": self.adapter.num_parameters,
                                  "size_bytes": self.adapter.size_bytes}
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs,
                             parameters=params, use_binary_outputs=payload.use_binary_outputs)

    def _parse(self, req: InferRequest) -> tuple[np.ndarray, np.ndarray, int, float, bool, tuple[str, ...]]:
        names = [i.name for i in req.inputs]
        want = self.adapter.input_shape
        tokens = self.adapter.takes_tokens
        kinds = _INT_IDS if tokens else _FLOAT_IN
        kind = "INT64/INT32 token ids" if tokens else "FP32"
        expected = f"{kind} [B, {', '.join(map(str, want))}]" if want is not None else f"{kind} [B, ...]"
        tensor = req.get_input_by_name(P.INPUT)
        if tensor is None:
            raise InvalidInput(f"request has no input tensor '{P.INPUT}' (got {names}); expected {expected}")
        if set(names) - {P.INPUT, P.IDS} or len(set(names)) != len(names):
            raise InvalidInput(f"request has inputs {names}: expected '{P.INPUT}' and optionally '{P.IDS}', once each")
        if tensor.datatype not in kinds:
            raise InvalidInput(f"input '{P.INPUT}' has datatype {tensor.datatype}, expected {expected}")
        shape = list(tensor.shape)
        check_declared(P.INPUT, tensor.datatype, shape, self.max_message_bytes)
        if len(shape) < 2 or (want is not None and tuple(shape[1:]) != tuple(want)):
            raise InvalidInput(f"input '{P.INPUT}' has shape {shape}, expected {expected}")
        if tokens:
            x = tensor_array(tensor, "iu").astype(self.adapter.input_dtype, copy=False)
            vocab = self.adapter.num_classes or 0
            outside = np.argwhere((x < 0) | (x >= vocab))
            if len(outside):  # an embedding lookup out of range would fail inside the model
                where = tuple(int(i) for i in outside[0])
                raise InvalidInput(f"input '{P.INPUT}' holds token id {int(x[where])} at {list(where)}: expected ids "
                                   f"in 0..{vocab - 1} (the teacher's vocabulary)")
        else:
            x = tensor_array(tensor, "iuf").astype(np.float32, copy=False)
            bad = first_nonfinite(x)
            if bad is not None:
                raise InvalidInput(f"input '{P.INPUT}' holds NaN or Inf (first at row {bad[0]}): expected finite "
                                   "values")
        id_tensor = req.get_input_by_name(P.IDS)
        if id_tensor is None:
            ids = np.arange(len(x), dtype=np.int64)  # plain OIP clients (no ids) still get answers
        else:
            if id_tensor.datatype not in _INT_IDS:
                raise InvalidInput(f"input '{P.IDS}' has datatype {id_tensor.datatype}, expected INT64 [{len(x)}]")
            check_declared(P.IDS, id_tensor.datatype, list(id_tensor.shape), self.max_message_bytes)
            if list(id_tensor.shape) not in ([len(x)], [len(x), 1]):
                raise InvalidInput(f"input '{P.IDS}' has shape {list(id_tensor.shape)}, expected INT64 [{len(x)}] "
                                   f"(one id per row of '{P.INPUT}')")
            ids = tensor_array(id_tensor, "iu").astype(np.int64, copy=False).reshape(-1)
        top_k, temperature, fp16, layers = self._options(request_parameters(req.parameters))
        return x, ids, top_k, temperature, fp16, layers

    def _options(self, params: dict[str, Any]) -> tuple[int, float, bool, tuple[str, ...]]:
        """top_k, temperature, fp16 and layers from the request parameters, each checked."""
        top_k = _number(params, P.PARAM_TOP_K, int, 0)
        classes = self.adapter.num_classes
        if top_k < 0 or (classes is not None and top_k > classes):
            raise InvalidInput(f"parameter top_k={top_k}: expected 0 (dense logits) .. {classes or 'num_classes'}")
        temperature = _number(params, P.PARAM_TEMPERATURE, float, 1.0)
        if temperature <= 0:
            raise InvalidInput(f"parameter temperature={temperature}: expected a finite number > 0")
        fp16 = params.get(P.PARAM_FP16, False)
        if isinstance(fp16, str) and fp16.lower() in ("true", "false", "1", "0"):
            fp16 = fp16.lower() in ("true", "1")
        if not isinstance(fp16, bool):
            raise InvalidInput(f"parameter fp16={fp16!r}: expected a bool")
        layers_text = params.get(P.PARAM_LAYERS, "")
        if not isinstance(layers_text, str):
            raise InvalidInput(f"parameter layers={layers_text!r}: expected a comma-separated string of layer names")
        layers = tuple(n.strip() for n in layers_text.split(",") if n.strip())
        for name in layers:
            if name not in self.expose_layers:
                raise InvalidInput(f"layer '{name}' is not exposed by this teacher (exposed: {self.expose_layers})")
        return top_k, temperature, fp16, layers


_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.int64): "INT64",
              np.dtype(np.int32): "INT32", np.dtype(np.uint16): "UINT16"}


def _output(name: str, array: np.ndarray) -> InferOutput:
    out = InferOutput(name=name, shape=list(array.shape), datatype=_DATATYPES[array.dtype])
    # Raw bytes now: kserve's to_grpc() cannot take numpy data; to_rest() turns raw into JSON when asked.
    out.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
    return out


class TeacherDataPlane(DataPlane):
    """KServe's data plane, but model metadata carries the model's ``platform`` (KServe leaves it empty)."""

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        meta = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        if isinstance(model, TeacherModel):
            meta["platform"] = model.platform()
        return meta


# ------------------------------------------------------------------------------------------ gRPC

class _ErrorsToStatus(ExceptionToStatusInterceptor):
    """KServe's mapping of errors to gRPC codes, with a refused request logged in one line (no traceback)."""

    async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str) -> None:
        if isinstance(ex, InvalidInput):
            log.info("refused %s: %s", method_name, ex.reason)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ex.reason)
        await super().handle_exception(ex, request_or_iterator, context, method_name)


class TeacherServicer(InferenceServicer):
    """KServe's servicer, with requests checked before decoding and no model repository to load/unload."""

    def __init__(self, data_plane: DataPlane, max_message_bytes: int) -> None:
        super().__init__(data_plane, None)
        self._limit = max_message_bytes

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 - gRPC name
        check_grpc_request(request, self._limit)
        return await super().ModelInfer(request, context)

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this teacher serves no model repository")

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this teacher serves no model repository")


def grpc_server(dataplane: DataPlane, cfg: TeacherServeConfig, token: str | None) -> grpc.aio.Server:
    """The gRPC server (not yet bound): token check first, then KServe's error-to-status mapping."""
    interceptors = ([GrpcTokenCheck(token)] if token else []) + [_ErrorsToStatus()]
    options = [("grpc.max_send_message_length", cfg.max_message_bytes),
               ("grpc.max_receive_message_length", cfg.max_message_bytes), ("grpc.so_reuseport", 0)]
    if cfg.max_connection_age_s is not None:  # a client re-resolves its target when its connection is closed
        options += [("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)),
                    ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_S * 1000)]
    server = grpc.aio.server(ThreadPoolExecutor(max_workers=max(4, cfg.workers_threads)), interceptors=interceptors,
                             options=options)
    _pb_grpc.add_GRPCInferenceServiceServicer_to_server(TeacherServicer(dataplane, cfg.max_message_bytes), server)
    return server


def bind_grpc(server: grpc.aio.Server, cfg: TeacherServeConfig) -> int:
    """Bind ``host:grpc_port`` (0 = a free port), with TLS when configured; the bound port."""
    where = address(cfg.host, cfg.grpc_port)
    try:
        if cfg.tls is not None:
            return server.add_secure_port(where, grpc_server_credentials(cfg.tls))
        return server.add_insecure_port(where)
    except RuntimeError as exc:
        raise CrossdistillError(f"the gRPC port {where} cannot be bound (in use, or not an address of this "
                                f"machine?): {exc}") from None


def bind_http(cfg: TeacherServeConfig) -> socket.socket:
    """A listening socket on ``host:http_port`` (0 = a free port) for uvicorn."""
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.http_port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise CrossdistillError(f"the REST port {address(cfg.host, cfg.http_port)} cannot be bound (in use, or not "
                                f"an address of this machine?): {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


# ------------------------------------------------------------------------------------------ REST

def rest_app(dataplane: DataPlane, cfg: TeacherServeConfig, token: str | None) -> Any:
    """The REST (OIP v2) app: health, metadata, readiness and infer; /metrics only when asked."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, default_response_class=ORJSONResponse)
    limit = cfg.max_message_bytes

    @app.get(LIVE_PATH)
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = await dataplane.ready()
        return ORJSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return dataplane.metadata()

    @app.get("/v2/models/{model_name}")
    async def model_metadata(model_name: str) -> dict[str, Any]:
        return await dataplane.model_metadata(model_name)

    @app.get("/v2/models/{model_name}/ready")
    async def model_ready(model_name: str) -> Response:
        if not await dataplane.model_ready(model_name):
            raise ModelNotReady(model_name)
        return ORJSONResponse({"name": model_name, "ready": True})

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _too_large(int(declared), limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _too_large(len(body), limit)
        if not await dataplane.model_ready(model_name):
            raise ModelNotReady(model_name)
        infer_request = decode_rest_request(bytes(body), request.headers.get(INFERENCE_CONTENT_LENGTH_HEADER),
                                            model_name, limit)
        response, _ = await dataplane.infer(model_name=model_name, request=infer_request, headers={})
        result, json_size = response.to_rest()
        if isinstance(result, bytes):
            return Response(result, media_type="application/octet-stream",
                            headers={INFERENCE_CONTENT_LENGTH_HEADER: str(json_size)})
        return ORJSONResponse(result)

    if cfg.metrics:
        from kserve.protocol.rest.server import metrics_handler

        app.add_api_route("/metrics", metrics_handler, methods=["GET"])

    for error, status in ((InvalidInput, 400), (ModelNotFound, 404), (ModelNotReady, 503), (InferenceError, 500)):
        app.add_exception_handler(error, _handler(status))
    if token:
        app.add_middleware(RestTokenCheck, token=token, open_paths=frozenset({LIVE_PATH}))
    return app


def _handler(status: int) -> Any:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(getattr(exc, "reason", exc))}, status_code=status)
    return handle


def _too_large(size: int, limit: int) -> JSONResponse:
    return JSONResponse({"error": f"request body of {size} bytes is over this teacher's max_message_bytes={limit}"},
                        status_code=413)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve()`` stops both ports together."""

    @contextmanager
    def capture_signals(self) -> Any:
        yield


# ------------------------------------------------------------------------------------------ serving

def build_model(cfg: TeacherServeConfig) -> TeacherModel:
    """Load, check and probe the teacher (ModelFormatError / ConfigError naming the file or tensor)."""
    adapter = load_teacher(cfg.model_uri, cfg.model_format, cfg.output_is_probs, threads=cfg.workers_threads)
    model = TeacherModel(cfg.model_name, adapter, concurrency=max(4, cfg.workers_threads),
                         expose_layers=cfg.expose_layers, max_message_bytes=cfg.max_message_bytes)
    model.load()
    if adapter.takes_tokens:
        model.vocab_fingerprint = resolve_vocab_fingerprint(cfg.model_uri, cfg.tokenizer, adapter.num_classes)
    else:
        model.class_names = resolve_class_names(cfg.model_uri, cfg.class_names, adapter.num_classes)
    return model


async def _serve(cfg: TeacherServeConfig, model: TeacherModel, ready_file: str | None) -> None:
    token = read_token(cfg.auth.token_file) if cfg.auth.token_file else None
    registry = ModelRepository()
    registry.update(model)
    dataplane = TeacherDataPlane(model_registry=registry)
    rpc = grpc_server(dataplane, cfg, token)
    grpc_port = bind_grpc(rpc, cfg)
    sock = bind_http(cfg)
    http_port = sock.getsockname()[1]
    rest = _Server(uvicorn.Config(rest_app(dataplane, cfg, token), host=cfg.host, port=http_port, log_config=None,
                                  access_log=False, timeout_graceful_shutdown=2, **uvicorn_tls(cfg.tls)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await rpc.start()
    rest_task = asyncio.create_task(rest.serve(sockets=[sock]))
    while not rest.started and not rest_task.done():
        await asyncio.sleep(0.02)
    tls = "mutual" if cfg.tls and cfg.tls.client_ca_file else "on" if cfg.tls else "off"
    log.info("teacher %s (%s) on grpc %s, rest %s (token %s, tls %s, exposed layers %s): %s", cfg.model_name,
             cfg.model_uri, address(cfg.host, grpc_port), address(cfg.host, http_port), "on" if token else "off", tls,
             cfg.expose_layers, model.adapter.describe())
    if ready_file and not rest_task.done():
        _write_ready(ready_file, {"grpc_port": grpc_port, "http_port": http_port, "pid": os.getpid()})
    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait([stop_wait, rest_task], return_when=asyncio.FIRST_COMPLETED)
    rest.should_exit = True
    await rpc.stop(2)
    await asyncio.gather(rest_task, return_exceptions=True)
    stop_wait.cancel()


def _write_ready(path: str, facts: dict[str, Any]) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(facts))
    tmp.replace(path)


def serve(cfg: TeacherServeConfig, ready_file: str | None = None) -> None:
    """Load the teacher and serve it until SIGTERM/SIGINT (blocking). Port 0 = a free port.

    ``ready_file`` is written (atomically) once both ports answer: what the local backend waits for.
    """
    model = build_model(cfg)
    asyncio.run(_serve(cfg, model, ready_file))


def main(argv: list[str] | None = None) -> None:
    from crossdistill.config import load_config

    parser = argparse.ArgumentParser(prog="python -m crossdistill.teacher.server", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="TeacherServeConfig as YAML/JSON (any URI)")
    parser.add_argument("--ready-file", help="write this file once both ports answer")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        serve(load_config(TeacherServeConfig, args.config, args.overrides), args.ready_file)
    except CrossdistillError as exc:  # the user's mistake: one line, no traceback
        print(f"{SERVE_FAILED} {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main(sys.argv[1:])
