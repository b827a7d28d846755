"""The client against real servers: pairing out of order, bad tensors, unreachable teachers, other OIP servers.

Besides our own served teachers, a small OIP server written here on grpcio answers the way other
servers may: no ``ids`` echo, ``ids`` as [B, 1], FP64 logits in typed ``contents``, FP16 logits, or
foreign ids (the model name picks which), with a 64 KiB message limit it advertises in its metadata.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from crossdistill.errors import ConfigError, TeacherError, TeacherResponseError, TeacherUnavailableError
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig, oip_modules
from crossdistill.train.trainer import StudentTrainConfig

torch = pytest.importorskip("torch")

NAN, NARROW, SHORT = -1.0, -2.0, -3.0  # markers in pixel [0, 0, 0] that make the quirky teacher misbehave
SLOW = 300.0  # this marker makes it spin through 300 matrix products first


@pytest.fixture(scope="module")
def quirky(quirky_teacher):
    return quirky_teacher


def _local(net, x: np.ndarray) -> np.ndarray:
    clean = x.copy()
    clean[:, 0, 0, 0] = 0.0
    with torch.no_grad():
        return net.fc(torch.from_numpy(clean).flatten(1)).numpy()


def _client(endpoint, **kw) -> TeacherClient:
    return TeacherClient(TeacherClientConfig(url=endpoint.grpc, model_name=endpoint.model_name, **kw))


def test_slow_batch_answers_last_and_everything_pairs_by_id(quirky, digits):
    x = digits["x"][:24].copy()
    x[:8, 0, 0, 0] = SLOW  # batch 0 is slow; batches 1 and 2 overtake it
    batches = [(digits.ids[i:i + 8], x[i:i + 8], i // 8) for i in range(0, 24, 8)]
    order = []
    with _client(quirky["endpoint"], max_in_flight=3) as client:
        for out, index in client.stream(batches):
            order.append(index)
            np.testing.assert_array_equal(out.ids, batches[index][0])
            np.testing.assert_allclose(out.logits, _local(quirky["net"], batches[index][1]), atol=1e-5)
    assert sorted(order) == [0, 1, 2]
    assert order[-1] == 0, f"completion order {order}: the slow batch should have been overtaken"


def test_concurrent_batches_of_different_sizes_pair_with_their_rows(served_keras_teacher, keras_adapter, digits):
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 300, size=16)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) % (len(digits) - 300)
    batches = [(digits.ids[s:s + n], digits["x"][s:s + n], (s, n)) for s, n in zip(starts, sizes, strict=True)]
    seen = []
    with _client(served_keras_teacher, max_in_flight=4) as client:
        for out, (s, n) in client.stream(batches):
            seen.append((s, n))
            np.testing.assert_array_equal(out.ids, digits.ids[s:s + n])
            np.testing.assert_allclose(out.logits, keras_adapter.predict(digits["x"][s:s + n])["logits"],
                                       rtol=1e-5, atol=1e-5)
    assert sorted(seen) == sorted((s, n) for _, _, (s, n) in batches)


VARIANT_LIMIT = 64 << 10  # bytes per message, both ways, on the variant server


class _Variants:
    """An OIP server answering ``logits = 2 * flatten(input)[:, :10]`` in the dialect its model name picks."""

    def __init__(self) -> None:
        pb, pb_grpc = oip_modules()
        self.pb = pb
        self.rows: dict[str, list[int]] = {}  # model name -> rows of each request, in arrival order
        self.lock = threading.Lock()
        servicer = type("Servicer", (pb_grpc.GRPCInferenceServiceServicer,), {
            "ServerReady": lambda _s, req, ctx: pb.ServerReadyResponse(ready=True),
            "ModelReady": lambda _s, req, ctx: pb.ModelReadyResponse(ready=True),
            "ModelMetadata": lambda _s, req, ctx: self.metadata(req),
            "ModelInfer": lambda _s, req, ctx: self.infer(req)})()
        self.server = grpc.server(futures.ThreadPoolExecutor(4), options=[
            ("grpc.max_receive_message_length", VARIANT_LIMIT), ("grpc.max_send_message_length", VARIANT_LIMIT)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self.server)
        self.url = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def metadata(self, req):
        pb = self.pb
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=req.name, platform=f"oip-variants max_message_bytes={VARIANT_LIMIT}",
            inputs=[tensor(name="input", datatype="FP32", shape=[-1, 1, 8, 8])],
            outputs=[tensor(name="logits", datatype="FP32", shape=[-1, 10])])

    def infer(self, req):
        pb = self.pb
        x = np.frombuffer(req.raw_input_contents[0], np.float32).reshape(list(req.inputs[0].shape))
        ids = np.frombuffer(req.raw_input_contents[1], np.int64)
        with self.lock:
            self.rows.setdefault(req.model_name, []).append(len(ids))
        logits = 2.0 * x.reshape(len(x), -1)[:, :10]
        out = pb.ModelInferResponse.InferOutputTensor
        n = len(ids)
        if req.model_name == "fp64-typed":
            return pb.ModelInferResponse(model_name=req.model_name, outputs=[
                out(name="logits", datatype="FP64", shape=[n, 10],
                    contents=pb.InferTensorContents(fp64_contents=logits.astype(np.float64).ravel().tolist())),
                out(name="ids", datatype="INT64", shape=[n], contents=pb.InferTensorContents(int64_contents=ids))])
        tensors = [(out(name="logits", datatype="FP16" if req.model_name == "fp16" else "FP32", shape=[n, 10]),
                    logits.astype(np.float16 if req.model_name == "fp16" else np.float32).tobytes())]
        if req.model_name == "ids-column":
            tensors.append((out(name="ids", datatype="INT64", shape=[n, 1]), ids.tobytes()))
        if req.model_name == "foreign-ids":
            tensors.append((out(name="ids", datatype="INT64", shape=[n]), (ids + 100).tobytes()))
        return pb.ModelInferResponse(model_name=req.model_name, outputs=[t for t, _ in tensors],
                                     raw_output_contents=[raw for _, raw in tensors])


@pytest.fixture(scope="module")
def variants():
    server = _Variants()
    yield server
    server.server.stop(grace=None)


@pytest.mark.parametrize("dialect", ["no-ids", "ids-column", "fp64-typed", "fp16"])
def test_any_oip_dialect_of_dense_logits_is_accepted(variants, digits, dialect):
    x = digits["x"][:40]
    batches = [(digits.ids[i:i + 10], x[i:i + 10], i) for i in range(0, 40, 10)]
    cfg = TeacherClientConfig(url=variants.url, model_name=dialect, max_in_flight=4)
    with TeacherClient(cfg) as client:
        answered = {}
        for out, start in client.stream(batches):
            assert out.logits.dtype == np.float32
            np.testing.assert_array_equal(out.ids, digits.ids[start:start + 10])
            answered[start] = out.logits
    assert sorted(answered) == [0, 10, 20, 30]
    for start, logits in answered.items():
        np.testing.assert_allclose(logits, 2.0 * x[start:start + 10].reshape(10, -1)[:, :10], rtol=1e-3)


def test_response_with_foreign_ids_is_refused(variants, digits):
    with TeacherClient(TeacherClientConfig(url=variants.url, model_name="foreign-ids")) as client:
        with pytest.raises(TeacherResponseError, match=r"tensor 'ids'.*does not echo the request's ids \(position 0"):
            client.infer(digits.ids[:5], digits["x"][:5])


def test_batch_over_the_advertised_limit_is_split_and_joined(variants, digits):
    x = digits["x"][:1000]  # 264 KB of input on the wire: four times the server's 64 KiB
    with TeacherClient(TeacherClientConfig(url=variants.url, model_name="split", max_in_flight=2)) as client:
        assert client.message_limit() == VARIANT_LIMIT
        out = client.infer(digits.ids[:1000], x)
    np.testing.assert_array_equal(out.ids, digits.ids[:1000])
    np.testing.assert_allclose(out.logits, 2.0 * x.reshape(1000, -1)[:, :10])
    rows = variants.rows["split"]
    assert sum(rows) == 1000 and len(rows) >= 5 and max(rows) * (64 * 4 + 8) < VARIANT_LIMIT


def test_batches_over_our_own_limit_go_through_a_served_teacher(served_keras_teacher, keras_adapter, digits):
    limit = 16 << 10  # a 500-row batch is 132 KB of input: it cannot pass as one message
    batches = [(digits.ids[s:s + 500], digits["x"][s:s + 500], s) for s in (0, 500, 1000)]
    with _client(served_keras_teacher, max_message_bytes=limit, max_in_flight=3) as client:
        assert client.message_limit() == limit
        seen = []
        for out, s in client.stream(batches):
            seen.append(s)
            np.testing.assert_array_equal(out.ids, digits.ids[s:s + 500])
            np.testing.assert_allclose(out.logits, keras_adapter.predict(digits["x"][s:s + 500])["logits"],
                                       rtol=1e-5, atol=1e-5)
    assert sorted(seen) == [0, 500, 1000]


@pytest.mark.parametrize("url", ["127.0.0.1:99999", "127.0.0.1", "[::zz]:80", "http://teacher:80", "inprocess:",
                                 "-teacher:80", "999.0.0.1:80"])
def test_a_bad_teacher_url_is_a_config_error_naming_the_field(url):
    with pytest.raises(ConfigError, match=r"teacher\.url: .*expected host:port|teacher\.url: .*inprocess"):
        StudentTrainConfig.parse({"train_data": "data", "mode": "online", "teacher": {"url": url}})


@pytest.mark.parametrize("url", ["127.0.0.1:1", "[::1]:8081", "teacher.ns.svc.cluster.local:8081",
                                 "dns:///teacher-0.teacher:8081", "inprocess:/models/teacher.keras"])
def test_good_teacher_urls_pass(url):
    assert TeacherClientConfig.parse({"url": url}).url == url


@pytest.mark.parametrize("marker,pattern", [
    (NAN, r"tensor 'logits' .* holds 40 NaN/Inf value\(s\) \(shape \[4, 10\]\)"),
    (NARROW, r"tensor 'logits' .* has shape \[4, 7\], expected \[4, 10\]"),
    (SHORT, r"tensor 'logits' .* has shape \[1, 10\], expected \[4, 10\]"),
])
def test_bad_teacher_answers_name_the_tensor(quirky, digits, marker, pattern):
    x = digits["x"][:4].copy()
    x[0, 0, 0, 0] = marker
    with _client(quirky["endpoint"]) as client:
        with pytest.raises(TeacherResponseError, match=pattern):
            client.infer(digits.ids[:4], x)


def test_fp16_overflow_is_caught_as_inf(quirky, digits):
    x = digits["x"][:2].copy() * 1e6  # logits beyond FP16's range become Inf on the wire
    x[:, 0, 0, 0] = 0.0
    with _client(quirky["endpoint"], fp16=True) as client:
        with pytest.raises(TeacherResponseError, match=r"tensor 'logits' .* NaN/Inf"):
            client.infer(digits.ids[:2], x)


@pytest.mark.timeout(60)
def test_unreachable_teacher_gives_up_at_the_deadline():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    url = f"127.0.0.1:{port}"
    cfg = TeacherClientConfig(url=url, timeout_s=1, backoff_s=0.05, deadline_s=2)
    with TeacherClient(cfg) as client:
        with pytest.raises(TeacherUnavailableError, match=rf"teacher at {url} .*UNAVAILABLE.*deadline_s=2"):
            client.infer(np.arange(2), np.zeros((2, 1, 8, 8), np.float32))
        with pytest.raises(TeacherUnavailableError, match=rf"{url}.*not ready"):
            client.wait_ready(timeout_s=0.5)


def test_wrong_model_name_is_a_teacher_error(served_keras_teacher, digits):
    cfg = TeacherClientConfig(url=served_keras_teacher.grpc, model_name="no-such-model")
    with TeacherClient(cfg) as client:
        with pytest.raises(TeacherError, match="no-such-model"):
            client.infer(digits.ids[:2], digits["x"][:2])


def test_auto_in_flight_covers_a_long_round_trip(quirky_teacher, digits, caplog):
    """A 60 ms round trip (a loopback proxy holding each direction 30 ms) and a consumer taking 2 ms per
    answer: ``max_in_flight=auto`` widens the window to ~30 and logs it; two in flight would take ~4 s."""
    import logging

    from benchmarks.delay_proxy import DelayProxy

    caplog.set_level(logging.INFO, logger="crossdistill.teacher.client")
    host, port = quirky_teacher["endpoint"].grpc.rsplit(":", 1)
    x = digits["x"][:1600].copy()
    x[:, 0, 0, 0] = 0.0  # honest answers from the quirky teacher
    batches = [(digits.ids[i:i + 16], x[i:i + 16], i) for i in range(0, len(x), 16)]
    with DelayProxy(host, int(port), delay_s=0.03) as proxy, \
            TeacherClient(TeacherClientConfig(url=f"127.0.0.1:{proxy.port}", max_in_flight="auto")) as client:
        client.wait_ready(30)
        start, seen = time.monotonic(), []
        for _, payload in client.stream(batches):
            seen.append(payload)
            time.sleep(0.002)
        elapsed = time.monotonic() - start
    assert sorted(seen) == [i for _, _, i in batches]
    sizes = [int(m) for m in re.findall(r"(\d+) requests in flight \(max_in_flight=auto", caplog.text)]
    assert sizes and max(sizes) >= 16, caplog.text
    assert elapsed < 2.0, f"100 answers over a 60 ms round trip took {elapsed:.1f} s"
