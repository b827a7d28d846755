"""The kubernetes and kserve teacher backends.

``deploy``/``teardown`` talk HTTP to the API server stand-in of ``k8s_stand_in`` on loopback, which plays
the controller's part by reporting readiness; the real ``kubernetes`` client does every request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from crossdistill.deploy import kserve, kubernetes
from crossdistill.deploy.config import TeacherServeConfig, TeacherTeardownConfig
from crossdistill.errors import ConfigError, TeacherError, TeacherUnavailableError
from crossdistill.images import image_for
from k8s_stand_in import FakeApiServer, serving

pytest.importorskip("kubernetes")


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with serving() as server:
        yield server


def _cfg(**extra: Any) -> TeacherServeConfig:
    return TeacherServeConfig.parse({"model_uri": "gs://models/teacher.keras", "name": "t1", "namespace": "ns1",
                                     "ready_timeout_s": 20, **extra})


def test_kubernetes_deploy_applies_built_objects_and_waits(api: FakeApiServer) -> None:
    cfg = _cfg(node_selector={"pool": "teachers"})
    endpoint = kubernetes.deploy(cfg, client=api.client())
    assert endpoint.grpc == "t1.ns1.svc.cluster.local:8081"
    assert endpoint.http == "http://t1.ns1.svc.cluster.local:8080"
    assert (endpoint.backend, endpoint.namespace, endpoint.model_name) == ("kubernetes", "ns1", "teacher")
    patches = api.sent("PATCH")
    assert [p["path"] for p in patches] == ["/apis/apps/v1/namespaces/ns1/deployments/t1",
                                            "/api/v1/namespaces/ns1/services/t1"]
    assert [p["body"] for p in patches] == kubernetes.build_objects(cfg)
    for p in patches:
        assert p["content_type"] == "application/apply-patch+yaml"
        assert p["query"] == {"fieldManager": ["crossdistill"], "force": ["true"]}
    assert api.gets["/apis/apps/v1/namespaces/ns1/deployments/t1"] >= 2  # it waited for readiness

    kubernetes.deploy(cfg, client=api.client())  # idempotent: applying again is an update
    assert api.objects["/apis/apps/v1/namespaces/ns1/deployments/t1"]["metadata"]["generation"] == 2


def test_kubernetes_deploy_times_out_with_the_reason(api: FakeApiServer) -> None:
    api.ready_after = None
    with pytest.raises(TeacherUnavailableError) as info:
        kubernetes.deploy(_cfg(ready_timeout_s=0.3), client=api.client())
    message = str(info.value)
    assert "ns1/t1" in message and "ready_timeout_s=0.3" in message and "ImagePullBackOff" in message


def test_kubernetes_teardown_is_idempotent(api: FakeApiServer) -> None:
    cfg = _cfg()
    kubernetes.deploy(cfg, client=api.client())
    kubernetes.teardown(cfg, client=api.client())
    assert api.objects == {}
    assert {r["path"] for r in api.sent("DELETE")} == {"/apis/apps/v1/namespaces/ns1/deployments/t1",
                                                       "/api/v1/namespaces/ns1/services/t1"}
    kubernetes.teardown(cfg, client=api.client())  # nothing left: still fine


def test_kserve_deploy_and_teardown(api: FakeApiServer) -> None:
    cfg = _cfg(backend="kserve")
    endpoint = kserve.deploy(cfg, client=api.client())
    assert endpoint.grpc == "t1-predictor.ns1.svc.cluster.local:8081"
    assert endpoint.http == "http://t1-predictor.ns1.svc.cluster.local"
    assert endpoint.backend == "kserve"
    (patch,) = api.sent("PATCH")
    assert patch["path"] == "/apis/serving.kserve.io/v1beta1/namespaces/ns1/inferenceservices/t1"
    assert patch["body"] == kserve.build_objects(cfg)[0]
    kserve.teardown(cfg, client=api.client())
    kserve.teardown(cfg, client=api.client())
    assert api.objects == {}


def test_kserve_pool_deploys_and_tears_down_its_headless_service(api: FakeApiServer) -> None:
    cfg = _cfg(backend="kserve", replicas=2, max_replicas=4)
    endpoint = kserve.deploy(cfg, client=api.client())
    assert endpoint.grpc == "dns:///t1-pool.ns1.svc.cluster.local:8081"
    assert [p["path"] for p in api.sent("PATCH")] == [
        "/apis/serving.kserve.io/v1beta1/namespaces/ns1/inferenceservices/t1", "/api/v1/namespaces/ns1/services/t1-pool"]
    kserve.teardown(TeacherTeardownConfig(name="t1", namespace="ns1", backend="kserve"), client=api.client())
    assert api.objects == {}


def test_forbidden_names_the_object_and_rbac(api: FakeApiServer) -> None:
    api.deny = True
    with pytest.raises(TeacherError, match=r"Deployment ns1/t1.*HTTP 403.*Role/RoleBinding"):
        kubernetes.deploy(_cfg(), client=api.client())


def test_unreachable_api_server() -> None:
    server = FakeApiServer()  # bound, never serving: connections are refused once closed
    client = server.client()
    server.httpd.server_close()
    client.configuration.retries = 0
    with pytest.raises(TeacherUnavailableError, match="did not answer"):
        kubernetes.teardown(_cfg(), client=client)


# --- the objects themselves --------------------------------------------------------------------------

def test_deployment_and_service_fit_together() -> None:
    cfg = _cfg(resources={"cpu": "1", "memory": "2Gi", "accelerator_type": "nvidia.com/gpu", "accelerator_count": 1},
               tolerations=[{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}],
               output_is_probs=True, model_name="yes")
    deployment, service = kubernetes.build_objects(cfg)
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    assert pod_labels[kubernetes.ROLE_LABEL] == kubernetes.TEACHER_ROLE  # what the NetworkPolicy admits to
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (container,) = template["spec"]["containers"]
    assert container["image"] == image_for("teacher")
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080, "grpc": 8081}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8080, "grpc": 8081}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/models/yes/ready", "port": "http"}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 20
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "1"}
    assert template["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                                                "effect": "NoSchedule"}]
    args = container["args"]
    assert args[:2] == ["--config", "/dev/null"]
    assert "model_uri=gs://models/teacher.keras" in args and "output_is_probs=true" in args
    assert 'model_name="yes"' in args  # quoted, or the server's YAML parse would read a boolean
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "serviceAccountName" not in template["spec"]


def test_image_override_and_bad_placement() -> None:
    assert kubernetes.build_objects(_cfg(image="registry.local/t:1"))[0]["spec"]["template"]["spec"][
        "containers"][0]["image"] == "registry.local/t:1"
    with pytest.raises(ConfigError, match="accelerator_count"):
        kubernetes.build_objects(_cfg(resources={"accelerator_type": "nvidia.com/gpu"}))
    with pytest.raises(ConfigError, match="needs a value"):
        kubernetes.build_objects(_cfg(tolerations=[{"key": "k", "operator": "Equal"}]))


def test_kserve_isvc_uses_the_runtime_and_raw_mode() -> None:
    (isvc,) = kserve.build_objects(_cfg())
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = isvc["spec"]["predictor"]
    assert predictor["labels"][kubernetes.ROLE_LABEL] == kubernetes.TEACHER_ROLE
    model = predictor["model"]
    assert (model["runtime"], model["modelFormat"], model["protocolVersion"]) == \
        (kserve.RUNTIME, {"name": kserve.MODEL_FORMAT}, "v2")
    # KServe appends these to the runtime's args: overrides only, no second --config.
    assert all("=" in a and not a.startswith("-") for a in model["args"])
    assert kserve.schema_errors(isvc) == []


# --- secrets, probes and teardown -------------------------------------------------------------------

def test_token_and_tls_come_from_mounted_secrets_never_values() -> None:
    cfg = _cfg(auth_secret="teacher-token", tls_secret="teacher-tls",
               tls={"cert_file": "tls.crt", "key_file": "tls.key", "client_ca_file": "ca.crt"},
               expose_layers=["dense_0"], class_names=[str(i) for i in range(10)], max_message_bytes=8 << 20)
    deployment, _ = kubernetes.build_objects(cfg)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"name": "auth", "secret": {"secretName": "teacher-token", "defaultMode": 0o440}} in pod["volumes"]
    assert {"name": "tls", "secret": {"secretName": "teacher-tls", "defaultMode": 0o440}} in pod["volumes"]
    assert {"name": "auth", "mountPath": kubernetes.AUTH_MOUNT, "readOnly": True} in container["volumeMounts"]
    assert {"name": "tls", "mountPath": kubernetes.TLS_MOUNT, "readOnly": True} in container["volumeMounts"]
    args = container["args"]
    assert f"auth.token_file={kubernetes.AUTH_MOUNT}/token" in args
    assert f"tls.cert_file={kubernetes.TLS_MOUNT}/tls.crt" in args
    assert f"tls.client_ca_file={kubernetes.TLS_MOUNT}/ca.crt" in args
    assert 'expose_layers=["dense_0"]' in args and "max_message_bytes=8388608" in args
    # The server parses these overrides back into the same settings.
    from crossdistill.config import parse_overrides

    parsed = parse_overrides(args[2:])
    assert parsed["expose_layers"] == ["dense_0"] and parsed["class_names"] == [str(i) for i in range(10)]
    assert parsed["tls"]["key_file"] == f"{kubernetes.TLS_MOUNT}/tls.key"
    assert parsed["max_connection_age_s"] == 300.0  # pods close connections so clients re-resolve the pool
    kept = parse_overrides(kubernetes.container(_cfg(max_connection_age_s=None))["args"][2:])
    assert kept["max_connection_age_s"] is None and TeacherServeConfig.model_validate(
        {"model_uri": "m.keras", **kept}).max_connection_age_s is None
    # Mutual TLS: kubelet has no client certificate, so the probes only open a TCP connection.
    assert container["readinessProbe"]["tcpSocket"] == {"port": "http"}
    assert not [v for v in pod["volumes"] if "secret" in v and set(v["secret"]) != {"secretName", "defaultMode"}]
    (isvc,) = kserve.build_objects(cfg)
    predictor = isvc["spec"]["predictor"]
    assert predictor["volumes"] == pod["volumes"] and predictor["model"]["volumeMounts"] == container["volumeMounts"]
    assert f"auth.token_file={kubernetes.AUTH_MOUNT}/token" in predictor["model"]["args"]
    assert kserve.schema_errors(isvc) == []


def test_probes_follow_token_and_tls() -> None:
    plain = kubernetes.container(_cfg())
    assert plain["readinessProbe"]["httpGet"] == {"path": "/v2/models/teacher/ready", "port": "http"}
    token = kubernetes.container(_cfg(auth_secret="s", auth={"token_file": "key"}))
    assert token["readinessProbe"]["httpGet"] == {"path": kubernetes.LIVE_PATH, "port": "http"}  # the open path
    assert f"auth.token_file={kubernetes.AUTH_MOUNT}/key" in token["args"]
    tls = kubernetes.container(_cfg(tls_secret="t"))
    assert tls["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert f"tls.cert_file={kubernetes.TLS_MOUNT}/tls.crt" in tls["args"]


def test_token_or_tls_files_without_a_secret_are_refused() -> None:
    with pytest.raises(ConfigError, match="auth.token_file needs auth_secret"):
        kubernetes.build_objects(_cfg(auth={"token_file": "/home/me/token"}))
    with pytest.raises(ConfigError, match="tls needs tls_secret"):
        kserve.build_objects(_cfg(tls={"cert_file": "/a.pem", "key_file": "/a.key"}))


def test_teardown_needs_only_the_name(api: FakeApiServer) -> None:
    from crossdistill.deploy.config import TeacherTeardownConfig
    from crossdistill.deploy.serve import teardown_teacher

    kubernetes.deploy(_cfg(), client=api.client())
    kubernetes.teardown(TeacherTeardownConfig(name="t1", namespace="ns1", backend="kubernetes"), client=api.client())
    assert api.objects == {}
    kserve.deploy(_cfg(backend="kserve"), client=api.client())
    kserve.teardown(TeacherTeardownConfig(name="t1", namespace="ns1", backend="kserve"), client=api.client())
    assert api.objects == {}
    with pytest.raises(ConfigError, match="unknown key 'model_uri'"):
        TeacherTeardownConfig.parse({"name": "t1", "model_uri": "x"})
    assert teardown_teacher(TeacherTeardownConfig(name="nothing-here", workdir="/nonexistent")) is False
