"""The served teacher over real gRPC/REST on loopback: round trips match the adapter's local predictions."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from crossdistill.deploy.config import TeacherServeConfig
from crossdistill.deploy.local import deploy, teardown
from crossdistill.deploy.serve import deploy_teacher, teardown_teacher
from crossdistill.errors import TeacherError, TeacherUnavailableError
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig, oip_modules
from crossdistill.teacher.protocol import topk_logprobs


def _client(endpoint, **kw) -> TeacherClient:
    return TeacherClient(TeacherClientConfig(url=endpoint.grpc, model_name=endpoint.model_name, **kw))


def test_teacher_trains_to_high_accuracy(keras_teacher):
    assert keras_teacher["metrics"]["val_accuracy"] >= 0.93


def test_dense_fp32_round_trip(served_keras_teacher, keras_adapter, digits):
    x, ids = digits["x"][:100], digits.ids[:100]
    with _client(served_keras_teacher) as client:
        out = client.infer(ids, x)
    assert out.logits.dtype == np.float32 and out.logits.shape == (100, 10)
    np.testing.assert_array_equal(out.ids, ids)
    np.testing.assert_allclose(out.logits, keras_adapter.predict(x)["logits"], rtol=1e-5, atol=1e-5)
    assert out.topk_logprobs is None and out.layers == {}


def test_fp16_round_trip(served_keras_teacher, keras_adapter, digits):
    x, ids = digits["x"][100:164], digits.ids[100:164]
    with _client(served_keras_teacher, fp16=True) as client:
        out = client.infer(ids, x)
    local = keras_adapter.predict(x)["logits"]
    assert out.logits.dtype == np.float32
    np.testing.assert_allclose(out.logits, local.astype(np.float16).astype(np.float32), rtol=0, atol=0)
    assert not np.array_equal(out.logits, local)  # it really went over the wire as FP16


def test_topk_round_trip_at_temperature(served_keras_teacher, keras_adapter, digits):
    x, ids = digits["x"][:32], digits.ids[:32]
    with _client(served_keras_teacher, top_k=3, temperature=2.5) as client:
        out = client.infer(ids, x)
    assert out.logits is None and out.temperature == 2.5
    # indices travel as UINT16 (10 classes): top-3 is 3 x (4 + 2) bytes a row against 40 for dense FP32
    assert out.topk_logprobs.shape == (32, 3) and out.topk_indices.dtype == np.uint16
    logits = keras_adapter.predict(x)["logits"]
    ref_lp, ref_idx = topk_logprobs(logits, 3, 2.5)
    np.testing.assert_array_equal(out.topk_indices, ref_idx)
    np.testing.assert_allclose(out.topk_logprobs, ref_lp, atol=1e-5)
    z = logits / 2.5
    full = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    np.testing.assert_allclose(out.topk_logprobs, np.sort(full, axis=1)[:, ::-1][:, :3], atol=1e-5)
    assert np.all(np.diff(out.topk_logprobs, axis=1) <= 0)


def test_intermediate_layers_round_trip(served_keras_teacher, keras_adapter, digits):
    x, ids = digits["x"][:20], digits.ids[:20]
    with _client(served_keras_teacher, layers=["dense_0", "flatten"]) as client:
        out = client.infer(ids, x)
    local = keras_adapter.predict(x, layers=["dense_0", "flatten"])
    assert set(out.layers) == {"dense_0", "flatten"}
    np.testing.assert_allclose(out.layers["dense_0"], local["dense_0"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.layers["flatten"], x.reshape(20, -1), atol=0)
    np.testing.assert_allclose(out.logits, local["logits"], rtol=1e-5, atol=1e-5)


def test_metadata_describes_the_model_but_not_its_weights(served_keras_teacher, keras_adapter):
    with _client(served_keras_teacher) as client:
        meta = client.metadata()
    assert meta["input_shape"] == [1, 8, 8]
    assert meta["num_classes"] == 10
    assert meta["num_parameters"] == keras_adapter.num_parameters
    assert meta["size_bytes"] == keras_adapter.size_bytes
    assert meta["layers"]["dense_0"] == [-1, 64]
    assert meta["platform"].startswith("crossdistill/keras")
    assert len(json.dumps(meta)) < 2000  # shapes and counts only


def test_unknown_layer_and_wrong_shape_are_clear_errors(served_keras_teacher, digits):
    with _client(served_keras_teacher, layers=["nope"]) as client:
        with pytest.raises(TeacherError, match=r"INVALID_ARGUMENT.*layer 'nope' is not exposed by this teacher"):
            client.infer(digits.ids[:2], digits["x"][:2])
    with _client(served_keras_teacher) as client:
        with pytest.raises(TeacherError, match=r"input 'input' has shape \[2, 1, 4, 16\], expected FP32 \[B, 1, 8, 8\]"):
            client.infer(digits.ids[:2], digits["x"][:2].reshape(2, 1, 4, 16))


def test_request_without_input_tensor_is_refused(served_keras_teacher):
    pb, pb_grpc = oip_modules()
    ids = np.arange(3, dtype=np.int64)
    req = pb.ModelInferRequest(model_name=served_keras_teacher.model_name,
                               inputs=[pb.ModelInferRequest.InferInputTensor(name="ids", datatype="INT64", shape=[3])],
                               raw_input_contents=[ids.tobytes()])
    with grpc.insecure_channel(served_keras_teacher.grpc) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no input tensor 'input'" in err.value.details()


def test_rest_health_and_json_inference(served_keras_teacher, keras_adapter, digits):
    base = served_keras_teacher.http
    with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=30) as resp:
        assert resp.status == 200
    x = digits["x"][:3]
    body = {"inputs": [{"name": "input", "shape": [3, 1, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()},
                       {"name": "ids", "shape": [3], "datatype": "INT64", "data": [7, 8, 9]}],
            "parameters": {"top_k": 2}}
    req = urllib.request.Request(f"{base}/v2/models/{served_keras_teacher.model_name}/infer",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    outs = {o["name"]: o for o in answer["outputs"]}
    assert outs["ids"]["data"] == [7, 8, 9]
    _, ref_idx = topk_logprobs(keras_adapter.predict(x)["logits"], 2, 1.0)
    assert np.array(outs["topk_indices"]["data"]).reshape(3, 2).tolist() == ref_idx.tolist()
    bad = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}]}
    req = urllib.request.Request(f"{base}/v2/models/{served_keras_teacher.model_name}/infer",
                                 data=json.dumps(bad).encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400 and "no input tensor 'input'" in err.value.read().decode()


def _tiny_onnx(path) -> None:
    """A linear ONNX teacher made with onnx.helper: its server starts without TensorFlow or torch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [w, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_deploy_dispatch_and_teardown(tmp_path, digits):
    _tiny_onnx(tmp_path / "tiny.onnx")
    cfg = TeacherServeConfig(model_uri=str(tmp_path / "tiny.onnx"), name="dispatch-test", workdir=str(tmp_path),
                             workers_threads=1, ready_timeout_s=120)
    endpoint = deploy_teacher(cfg)
    try:
        assert endpoint.backend == "local" and (tmp_path / "dispatch-test.pid").exists()
        with TeacherClient(TeacherClientConfig(url=endpoint.grpc, timeout_s=30)) as client:
            assert client.metadata()["num_parameters"] == 640
            assert client.infer(digits.ids[:3], digits["x"][:3]).logits.shape == (3, 10)
    finally:
        stopped = teardown_teacher(cfg)
    assert stopped is True
    assert not (tmp_path / "dispatch-test.pid").exists()
    assert teardown_teacher(cfg) is False
    with TeacherClient(TeacherClientConfig(url=endpoint.grpc, timeout_s=2, deadline_s=2)) as client:
        with pytest.raises(TeacherUnavailableError):
            client.infer(digits.ids[:3], digits["x"][:3])


def test_deploy_of_a_broken_model_reports_the_log_tail(tmp_path):
    bogus = tmp_path / "teacher.onnx"
    bogus.write_text("not a model")
    cfg = TeacherServeConfig(model_uri=str(bogus), name="broken", workdir=str(tmp_path), ready_timeout_s=120)
    with pytest.raises(TeacherError, match=r"exited with code 1 before it was ready") as err:
        deploy(cfg)
    last = str(err.value).splitlines()[-1]
    assert last.startswith("teacher-serve failed: ModelFormatError:") and str(bogus) in last
    assert "Traceback" not in str(err.value)
    assert not (tmp_path / "broken.pid").exists()
    assert teardown(cfg) is False


def test_a_teacher_that_cannot_load_is_one_line_naming_the_file_and_tensor(tmp_path):
    import torch

    from crossdistill.teacher.adapters import TORCHSCRIPT_META

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 10))  # wants 100 features, not 64
    path = tmp_path / "mismatch.pt"
    torch.jit.save(torch.jit.script(net), str(path),
                   _extra_files={TORCHSCRIPT_META: json.dumps({"input_shape": [1, 8, 8], "num_classes": 10})})
    cfg = TeacherServeConfig(model_uri=str(path), name="mismatch", workdir=str(tmp_path), ready_timeout_s=120)
    with pytest.raises(TeacherError) as err:
        deploy(cfg)
    last = str(err.value).splitlines()[-1]
    assert last.startswith("teacher-serve failed: ModelFormatError:") and "Traceback" not in str(err.value)
    assert str(path) in last and "forward pass on 'input'" in last and "[1, 1, 8, 8]" in last
    _tiny_onnx(tmp_path / "tiny.onnx")
    cfg = TeacherServeConfig(model_uri=str(tmp_path / "tiny.onnx"), name="no-layer", workdir=str(tmp_path),
                             expose_layers=["secret"], class_names=["a", "b"], ready_timeout_s=120)
    with pytest.raises(TeacherError, match=r"expose_layers: the teacher .*tiny.onnx has no layer\(s\) \['secret'\]"):
        deploy(cfg)
    cfg = cfg.model_copy(update={"expose_layers": [], "name": "few-names"})
    with pytest.raises(TeacherError, match=r"class_names in the config has 2 class names but the model .* has 10"):
        deploy(cfg)


def test_connections_are_closed_at_max_connection_age_and_clients_carry_on(tmp_path, serve_teacher, digits):
    """max_connection_age_s: the server closes each connection after that long (so clients re-resolve a
    dns:/// pool and find new replicas); the client reconnects and every batch is answered exactly once."""
    _tiny_onnx(tmp_path / "tiny.onnx")
    endpoint = serve_teacher(tmp_path / "tiny.onnx", name="aged-teacher", max_connection_age_s=0.5)
    ready = []
    with _client(endpoint, max_in_flight=2) as client:
        client._channel.subscribe(lambda state: ready.append(state) if state == grpc.ChannelConnectivity.READY
                                  else None)
        batches = [(digits.ids[i:i + 8], digits["x"][i:i + 8], i) for i in range(0, 8 * 200, 8)]
        answered = []
        deadline = time.monotonic() + 2.5  # outlive several connection ages
        while time.monotonic() < deadline:
            answered += [(out.ids.tolist(), i) for out, i in client.stream(batches[:20])]
    assert len(ready) >= 2  # connected again after the server closed the first connection
    assert all(ids == digits.ids[i:i + 8].tolist() for ids, i in answered) and len(answered) % 20 == 0
