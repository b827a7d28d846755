"""The served teacher across a trust boundary: token, TLS, mutual TLS, least exposure, the layer allow-list.

Real server processes on loopback (the local backend), real certificates made here with
``cryptography``: a test CA, a server certificate for 127.0.0.1/127.0.0.2/localhost and a client
certificate, both signed by it.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from crossdistill.errors import ConfigError, TeacherError
from crossdistill.teacher.adapters import load_teacher
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig, oip_modules
from crossdistill.teacher.serve_config import resolve_class_names
from crossdistill.teacher.transport import ClientTLS

TOKEN = "s3cret-token-for-tests"
CLASSES = [f"class-{i}" for i in range(10)]
TIMEOUT = 30


# ------------------------------------------------------------------------------------------ fixtures

def _certificates(folder: Path) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    paths: dict[str, str] = {}

    def write(name: str, key: Any, cert: Any) -> None:
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        paths[name], paths[f"{name}_key"] = str(folder / f"{name}.pem"), str(folder / f"{name}.key")

    def issue(name: str, issuer: Any, issuer_key: Any, *, ca: bool = False, usage: Any = None,
              san: list[Any] | None = None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    ca_key, ca_cert = issue("crossdistill test CA", None, None, ca=True)
    write("ca", ca_key, ca_cert)
    server = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
              x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]
    write("server", *issue("teacher", ca_cert.subject, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH, san=server))
    write("client", *issue("student", ca_cert.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    other_key, other_cert = issue("someone else's CA", None, None, ca=True)
    write("other_ca", other_key, other_cert)
    return paths


def _tiny_onnx(path: Path) -> None:
    """input [N,1,8,8] -> flat -> hidden (16, ReLU) -> logits (10): two layers, one of them to expose."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(64, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(16, 10)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w1"], ["pre"]), helper.make_node("Relu", ["pre"], ["hidden"]),
             helper.make_node("MatMul", ["hidden", "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture(scope="module")
def secure(tmp_path_factory, serve_teacher) -> dict[str, Any]:
    """Two servers of one ONNX teacher: token + TLS (layer 'hidden' exposed) and token + mutual TLS
    (metrics on, bound to 127.0.0.2 only); class names from the file next to the model."""
    root = tmp_path_factory.mktemp("secure")
    pki = _certificates(root)
    model = root / "tiny.onnx"
    _tiny_onnx(model)
    (root / "tiny.onnx.class_names.json").write_text(json.dumps(CLASSES))
    token = root / "token"
    token.write_text(TOKEN + "\n")
    tls = {"cert_file": pki["server"], "key_file": pki["server_key"]}
    common = {"auth": {"token_file": str(token)}, "max_message_bytes": 8 << 20}
    return {
        "pki": pki, "token": str(token), "model": str(model), "root": root,
        "tls": serve_teacher(model, name="tls-teacher", tls=tls, expose_layers=["hidden"], **common),
        "mtls": serve_teacher(model, name="mtls-teacher", host="127.0.0.2", metrics=True,
                              tls={**tls, "client_ca_file": pki["ca"]}, **common),
    }


def _client(endpoint: Any, secure: dict[str, Any], *, token: str | None = "right", mutual: bool = False,
            **kw: Any) -> TeacherClient:
    pki = secure["pki"]
    token_file = secure["token"]
    if token == "wrong":
        token_file = str(secure["root"] / "wrong-token")
        Path(token_file).write_text("not-the-token")
    tls = ClientTLS(ca_file=pki["ca"], **({"cert_file": pki["client"], "key_file": pki["client_key"]} if mutual else {}))
    options = {"timeout_s": TIMEOUT, "deadline_s": TIMEOUT, **kw}
    return TeacherClient(TeacherClientConfig(url=endpoint.grpc, model_name=endpoint.model_name,
                                             token_file=token_file if token else None, tls=tls, **options))


def _context(secure: dict[str, Any], mutual: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=secure["pki"]["ca"])
    if mutual:
        ctx.load_cert_chain(secure["pki"]["client"], secure["pki"]["client_key"])
    return ctx


def _rest(url: str, ctx: ssl.SSLContext | None, token: str | None = TOKEN, body: dict | None = None,
          method: str | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers,
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT, context=ctx) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _infer_body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


# ------------------------------------------------------------------------------------------ token

def test_grpc_calls_without_or_with_a_wrong_token_are_refused(secure, digits):
    for token in (None, "wrong"):
        with _client(secure["tls"], secure, token=token) as client:
            with pytest.raises(TeacherError, match="UNAUTHENTICATED.*bearer token"):
                client.metadata()
            with pytest.raises(TeacherError, match="UNAUTHENTICATED"):
                client.infer(digits.ids[:2], digits["x"][:2])
    pb, pb_grpc = oip_modules()
    creds = grpc.ssl_channel_credentials(Path(secure["pki"]["ca"]).read_bytes())
    with grpc.secure_channel(secure["tls"].grpc, creds) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, request in ((stub.ServerReady, pb.ServerReadyRequest()), (stub.ServerLive, pb.ServerLiveRequest()),
                              (stub.ModelReady, pb.ModelReadyRequest(name="teacher"))):
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=TIMEOUT)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=TIMEOUT, metadata=(("authorization", "Bearer " + TOKEN[:-1]),))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT,
                                metadata=(("authorization", "Bearer " + TOKEN),)).ready


