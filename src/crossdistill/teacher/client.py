"""The student's side of the wire: an OIP v2 gRPC client with binary tensors and requests in flight.

``TeacherClient.stream`` keeps ``max_in_flight`` requests outstanding (gRPC futures, no extra threads)
so the teacher computes the next batches while the student steps on this one, and yields answers in
completion order. Each answer is paired with the request it answers (a unary call); when the teacher
echoes ``ids`` they must equal the request's, never silently re-aligned. Every tensor is checked
(name, dtype, shape, finite values) before the student sees it.

A teacher outage is ridden out for up to ``deadline_s``: a failed call is retried after a jittered,
capped backoff kept on a timer heap inside the stream loop (the other calls go on meanwhile), retries
wait for the channel to reconnect, and a warning is logged about every 10 s while the teacher is away.
A batch whose request or answer would exceed the agreed message size is split into several calls and
the answers joined, unseen by the caller.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import json
import logging
import math
import queue
import random
import re
import sys
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import grpc
import numpy as np
from pydantic import Field, field_validator

from crossdistill.config import StrictConfig
from crossdistill.errors import TeacherError, TeacherResponseError, TeacherUnavailableError
from crossdistill.teacher import protocol as P
from crossdistill.teacher.protocol import TeacherOutput
from crossdistill.teacher.transport import ClientTLS, open_channel

T = TypeVar("T")
log = logging.getLogger(__name__)
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_CHANNEL_MAX_MESSAGE = 1 << 30  # the channel's own cap when max_message_bytes is unset: splitting keeps below it
_MESSAGE_OVERHEAD = 4096  # names, shapes, parameters and framing of one message, beyond its tensor bytes
_TICK_S = 1.0  # the stream loop looks at its retry timers and outage log at least this often
AUTO_MIN, AUTO_MAX = 2, 64  # the window max_in_flight=auto moves in
HEADROOM = 1.5  # auto: in flight beyond the bare round trip / time per answer, for jitter and queueing
_LOG_AFTER_S, _LOG_EVERY_S = 2.0, 10.0  # an outage is logged once it lasts this long, then this often
_FLOAT = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "INT32": "int_contents",
             "UINT16": "uint_contents"}
_NP = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
       "UINT16": np.uint16}
_INDEX = ("UINT16", "INT32", "INT64")  # top-k indices: compact from this server, INT64 from older ones


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


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_url(url: str) -> str:
    """``url`` if it names a teacher: ``host:port``, a pool of replicas ``ip:port,ip:port,...``,
    ``dns:///host:port`` (a name that may resolve to many replicas) or ``inprocess:<model uri>``.

    ``host`` is an IPv4 address, a bracketed IPv6 address or a DNS name; ``port`` is 1-65535; the
    members of a list are IP addresses (gRPC resolves names only one at a time: give a pool behind one
    name as ``dns:///``). Anything else raises ValueError saying what was expected (pydantic reports it
    under the field's name).
    """
    if url.startswith(P.INPROCESS):
        if not url[len(P.INPROCESS):].strip():
            raise ValueError("inprocess: needs the teacher model's URI, e.g. inprocess:/models/teacher.keras")
        return url
    if url.startswith("dns:///"):
        _check_target(url[len("dns:///"):])
        return url
    members = url.split(",")
    for member in members:
        _check_target(member.strip())
    hosts = [m.strip().rpartition(":")[0] for m in members]
    if len(members) > 1 and (not all(map(_is_ip, hosts)) or len({h.startswith("[") for h in hosts}) > 1):
        raise ValueError(f"'{url}': a list of teacher replicas takes IP addresses of one family (ip:port,ip:port); "
                         "for replicas behind one name use dns:///name:port (e.g. a headless Service)")
    return url


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


def _check_target(target: str) -> None:
    """One ``host:port`` (the unit a list of replicas would repeat)."""
    expected = "expected host:port (IPv4, [IPv6] or DNS name, port 1-65535), dns:///name:port or inprocess:<uri>"
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"'{target}' is not a teacher address: {expected}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"'{host}' is not an IPv6 address: {expected}") from None
        return
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"'{host}' is not an IPv4 address: {expected}") from None
        return
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in host.rstrip(".").split(".")):
        raise ValueError(f"'{host}' is not a host name: {expected}")


class TeacherClientConfig(StrictConfig):
    """How the student calls the teacher."""

    url: str = Field(..., description="the teacher's OIP gRPC endpoint: host:port (IPv4, [IPv6] or DNS name); "
                                      "a pool of replicas as ip:port,ip:port,... or dns:///name:port (requests "
                                      "balanced round-robin by gRPC); or inprocess:<model uri> to run the "
                                      "teacher inside this process (co-located baseline)")
    model_name: str = P.DEFAULT_MODEL_NAME
    max_in_flight: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        4, description="requests outstanding at once in stream(); auto = as many as cover the measured round trip "
                       f"at the pace answers are consumed ({AUTO_MIN}..{AUTO_MAX}), e.g. for a teacher far away")
    timeout_s: float = Field(60.0, gt=0, description="per attempt")
    backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles per retry up to backoff_max_s "
                                                     "(each delay drawn from [50%, 100%] of that)")
    backoff_max_s: float = Field(10.0, ge=0, description="longest delay between two attempts of one request")
    deadline_s: float = Field(600.0, gt=0, description="how long one request may stay unanswered, retries "
                                                       "included: a teacher outage this long is ridden out")
    max_message_bytes: int | None = Field(
        None, ge=1 << 12, description="largest gRPC message either way; None = what the server advertises "
                                      "(64 MiB when it says nothing); larger batches go as several requests")
    top_k: int = Field(0, ge=0, description="0 = dense logits")
    temperature: float = Field(1.0, gt=0, description="for top-k log-probabilities")
    fp16: bool = False
    layers: list[str] = Field(default_factory=list, description="intermediate layers to return")
    token_file: str | None = Field(None, description="file holding the teacher's bearer token, sent on every call")
    tls: ClientTLS | None = Field(None, description="TLS towards the teacher (ca_file, cert_file + key_file for "
                                                    "mutual TLS, server_name); None = plain text")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)


@dataclass
class _Job:
    """One caller batch: its payload and the answers of the calls it went out as (one unless split)."""

    payload: Any
    answers: list[TeacherOutput | None]


@dataclass
class _Call:
    """One request on the wire: part ``part`` of ``job``, its current attempt and when it was first sent."""

    key: int
    job: _Job
    part: int
    ids: np.ndarray
    request: Any
    started: float = 0.0
    sent: float = 0.0  # this attempt's send time, for the round trip
    attempt: int = 0
    future: Any = None
    positions: tuple[int, ...] = ()  # a token model's positions per row: outputs are [B, *positions, ...]

    @property
    def batch_size(self) -> int:
        return len(self.ids)


@dataclass
class _Outage:
    """The teacher has not answered since ``since``: the last reason, and when it was last logged."""

    since: float
    reason: str = ""
    logged: float | None = None


class _Window:
    """How many requests stream() keeps in flight: ``max_in_flight``, or with ``auto`` enough to cover the
    round trip at the pace answers are consumed (Little's law: round trip / time per answer, plus one),
    from moving averages of both, between AUTO_MIN and AUTO_MAX; each new choice is logged."""

    def __init__(self, setting: int | str, url: str) -> None:
        self.auto, self.url = setting == "auto", url
        self.size = AUTO_MIN if self.auto else int(setting)
        self.rtt: float | None = None
        self.per_answer: float | None = None
        self._logged = 0

    @staticmethod
    def _average(old: float | None, new: float) -> float:
        return new if old is None else 0.8 * old + 0.2 * new

    def answered(self, rtt: float) -> None:
        if self.auto:
            self.rtt = self._average(self.rtt, rtt)
            self._resize()

    def consumed(self, seconds: float) -> None:
        if self.auto:
            self.per_answer = self._average(self.per_answer, seconds)
            self._resize()

    def _resize(self) -> None:
        if self.rtt is None or self.per_answer is None:
            return
        self.size = min(AUTO_MAX, max(AUTO_MIN, math.ceil(HEADROOM * self.rtt / max(self.per_answer, 1e-4)) + 1))
        if self.size >= 2 * self._logged or 2 * self.size <= self._logged:
            self._logged = self.size
            log.info("teacher at %s: %d requests in flight (max_in_flight=auto: round trip %.1f ms, %.2f ms per "
                     "answer consumed)", self.url, self.size, self.rtt * 1e3, self.per_answer * 1e3)


class TeacherClient:
    """OIP v2 gRPC client for one teacher model. Use as a context manager or call ``close()``."""

    def __init__(self, cfg: TeacherClientConfig) -> None:
        self.cfg = cfg
        self._pb, pb_grpc = oip_modules()
        self._channel = open_channel(cfg.url, token_file=cfg.token_file, tls=cfg.tls, options=self._channel_options())
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._keys = itertools.count()
        self._meta: dict[str, Any] | None = None
        self._outage: _Outage | None = None
        self._seen_row_bytes = 0  # largest answer per row so far, for splitting when metadata says too little

    def _channel_options(self) -> list[tuple[str, int]]:
        """Message caps, and reconnect attempts no further apart than ``backoff_max_s`` during an outage.

        The connection is this client's own (a local subchannel pool): a new client dials at once
        instead of inheriting another client's reconnect backoff from an outage that has ended.
        """
        cap = self.cfg.max_message_bytes or _CHANNEL_MAX_MESSAGE
        reconnect_ms = max(100, int(self.cfg.backoff_max_s * 1000))
        return [("grpc.max_send_message_length", cap), ("grpc.max_receive_message_length", cap),
                ("grpc.initial_reconnect_backoff_ms", min(1000, reconnect_ms)),
                ("grpc.max_reconnect_backoff_ms", reconnect_ms), ("grpc.use_local_subchannel_pool", 1)]

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
                if exc.code() not in (*_RETRYABLE, grpc.StatusCode.NOT_FOUND):  # a wrong token will not heal
                    raise self._rpc_error(exc) from None
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
        meta["num_classes"] = logits[-1] if logits and len(logits) >= 2 and logits[-1] > 0 else None
        meta["input_datatype"] = next((t.datatype for t in resp.inputs if t.name == P.INPUT), None)
        meta["layers"] = {n[len(P.LAYER_PREFIX):]: s for n, s in tensors_out.items() if n.startswith(P.LAYER_PREFIX)}
        meta["max_message_bytes"], meta["class_names"] = None, None
        for token in resp.platform.split()[1:]:
            key, _, value = token.partition("=")
            if value.isdigit():
                meta[key] = int(value)
            elif key == "class_names":
                meta[key] = _class_names(value)
            elif key == "vocab_fingerprint":
                meta[key] = value
        self._meta = meta
        return meta

    # ------------------------------------------------------------------ inference
    def infer(self, ids: np.ndarray, x: np.ndarray) -> TeacherOutput:
        """The teacher's answer for one batch (blocking, with retries; split when too large for one message)."""
        out, _ = next(self.stream([(ids, x, None)]))
        return out

    def wire_bytes(self, ids: np.ndarray, x: np.ndarray) -> tuple[int, int]:
        """Serialized sizes ``(request, response)`` of one batch as it crosses the wire (protobuf bytes)."""
        self._expectations()
        call = self._new_call(_Job(None, [None]), 0, *_as_batch(ids, x))
        response = self._stub.ModelInfer(call.request, timeout=self.cfg.timeout_s)
        self._decode(call, response)  # the answer must still be valid
        return call.request.ByteSize(), response.ByteSize()

    def message_limit(self) -> int:
        """Bytes one message may hold either way: the server's advertised limit, capped by ours."""
        self._expectations()
        advertised = (self._meta or {}).get("max_message_bytes") or P.DEFAULT_MAX_MESSAGE_BYTES
        return min(advertised, self.cfg.max_message_bytes or advertised)

    def stream(self, batches: Iterable[tuple[np.ndarray, np.ndarray, T]]) -> Iterator[tuple[TeacherOutput, T]]:
        """Answers for ``(ids, x, payload)`` batches, ``max_in_flight`` requests outstanding, in completion order.

        Every batch is yielded exactly once. A call that fails with UNAVAILABLE or DEADLINE_EXCEEDED is
        retried (after its backoff, from a timer heap: the other calls go on) until it has been
        unanswered for ``deadline_s``; then TeacherUnavailableError.
        """
        self._expectations()
        done: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        unsent: deque[_Call] = deque()  # parts of a split batch waiting for a free slot
        timers: list[tuple[float, int, _Call]] = []  # failed calls waiting out their backoff
        active: dict[int, _Call] = {}  # on the wire or waiting to be retried
        source = iter(batches)
        exhausted = False
        window = _Window(self.cfg.max_in_flight, self.cfg.url)
        try:
            while True:
                while len(active) < window.size and (unsent or not exhausted):
                    if not unsent:
                        try:
                            unsent.extend(self._split(*next(source)))
                        except StopIteration:
                            exhausted = True
                            break
                    call = unsent.popleft()
                    active[call.key] = call
                    self._send(call, done)
                if not active:
                    return
                now = time.monotonic()
                while timers and timers[0][0] <= now:
                    self._send(heapq.heappop(timers)[2], done)
                self._log_outage(now)
                wait = min(_TICK_S, timers[0][0] - now) if timers else _TICK_S
                try:
                    call = done.get(timeout=max(0.0, wait))
                except queue.Empty:
                    continue
                exc = call.future.exception()
                if exc is not None:
                    heapq.heappush(timers, (self._retry_at(call, exc), call.key, call))
                    continue
                del active[call.key]
                window.answered(time.monotonic() - call.sent)
                joined = self._answered(call, call.future.result())
                if joined is not None:
                    handed = time.monotonic()
                    yield joined, call.job.payload
                    window.consumed(time.monotonic() - handed)
        finally:
            for call in active.values():
                if call.future is not None:
                    call.future.cancel()

    def _split(self, ids: np.ndarray, x: np.ndarray, payload: Any) -> list[_Call]:
        """The calls one batch goes out as: as many rows per call as fit the message limit both ways."""
        ids, x = _as_batch(ids, x)
        limit = self.message_limit()
        row_in = int(np.prod(x.shape[1:], dtype=np.int64)) * 4 + 8
        row_out = self._answer_row_bytes(int(np.prod(x.shape[1:], dtype=np.int64)) if x.dtype.kind == "i" else 1)
        room = limit - _MESSAGE_OVERHEAD
        if max(row_in, row_out) > room:
            raise TeacherError(f"one row of the request to {self.cfg.url} ({row_in} bytes of 'input' + 'ids') or of "
                               f"its answer (~{row_out} bytes) exceeds the message limit of {limit} bytes "
                               f"(max_message_bytes, the smaller of the server's and teacher.max_message_bytes)")
        rows = max(1, room // max(row_in, row_out))
        starts = range(0, len(ids), rows) or range(1)
        job = _Job(payload, [None] * len(starts))
        return [self._new_call(job, part, ids[lo:lo + rows], x[lo:lo + rows]) for part, lo in enumerate(starts)]

    def _answer_row_bytes(self, positions: int = 1) -> int:
        """Bytes per row of an answer (``positions`` outputs per row for a token model): from the metadata
        (classes, top-k, layer shapes), or as seen so far."""
        meta = self._meta or {}
        width = 2 if self.cfg.fp16 else 4
        per = self.cfg.top_k * (width + 8) if self.cfg.top_k else (meta.get("num_classes") or 0) * width
        row = 8 + positions * per
        for name in self.cfg.layers:
            shape = meta.get("layers", {}).get(name) or []
            if len(shape) > 1 and all(d > 0 for d in shape[1:]):
                row += int(np.prod(shape[1:], dtype=np.int64)) * width
        return max(row, self._seen_row_bytes)

    def _new_call(self, job: _Job, part: int, ids: np.ndarray, x: np.ndarray) -> _Call:
        pb = self._pb
        key = next(self._keys)
        params = {P.PARAM_TOP_K: pb.InferParameter(int64_param=self.cfg.top_k),
                  P.PARAM_TEMPERATURE: pb.InferParameter(string_param=repr(float(self.cfg.temperature))),
                  P.PARAM_FP16: pb.InferParameter(bool_param=self.cfg.fp16)}
        if self.cfg.layers:
            params[P.PARAM_LAYERS] = pb.InferParameter(string_param=",".join(self.cfg.layers))
        tokens = x.dtype.kind == "i"
        request = pb.ModelInferRequest(
            model_name=self.cfg.model_name, id=f"b{key}", parameters=params,
            inputs=[pb.ModelInferRequest.InferInputTensor(name=P.INPUT, datatype="INT32" if tokens else "FP32",
                                                          shape=list(x.shape)),
                    pb.ModelInferRequest.InferInputTensor(name=P.IDS, datatype="INT64", shape=[len(ids)])],
            raw_input_contents=[x.tobytes(), ids.tobytes()])
        return _Call(key, job, part, ids, request, positions=tuple(x.shape[1:]) if tokens else ())

    def _send(self, call: _Call, done: queue.SimpleQueue[_Call]) -> None:
        """Put ``call`` on the wire; a retry waits for the channel to reconnect (within its timeout)."""
        now = time.monotonic()
        if call.attempt == 0:
            call.started = now
        call.sent = now
        remaining = self.cfg.deadline_s - (now - call.started)
        call.future = self._stub.ModelInfer.future(call.request, timeout=max(0.01, min(self.cfg.timeout_s, remaining)),
                                                   wait_for_ready=call.attempt > 0)
        call.future.add_done_callback(lambda _f, c=call: done.put(c))

    def _retry_at(self, call: _Call, exc: BaseException) -> float:
        """When to send ``call`` again after ``exc``; raises when it is not retryable or the deadline is spent."""
        if not isinstance(exc, grpc.RpcError) or exc.code() not in _RETRYABLE:
            raise self._rpc_error(exc) from None
        now = time.monotonic()
        outage = self._outage or _Outage(since=now)
        self._outage = outage
        if exc.code() == grpc.StatusCode.UNAVAILABLE or not outage.reason:  # a timeout says less than the cause
            outage.reason = f"{exc.code().name} ({exc.details()})"
        waited = now - call.started
        if waited >= self.cfg.deadline_s:
            raise TeacherUnavailableError(
                f"teacher at {self.cfg.url} (model '{self.cfg.model_name}') unavailable for {now - outage.since:.0f} s: "
                f"{outage.reason}; a request went unanswered for {waited:.1f} s over {call.attempt + 1} attempt(s) "
                f"(deadline_s={self.cfg.deadline_s}); start the teacher again (a run resumes from its checkpoint) "
                f"or raise teacher.deadline_s") from None
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2.0 ** min(call.attempt, 30)) * random.uniform(0.5, 1)
        call.attempt += 1
        return now + min(delay, self.cfg.deadline_s - waited)

    def _log_outage(self, now: float) -> None:
        """A warning once an outage has lasted ``_LOG_AFTER_S``, then every ``_LOG_EVERY_S``."""
        outage = self._outage
        if outage is None or now - outage.since < _LOG_AFTER_S:
            return
        if outage.logged is None or now - outage.logged >= _LOG_EVERY_S:
            outage.logged = now
            log.warning("teacher at %s unavailable for %.0f s, retrying: %s (deadline_s=%s)", self.cfg.url,
                        now - outage.since, outage.reason, self.cfg.deadline_s)

    def _answered(self, call: _Call, response: Any) -> TeacherOutput | None:
        """Decode one answer into its job; the job's joined answer once every part is in, else None."""
        out = self._decode(call, response)
        if call.batch_size:
            self._seen_row_bytes = max(self._seen_row_bytes, -(-response.ByteSize() // call.batch_size))
        if self._outage is not None:
            if self._outage.logged is not None:
                log.warning("teacher at %s answers again after %.0f s", self.cfg.url, time.monotonic() - self._outage.since)
            self._outage = None
        job = call.job
        job.answers[call.part] = out
        if any(a is None for a in job.answers):
            return None
        return _join([a for a in job.answers if a is not None])

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
        if P.IDS in tensors:  # an echo is optional (a stock OIP server sends none); when sent it must match
            dtype, shape, echo = tensors[P.IDS]
            if shape == [b, 1]:
                tensors[P.IDS] = (dtype, [b], echo.reshape(b))
            ids = self._take(tensors, P.IDS, ("INT64", "INT32"), (b,), call).astype(np.int64)
            if not np.array_equal(ids, call.ids):
                bad = int(np.flatnonzero(ids != call.ids)[0])
                raise TeacherResponseError(
                    f"tensor '{P.IDS}' from {self.cfg.url} does not echo the request's ids (position {bad}: got "
                    f"{ids[bad]}, expected {call.ids[bad]}): the answer belongs to another batch")
        meta = self._meta or {}
        c = meta.get("num_classes")
        out = TeacherOutput(ids=call.ids, temperature=float(self.cfg.temperature))
        lead = (b, *call.positions)
        if self.cfg.top_k == 0:
            out.logits = self._take(tensors, P.LOGITS, tuple(_FLOAT), (*lead, c), call, finite=True)
        else:
            k = self.cfg.top_k
            out.topk_logprobs = self._take(tensors, P.TOPK_LOGPROBS, tuple(_FLOAT), (*lead, k), call, finite=True)
            out.topk_indices = self._take(tensors, P.TOPK_INDICES, _INDEX, (*lead, k), call)
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


def _as_batch(ids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, x)`` as contiguous int64 ``[B]`` and float32 ``[B, ...]`` (int32 ``[B, T]`` token ids when ``x``
    holds integers), else TeacherError."""
    x = np.ascontiguousarray(x, dtype=np.int32 if np.asarray(x).dtype.kind in "iu" else np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if x.ndim < 2 or len(x) != len(ids):
        raise TeacherError(f"batch 'input' has shape {list(x.shape)} and 'ids' {list(ids.shape)}: expected "
                           f"[B, ...] and [B]")
    return ids, x


def _join(parts: list[TeacherOutput]) -> TeacherOutput:
    """One answer from the answers of a batch's consecutive row ranges."""
    if len(parts) == 1:
        return parts[0]

    def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.concatenate(arrays)

    first = parts[0]
    return TeacherOutput(ids=np.concatenate([p.ids for p in parts]), logits=cat([p.logits for p in parts]),
                         topk_logprobs=cat([p.topk_logprobs for p in parts]),
                         topk_indices=cat([p.topk_indices for p in parts]), temperature=first.temperature,
                         layers={n: np.concatenate([p.layers[n] for p in parts]) for n in first.layers})


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


def _class_names(value: str) -> list[str] | None:
    """The ``class_names=<quoted JSON list>`` token of a crossdistill server's platform string."""
    try:
        names = json.loads(urllib.parse.unquote(value))
    except ValueError:
        return None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None
