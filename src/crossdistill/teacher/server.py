"""The teacher server: a ``kserve.Model`` over a ``TeacherAdapter``, served by ``kserve.ModelServer``.

Speaks the Open Inference Protocol v2 on gRPC and REST exactly as ``teacher/protocol.py`` describes:
``input`` + ``ids`` in, ``ids`` echoed plus ``logits`` (FP32 or FP16), or top-k log-probabilities at a
temperature, plus ``layer/<name>`` outputs. Health and readiness (``/v2/health/ready``, gRPC
``ServerReady``/``ModelReady``) come from KServe. Model metadata carries the input and output shapes;
OIP metadata has no free-form field, so ``num_parameters`` and ``size_bytes`` ride in ``platform``
(``"crossdistill/keras num_parameters=50826 size_bytes=645354"``) and in every response's parameters.
Never the weights.

Process entry (what ``deploy/local.py`` launches)::

    python -m crossdistill.teacher.server --config teacher-serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from crossdistill.deploy.config import TeacherServeConfig
from crossdistill.teacher import protocol as P
from crossdistill.teacher.adapters import TeacherAdapter, load_teacher
from crossdistill.teacher.client import oip_modules

oip_modules()  # imports kserve with sys.argv shielded from its module-level argument parser
import kserve  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters  # noqa: E402

log = logging.getLogger("crossdistill.teacher.server")
_FLOAT_IN = ("FP32", "FP64", "FP16")
_INT_IDS = ("INT64", "INT32")


def platform_string(adapter: TeacherAdapter) -> str:
    return f"crossdistill/{adapter.format} num_parameters={adapter.num_parameters} size_bytes={adapter.size_bytes}"


class TeacherModel(kserve.Model):
    """Serves one teacher; the framework forward runs in a thread pool so requests overlap."""

    def __init__(self, name: str, adapter: TeacherAdapter, concurrency: int = 4) -> None:
        super().__init__(name)
        self.adapter = adapter
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teacher")
        self._layer_shapes: dict[str, list[int]] = {}
        self.ready = False

    def load(self) -> bool:
        if self.adapter.input_shape is not None:
            # One probe tells the output width and every layer's shape for the metadata (and warms up).
            probe = self.adapter.predict(np.zeros((1, *self.adapter.input_shape), np.float32),
                                         self.adapter.layer_names())
            self._layer_shapes = {n: [-1, *a.shape[1:]] for n, a in probe.items() if n != P.LOGITS}
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        shape = list(self.adapter.input_shape) if self.adapter.input_shape is not None else [-1]
        return [{"name": P.INPUT, "datatype": "FP32", "shape": [-1, *shape]},
                {"name": P.IDS, "datatype": "INT64", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        c = self.adapter.num_classes or -1
        outs = [{"name": P.IDS, "datatype": "INT64", "shape": [-1]},
                {"name": P.LOGITS, "datatype": "FP32", "shape": [-1, c]},
                {"name": P.TOPK_LOGPROBS, "datatype": "FP32", "shape": [-1, -1]},
                {"name": P.TOPK_INDICES, "datatype": "INT64", "shape": [-1, -1]}]
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
        except Exception as exc:  # a framework error is the request's fault only if the input is odd
            log.exception("teacher forward failed")
            raise kserve.errors.InferenceError(f"teacher forward failed: {exc}") from None
        outputs = [_output(P.IDS, ids)]
        logits = result[P.LOGITS]
        float_t = np.float16 if fp16 else np.float32
        if top_k == 0:
            outputs.append(_output(P.LOGITS, logits.astype(float_t)))
        else:
            if top_k > logits.shape[1]:
                raise InvalidInput(f"parameter top_k={top_k} exceeds the teacher's {logits.shape[1]} classes")
            logprobs, index = P.topk_logprobs(logits, top_k, temperature)
            outputs += [_output(P.TOPK_LOGPROBS, logprobs.astype(float_t)), _output(P.TOPK_INDICES, index)]
        outputs += [_output(P.LAYER_PREFIX + n, result[n].astype(float_t)) for n in layers]
        params: dict[str, Any] = {"num_classes": int(logits.shape[1]), P.PARAM_TOP_K: top_k,
                                  P.PARAM_TEMPERATURE: repr(float(temperature)),
                                  "num_parameters": self.adapter.num_parameters,
                                  "size_bytes": self.adapter.size_bytes}
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs,
                             parameters=params, use_binary_outputs=payload.use_binary_outputs)

    def _parse(self, req: InferRequest) -> tuple[np.ndarray, np.ndarray, int, float, bool, tuple[str, ...]]:
        tensor = req.get_input_by_name(P.INPUT)
        if tensor is None:
            raise InvalidInput(f"request has no input tensor '{P.INPUT}' (got {[i.name for i in req.inputs]}); "
                               f"expected FP32 [B, {', '.join(map(str, self.adapter.input_shape or ['...']))}]")
        if tensor.datatype not in _FLOAT_IN:
            raise InvalidInput(f"input '{P.INPUT}' has datatype {tensor.datatype}, expected FP32")
        x = tensor.as_numpy().astype(np.float32, copy=False)
        want = self.adapter.input_shape
        if x.ndim < 2 or (want is not None and tuple(x.shape[1:]) != tuple(want)):
            expected = f"[B, {', '.join(map(str, want))}]" if want is not None else "[B, ...]"
            raise InvalidInput(f"input '{P.INPUT}' has shape {list(x.shape)}, expected {expected}")
        id_tensor = req.get_input_by_name(P.IDS)
        if id_tensor is None:
            ids = np.arange(len(x), dtype=np.int64)  # plain OIP clients (no ids) still get answers
        else:
            if id_tensor.datatype not in _INT_IDS:
                raise InvalidInput(f"input '{P.IDS}' has datatype {id_tensor.datatype}, expected INT64")
            ids = id_tensor.as_numpy().astype(np.int64, copy=False).reshape(-1)
            if len(ids) != len(x):
                raise InvalidInput(f"input '{P.IDS}' has {len(ids)} ids, expected {len(x)} (one per row of "
                                   f"'{P.INPUT}')")
        params = to_http_parameters(req.parameters) if req.parameters else {}
        try:
            top_k = int(params.get(P.PARAM_TOP_K, 0))
            temperature = float(params.get(P.PARAM_TEMPERATURE, 1.0))
        except (TypeError, ValueError):
            raise InvalidInput(f"parameters '{P.PARAM_TOP_K}' (int) and '{P.PARAM_TEMPERATURE}' (float) must be "
                               f"numbers, got {params.get(P.PARAM_TOP_K)!r}, {params.get(P.PARAM_TEMPERATURE)!r}") from None
        if top_k < 0 or temperature <= 0:
            raise InvalidInput(f"parameter top_k={top_k} must be >= 0 and temperature={temperature} > 0")
        fp16 = params.get(P.PARAM_FP16, False)
        fp16 = fp16 if isinstance(fp16, bool) else str(fp16).lower() in ("1", "true", "yes")
        layers = tuple(n.strip() for n in str(params.get(P.PARAM_LAYERS, "")).split(",") if n.strip())
        unknown = [n for n in layers if n not in self.adapter.layer_names()]
        if unknown:
            raise InvalidInput(f"parameter '{P.PARAM_LAYERS}': unknown layer(s) {unknown}; "
                               f"known: {self.adapter.layer_names()}")
        return x, ids, top_k, temperature, fp16, layers


class TeacherDataPlane(DataPlane):
    """KServe's data plane, but model metadata carries the model's ``platform`` (KServe leaves it empty)."""

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        meta = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        if isinstance(model, TeacherModel):
            meta["platform"] = platform_string(model.adapter)
        return meta


def _output(name: str, array: np.ndarray) -> InferOutput:
    dtype = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.int64): "INT64"}[array.dtype]
    out = InferOutput(name=name, shape=list(array.shape), datatype=dtype)
    # Raw bytes now: kserve's to_grpc() cannot take numpy data; to_rest() turns raw into JSON when asked.
    out.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(cfg: TeacherServeConfig) -> None:
    """Load the teacher and serve it until the process is stopped (blocking). Port 0 = a free port."""
    grpc_port = cfg.grpc_port or free_port()
    http_port = cfg.http_port or free_port()
    adapter = load_teacher(cfg.model_uri, cfg.model_format, cfg.output_is_probs, threads=cfg.workers_threads)
    model = TeacherModel(cfg.model_name, adapter, concurrency=max(4, cfg.workers_threads))
    model.load()
    log.info("teacher %s (%s) on grpc %d, http %d: %s", cfg.model_name, cfg.model_uri, grpc_port, http_port,
             adapter.describe())
    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, enable_latency_logging=False,
                                max_threads=max(4, cfg.workers_threads), grace_period=2)
    server.dataplane = TeacherDataPlane(model_registry=server.registered_models)
    server.start([model])


def main(argv: list[str] | None = None) -> None:
    from crossdistill.config import load_config

    parser = argparse.ArgumentParser(prog="python -m crossdistill.teacher.server", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="TeacherServeConfig as YAML/JSON (any URI)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    cfg = load_config(TeacherServeConfig, args.config, args.overrides)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