def test_rest_calls_without_or_with_a_wrong_token_are_refused(secure, digits):
    base, ctx = secure["tls"].http, _context(secure)
    assert base.startswith("https://")
    body = _infer_body(digits["x"][:2])
    for token in (None, "wrong", TOKEN + "x", ""):
        for path, payload in (("/v2/health/ready", None), ("/v2/models/teacher", None),
                              ("/v2/models/teacher/ready", None), ("/v2/models/teacher/infer", body)):
            status, text = _rest(base + path, ctx, token=token, body=payload)
            assert status == 401 and "bearer token" in text, (token, path, status, text)
    assert _rest(base + "/v2/health/live", ctx, token=None) == (200, '{"live":true}')  # the probes' open path
    assert _rest(base + "/v2/health/ready", ctx)[0] == 200


# ------------------------------------------------------------------------------------------ TLS

def test_plain_text_to_a_tls_server_is_refused(secure, digits):
    endpoint = secure["tls"]
    with TeacherClient(TeacherClientConfig(url=endpoint.grpc, token_file=secure["token"], timeout_s=5,
                                           deadline_s=5)) as client:
        with pytest.raises(TeacherError, match="UNAVAILABLE"):
            client.metadata()
    plain = endpoint.http.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        _rest(plain + "/v2/health/ready", None)
    # A certificate from a CA the client does not trust is refused too.
    other = TeacherClientConfig(url=endpoint.grpc, token_file=secure["token"], timeout_s=5, deadline_s=5,
                                tls=ClientTLS(ca_file=secure["pki"]["other_ca"]))
    with TeacherClient(other) as client:
        with pytest.raises(TeacherError, match="UNAVAILABLE"):
            client.metadata()


def test_tls_round_trip_with_token(secure, digits):
    x, ids = digits["x"][:50], digits.ids[:50]
    local = load_teacher(secure["model"]).predict(x)["logits"]
    with _client(secure["tls"], secure) as client:
        out = client.infer(ids, x)
    np.testing.assert_array_equal(out.ids, ids)
    np.testing.assert_allclose(out.logits, local, rtol=1e-5, atol=1e-5)
    status, text = _rest(secure["tls"].http + "/v2/models/teacher/infer", _context(secure), body=_infer_body(x[:3]))
    assert status == 200
    logits = next(o for o in json.loads(text)["outputs"] if o["name"] == "logits")
    np.testing.assert_allclose(np.array(logits["data"]).reshape(3, 10), local[:3], rtol=1e-5, atol=1e-5)


def test_mutual_tls(secure, digits):
    x, ids = digits["x"][:20], digits.ids[:20]
    local = load_teacher(secure["model"]).predict(x)["logits"]
    endpoint = secure["mtls"]
    with _client(endpoint, secure, mutual=False, timeout_s=5, deadline_s=5) as client:  # no client certificate
        with pytest.raises(TeacherError):
            client.metadata()
    with _client(endpoint, secure, mutual=True) as client:
        np.testing.assert_allclose(client.infer(ids, x).logits, local, rtol=1e-5, atol=1e-5)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        _rest(endpoint.http + "/v2/health/ready", _context(secure, mutual=False))
    assert _rest(endpoint.http + "/v2/health/ready", _context(secure, mutual=True))[0] == 200


