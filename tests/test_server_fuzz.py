"""Malformed requests against a real served teacher: each one refused with a reason, none crashing it.

Every gRPC case must come back INVALID_ARGUMENT (NOT_FOUND for an unknown model, RESOURCE_EXHAUSTED
for an oversize message) and every REST case 4xx, with a message; never INTERNAL / UNKNOWN / 5xx,
never a hang (every call has a timeout). Afterwards the server still answers a good request.
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import grpc
import numpy as np
import pytest

from crossdistill.teacher.client import oip_modules

TIMEOUT = 30
pb, pb_grpc = oip_modules()
X = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
IDS = np.arange(4, dtype=np.int64)


# ------------------------------------------------------------------------------------------ gRPC cases

def _tensor(name: str, datatype: str, shape: list[int], contents: Any = None) -> Any:
    t = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents is not None:
        t.contents.CopyFrom(contents)
    return t


def _request(inputs: list[Any] | None = None, raw: list[bytes] | None = None, params: dict[str, Any] | None = None,
             model: str = "teacher") -> Any:
    if inputs is None:
        inputs = [_tensor("input", "FP32", list(X.shape)), _tensor("ids", "INT64", [len(IDS)])]
        raw = [X.tobytes(), IDS.tobytes()] if raw is None else raw
    return pb.ModelInferRequest(model_name=model, inputs=inputs, raw_input_contents=raw or [],
                                parameters=params or {})


def _with_x(x: np.ndarray, datatype: str = "FP32") -> Any:
    return _request([_tensor("input", datatype, list(x.shape)), _tensor("ids", "INT64", [len(x)])],
                    [x.tobytes(), np.arange(len(x), dtype=np.int64).tobytes()])


def _param(**kw: Any) -> Any:
    return pb.InferParameter(**kw)


def _bad_x(value: float, row: int) -> np.ndarray:
    x = X.copy()
    x[row, 0, 3, 3] = value
    return x


GRPC: dict[str, Callable[[], Any]] = {
    "raw bytes too short": lambda: _request(raw=[X.tobytes()[:100], IDS.tobytes()]),
    "raw bytes too long": lambda: _request(raw=[X.tobytes() + b"\0" * 8, IDS.tobytes()]),
    "ids raw bytes odd": lambda: _request(raw=[X.tobytes(), IDS.tobytes()[:-3]]),
    "fewer raw contents than inputs": lambda: _request(raw=[X.tobytes()]),
    "2^62 rows declared": lambda: _request([_tensor("input", "FP32", [2**62, 1, 8, 8]), _tensor("ids", "INT64", [4])],
                                           [X.tobytes(), IDS.tobytes()]),
    "shape product overflows int64": lambda: _request([_tensor("input", "FP32", [2**40, 2**40, 8, 8])], [X.tobytes()]),
    "negative dimension": lambda: _request([_tensor("input", "FP32", [-4, 1, 8, 8])], [X.tobytes()]),
    "zero-size batch": lambda: _request([_tensor("input", "FP32", [0, 1, 8, 8]), _tensor("ids", "INT64", [0])],
                                        [b"", b""]),
    "BYTES input": lambda: _request([_tensor("input", "BYTES", [1])], [b"\x03\0\0\0abc"]),
    "INT64 input": lambda: _with_x(X.astype(np.int64), "INT64"),
    "not a datatype": lambda: _request([_tensor("input", "FLOAT", [4, 1, 8, 8])], [X.tobytes()]),
    "FP16 in typed contents": lambda: _request([_tensor("input", "FP16", [1, 1, 8, 8],
                                                        pb.InferTensorContents(fp32_contents=[0.0] * 64))]),
    "typed contents count wrong": lambda: _request([_tensor("input", "FP32", [2, 1, 8, 8],
                                                            pb.InferTensorContents(fp32_contents=[0.0] * 64))]),
    "typed contents of another type": lambda: _request([_tensor("input", "FP32", [1, 1, 8, 8],
                                                                pb.InferTensorContents(int64_contents=[1] * 64))]),
    "contents and raw both": lambda: _request([_tensor("input", "FP32", [4, 1, 8, 8],
                                                       pb.InferTensorContents(fp32_contents=[0.0]))], [X.tobytes()]),
    "no input tensor": lambda: _request([_tensor("ids", "INT64", [4])], [IDS.tobytes()]),
    "no tensors at all": lambda: _request([], []),
    "extra tensor": lambda: _request([_tensor("input", "FP32", [4, 1, 8, 8]), _tensor("junk", "INT64", [4])],
                                     [X.tobytes(), IDS.tobytes()]),
    "input twice": lambda: _request([_tensor("input", "FP32", [4, 1, 8, 8]), _tensor("input", "FP32", [4, 1, 8, 8])],
                                    [X.tobytes(), X.tobytes()]),
    "ids FP32": lambda: _request([_tensor("input", "FP32", [4, 1, 8, 8]), _tensor("ids", "FP32", [4])],
                                 [X.tobytes(), IDS.astype(np.float32).tobytes()]),
    "ids count wrong": lambda: _request([_tensor("input", "FP32", [4, 1, 8, 8]), _tensor("ids", "INT64", [3])],
                                        [X.tobytes(), IDS[:3].tobytes()]),
    "ids [B, 2]": lambda: _request([_tensor("input", "FP32", [4, 1, 8, 8]), _tensor("ids", "INT64", [2, 2])],
                                   [X.tobytes(), IDS.tobytes()]),
    "input [B, 64]": lambda: _with_x(X.reshape(4, 64)),
    "input 1-D": lambda: _with_x(X.reshape(-1)[:256].reshape(256)),
    "input [B, 1, 4, 16]": lambda: _with_x(X.reshape(4, 1, 4, 16)),
    "NaN input": lambda: _with_x(_bad_x(float("nan"), 2)),
    "Inf input": lambda: _with_x(_bad_x(float("inf"), 0)),
    "-Inf input": lambda: _with_x(_bad_x(float("-inf"), 3)),
    "FP64 overflowing FP32": lambda: _with_x(np.full((2, 1, 8, 8), 1e300), "FP64"),
    "temperature nan": lambda: _request(params={"temperature": _param(string_param="nan"), "top_k": _param(int64_param=3)}),
    "temperature inf": lambda: _request(params={"temperature": _param(string_param="inf")}),
    "temperature 1e309": lambda: _request(params={"temperature": _param(string_param="1e309")}),
    "temperature 0": lambda: _request(params={"temperature": _param(int64_param=0)}),
    "temperature negative": lambda: _request(params={"temperature": _param(string_param="-1.5")}),
    "temperature text": lambda: _request(params={"temperature": _param(string_param="warm")}),
    "temperature bool": lambda: _request(params={"temperature": _param(bool_param=True)}),
    "top_k negative": lambda: _request(params={"top_k": _param(int64_param=-1)}),
    "top_k over classes": lambda: _request(params={"top_k": _param(int64_param=11)}),
    "top_k 2^62": lambda: _request(params={"top_k": _param(int64_param=2**62)}),
    "top_k text": lambda: _request(params={"top_k": _param(string_param="three")}),
    "top_k fraction": lambda: _request(params={"top_k": _param(string_param="2.5")}),
    "fp16 not a bool": lambda: _request(params={"fp16": _param(string_param="maybe")}),
    "layers not a string": lambda: _request(params={"layers": _param(int64_param=3)}),
    "layer not exposed": lambda: _request(params={"layers": _param(string_param="dense_0,secret")}),
    "empty parameter": lambda: _request(params={"top_k": _param()}),
    "unknown model": lambda: _request(model="no-such-teacher"),
}


@pytest.fixture(scope="module")
def stub(served_keras_teacher) -> Any:
    channel = grpc.insecure_channel(served_keras_teacher.grpc, options=[
        ("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)])
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.mark.parametrize("case", list(GRPC), ids=list(GRPC))
def test_malformed_grpc_request_is_refused_with_a_reason(stub, case):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(GRPC[case](), timeout=TIMEOUT)
    code, details = err.value.code(), err.value.details() or ""
    want = grpc.StatusCode.NOT_FOUND if case == "unknown model" else grpc.StatusCode.INVALID_ARGUMENT
    assert code == want, f"{case}: {code.name}: {details}"
    assert len(details) > 15, f"{case}: no reason given ({details!r})"


def test_grpc_refusals_name_the_tensor_and_what_was_expected(stub):
    def details(case: str) -> str:
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(GRPC[case](), timeout=TIMEOUT)
        return err.value.details()

    assert details("raw bytes too short") == "input 'input' (FP32 [4, 1, 8, 8]) carries 100 raw bytes, expected 1024"
    assert "input 'input' declares shape [4611686018427387904, 1, 8, 8]" in details("2^62 rows declared")
    assert details("-Inf input") == "input 'input' holds NaN or Inf (first at row 3): expected finite values"
    assert "temperature" in details("temperature nan") and "finite" in details("temperature nan")
    assert "top_k=11: expected 0 (dense logits) .. 10" in details("top_k over classes")
    assert "layer 'secret' is not exposed" in details("layer not exposed")


def test_oversize_grpc_message_is_resource_exhausted(stub, served_keras_teacher):
    big = np.zeros(((65 << 20) // 256 + 1, 1, 8, 8), np.float32)  # just over the default 64 MiB
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(_with_x(big), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and err.value.details()


# ------------------------------------------------------------------------------------------ REST cases

def _body(x: Any = None, *, ids: Any = None, params: dict[str, Any] | None = None, datatype: str = "FP32",
          shape: Any = None) -> dict[str, Any]:
    x = X[:2] if x is None else x
    data = x.ravel().tolist() if isinstance(x, np.ndarray) else x
    inputs = [{"name": "input", "shape": list(x.shape) if shape is None else shape, "datatype": datatype,
               "data": data}]
    if ids is not None:
        inputs.append(ids)
    return {"inputs": inputs, **({"parameters": params} if params is not None else {})}


REST: dict[str, Callable[[], tuple[bytes, dict[str, str]]]] = {}


def _json(name: str, body: Any) -> None:
    REST[name] = lambda: (json.dumps(body).encode(), {"Content-Type": "application/json"})


def _raw(name: str, data: bytes, headers: dict[str, str]) -> None:
    REST[name] = lambda: (data, headers)


_raw("not JSON", b"{inputs: nope", {"Content-Type": "application/json"})
_raw("empty body", b"", {"Content-Type": "application/json"})
_raw("not UTF-8", b"\xff\xfe\x00{", {"Content-Type": "application/json"})
_json("a JSON list", [1, 2, 3])
_json("no inputs key", {"parameters": {}})
_json("inputs not a list", {"inputs": {"name": "input"}})
_json("empty inputs", {"inputs": []})
_json("input without shape", {"inputs": [{"name": "input", "datatype": "FP32", "data": [0.0]}]})
_json("input without data", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8]}]})
_json("shape of strings", _body(shape=["two", 1, 8, 8]))
_json("negative shape", _body(shape=[-2, 1, 8, 8]))
_json("float shape", _body(shape=[2.5, 1, 8, 8]))
_json("strings in FP32 data", _body(["a"] * 128, shape=[2, 1, 8, 8]))
_json("numeric strings in FP32 data", _body(["1.5"] * 128, shape=[2, 1, 8, 8]))
_json("mixed data", _body([0.0] * 127 + ["x"], shape=[2, 1, 8, 8]))
_json("booleans in FP32 data", _body([True] * 128, shape=[2, 1, 8, 8]))
_json("ragged nested data", _body([[0.0] * 64, [0.0] * 63], shape=[2, 1, 8, 8]))
_json("objects in data", _body([{"a": 1}] * 128, shape=[2, 1, 8, 8]))
_json("zero-size batch", _body([], shape=[0, 1, 8, 8]))
_json("data count wrong", _body([0.0] * 100, shape=[2, 1, 8, 8]))
_json("2^62 rows declared", _body([0.0] * 128, shape=[2**62, 1, 8, 8]))
_json("wrong datatype INT64", _body(X[:2].astype(int), datatype="INT64"))
_json("BYTES datatype", _body(["abc"], shape=[1], datatype="BYTES"))
_json("FP16 as JSON", _body(datatype="FP16"))
_json("not a datatype", _body(datatype="float"))
_json("wrong input shape", _body(X[:2].reshape(2, 64)))
_json("ids as floats", _body(ids={"name": "ids", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]}))
_json("ids count wrong", _body(ids={"name": "ids", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}))
_json("extra input", _body(ids={"name": "junk", "shape": [2], "datatype": "INT64", "data": [1, 2]}))
_json("NaN input", _body([0.0] * 64 + [float("nan")] * 64, shape=[2, 1, 8, 8]))
_raw("Infinity input (1e999)", json.dumps(_body([0.0] * 128, shape=[2, 1, 8, 8])).replace("0.0]", "1e999]").encode(),
     {"Content-Type": "application/json"})
for _name, _params in {"temperature NaN": {"temperature": "nan"}, "temperature 0": {"temperature": 0},
                       "temperature negative": {"temperature": -2}, "temperature list": {"temperature": [1]},
                       "temperature object": {"temperature": {"t": 1}}, "temperature null": {"temperature": None},
                       "top_k negative": {"top_k": -1}, "top_k over classes": {"top_k": 11},
                       "top_k fraction": {"top_k": 1.5}, "top_k bool": {"top_k": True}, "top_k text": {"top_k": "x"},
                       "fp16 number": {"fp16": 3}, "layers list": {"layers": ["dense_0"]},
                       "layer not exposed": {"layers": "dense_0,dense_1"}}.items():
    _json(_name, _body(params=_params))
_raw("binary header not an int", json.dumps(_body()).encode(),
     {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "many"})
_raw("binary header past the body", json.dumps(_body()).encode(),
     {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "999999"})


def _binary(x: np.ndarray, size: int | None = None, tail: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes if size is None else size}}]}).encode()
    return head + (x.tobytes() if tail is None else tail), {"Content-Type": "application/octet-stream",
                                                            "Inference-Header-Content-Length": str(len(head))}


REST["binary size short"] = lambda: _binary(X[:2], tail=X[:2].tobytes()[:-4])
REST["binary size declared wrong"] = lambda: _binary(X[:2], size=100, tail=X[:2].tobytes()[:100])
REST["binary size negative"] = lambda: _binary(X[:2], size=-8)
REST["binary NaN"] = lambda: _binary(_bad_x(float("nan"), 1)[:2])


def _post(endpoint: Any, path: str, data: bytes, headers: dict[str, str],
          method: str = "POST") -> tuple[int, str]:
    url = urlparse(endpoint.http)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.mark.parametrize("case", list(REST), ids=list(REST))
def test_malformed_rest_request_is_refused_with_a_reason(served_keras_teacher, case):
    data, headers = REST[case]()
    status, text = _post(served_keras_teacher, "/v2/models/teacher/infer", data, headers)
    assert 400 <= status < 500, f"{case}: HTTP {status}: {text[:300]}"
    body = json.loads(text)
    reason = body.get("error") or body.get("detail")
    assert reason and len(str(reason)) > 15, f"{case}: no reason given ({text[:300]})"


def test_more_rest_refusals(served_keras_teacher):
    data, headers = json.dumps(_body()).encode(), {"Content-Type": "application/json"}
    assert _post(served_keras_teacher, "/v2/models/nope/infer", data, headers)[0] == 404
    assert _post(served_keras_teacher, "/v2/models/teacher/infer", b"", {}, method="GET")[0] == 405
    # A body declared over max_message_bytes is refused before it is read.
    status, text = _post(served_keras_teacher, "/v2/models/teacher/infer", b"{}",
                         {"Content-Type": "application/json", "Content-Length": str(65 << 20)})
    assert status == 413 and "max_message_bytes" in text
    status, text = _post(served_keras_teacher, "/v2/models/teacher/infer",
                         json.dumps(_body(["a"] * 128, shape=[2, 1, 8, 8])).encode(), headers)
    assert status == 400 and "input 'input' (FP32) holds strings, expected numbers" in text


def test_enough_cases_and_the_server_still_answers(stub, served_keras_teacher, keras_adapter):
    assert len(GRPC) + len(REST) >= 50
    x = X.astype(np.float32)
    response = stub.ModelInfer(_with_x(x), timeout=TIMEOUT)
    logits = np.frombuffer(response.raw_output_contents[1], np.float32).reshape(4, 10)
    np.testing.assert_allclose(logits, keras_adapter.predict(x)["logits"], rtol=1e-5, atol=1e-5)
    status, text = _post(served_keras_teacher, "/v2/models/teacher/infer", json.dumps(_body(X[:2])).encode(),
                         {"Content-Type": "application/json"})
    assert status == 200
    out = {o["name"]: o for o in json.loads(text)["outputs"]}
    assert math.isclose(out["logits"]["data"][0], float(keras_adapter.predict(X[:2])["logits"][0, 0]), rel_tol=1e-5)
