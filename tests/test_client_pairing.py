"""The client against real servers: pairing by echoed ids out of order, bad tensors, unreachable teachers."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from crossdistill.errors import TeacherError, TeacherResponseError, TeacherUnavailableError
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig

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


def test_response_with_foreign_ids_is_refused(served_keras_teacher, digits):
    with _client(served_keras_teacher) as client:
        client.metadata()
        call = client._new_call(digits.ids[:5], digits["x"][:5], None)
        response = client._stub.ModelInfer(call.request, timeout=30)
        call.ids = call.ids + 100  # the batch this answer would be paired with had other ids
        with pytest.raises(TeacherResponseError, match=r"tensor 'ids'.*does not echo the request's ids"):
            client._decode(call, response)


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
    cfg = TeacherClientConfig(url=url, timeout_s=1, retries=10_000, backoff_s=0.05, deadline_s=2)
    with TeacherClient(cfg) as client:
        with pytest.raises(TeacherUnavailableError, match=rf"teacher at {url} .*UNAVAILABLE.*deadline_s=2"):
            client.infer(np.arange(2), np.zeros((2, 1, 8, 8), np.float32))
        with pytest.raises(TeacherUnavailableError, match=rf"{url}.*not ready"):
            client.wait_ready(timeout_s=0.5)


def test_wrong_model_name_is_a_teacher_error(served_keras_teacher, digits):
    cfg = TeacherClientConfig(url=served_keras_teacher.grpc, model_name="no-such-model", retries=0)
    with TeacherClient(cfg) as client:
        with pytest.raises(TeacherError, match="no-such-model"):
            client.infer(digits.ids[:2], digits["x"][:2])