def test_server_binds_only_the_configured_host(secure):
    endpoint = secure["mtls"]  # host=127.0.0.2
    assert endpoint.grpc.startswith("127.0.0.2:")
    for port in (int(endpoint.grpc.rsplit(":", 1)[1]), int(endpoint.http.rsplit(":", 1)[1])):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        socket.create_connection(("127.0.0.2", port), timeout=TIMEOUT).close()


# ------------------------------------------------------------------------------------------ exposure

def test_no_model_repository_no_docs_no_metrics_by_default(secure):
    base, ctx = secure["tls"].http, _context(secure)
    for path in ("/v2/repository/models/teacher/unload", "/v2/repository/models/teacher/load"):
        assert _rest(base + path, ctx, body={})[0] in (404, 405)
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics", "/v2/repository/index", "/v1/models/teacher"):
        assert _rest(base + path, ctx)[0] in (404, 405), path
    pb, pb_grpc = oip_modules()
    creds = grpc.ssl_channel_credentials(Path(secure["pki"]["ca"]).read_bytes())
    auth = (("authorization", "Bearer " + TOKEN),)
    with grpc.secure_channel(secure["tls"].grpc, creds) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, request in ((stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="teacher")),
                              (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="teacher"))):
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=TIMEOUT, metadata=auth)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert stub.ModelReady(pb.ModelReadyRequest(name="teacher"), timeout=TIMEOUT, metadata=auth).ready
    status, text = _rest(secure["mtls"].http + "/metrics", _context(secure, mutual=True))  # metrics=True there
    assert status == 200 and "# TYPE" in text


def test_layers_outside_the_allow_list_are_refused_and_not_listed(secure, digits):
    x, ids = digits["x"][:8], digits.ids[:8]
    with _client(secure["tls"], secure) as client:
        meta = client.metadata()
    assert meta["layers"] == {"hidden": [-1, 16]}  # not 'flat' or 'pre'
    for layer in ("flat", "pre", "logits", "nope"):
        with _client(secure["tls"], secure, layers=[layer]) as client:
            with pytest.raises(TeacherError, match=f"INVALID_ARGUMENT.*layer '{layer}' is not exposed by this teacher"):
                client.infer(ids, x)
    with _client(secure["tls"], secure, layers=["hidden"]) as client:
        out = client.infer(ids, x)
    local = load_teacher(secure["model"]).predict(x, layers=["hidden"])
    np.testing.assert_allclose(out.layers["hidden"], local["hidden"], rtol=1e-5, atol=1e-5)
    with _client(secure["mtls"], secure, mutual=True, layers=["hidden"]) as client:  # exposes nothing
        assert client.metadata()["layers"] == {}
        with pytest.raises(TeacherError, match="layer 'hidden' is not exposed"):
            client.infer(ids, x)


def test_metadata_carries_class_names_and_message_limit(secure):
    with _client(secure["tls"], secure) as client:
        meta = client.metadata()
    assert meta["class_names"] == CLASSES
    assert meta["max_message_bytes"] == 8 << 20
    assert meta["num_classes"] == 10 and meta["input_shape"] == [1, 8, 8]


def test_class_names_are_checked(tmp_path):
    model = tmp_path / "m.onnx"
    _tiny_onnx(model)
    assert resolve_class_names(str(model), None, 10) is None
    (tmp_path / "m.onnx.class_names.json").write_text(json.dumps(CLASSES[:9]))
    with pytest.raises(ConfigError, match=r"m.onnx.class_names.json has 9 class names but the model .* has 10"):
        resolve_class_names(str(model), None, 10)
    assert resolve_class_names(str(model), CLASSES, 10) == CLASSES  # the config wins over the file
    with pytest.raises(ConfigError, match="unique, repeated: \\['a'\\]"):
        resolve_class_names(str(model), ["a", "a", *CLASSES[2:]], 10)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "class_names.json").write_text(json.dumps(["x", "y"]))
    assert resolve_class_names(str(saved), None, 2) == ["x", "y"]
