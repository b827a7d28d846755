"""images/images.yaml, crossdistill.images and images/build.sh (`make images`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crossdistill import images
from crossdistill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CROSSDISTILL_IMAGE"):
            monkeypatch.delenv(key)


def test_every_role_resolves_from_images_yaml() -> None:
    spec = yaml.safe_load((ROOT / "images/images.yaml").read_text())
    for role in images.ROLES:
        name = spec["images"][role]["name"]
        assert images.image_for(role) == f"{spec['registry']}/{name}:{spec['tag']}"
        assert (ROOT / spec["images"][role]["dockerfile"]).is_file()
    assert len({images.image_for(r) for r in images.ROLES}) == len(images.ROLES)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(images.ENV_REGISTRY, "registry.local:5000/me/")
    monkeypatch.setenv(images.ENV_TAG, "dev")
    assert images.image_for("student") == "registry.local:5000/me/crossdistill-student:dev"
    monkeypatch.setenv("CROSSDISTILL_IMAGE_TEACHER_TPU", "example.org/tpu@sha256:" + "0" * 64)
    assert images.image_for("teacher-tpu") == "example.org/tpu@sha256:" + "0" * 64


def test_unknown_role_and_broken_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown image role 'gpu'"):
        images.image_for("gpu")
    partial = tmp_path / "images.yaml"
    partial.write_text("registry: r\ntag: t\nimages:\n  teacher: {name: a, dockerfile: a}\n")
    with pytest.raises(ConfigError, match="images.teacher-tpu is missing"):
        images.load_images(partial)
    partial.write_text("registry: r\ntag: t\nimage: {}\n")
    with pytest.raises(ConfigError, match="unknown key 'image'"):
        images.load_images(partial)
    monkeypatch.setenv(images.ENV_FILE, str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="absent.yaml"):
        images.image_for("cpu")


def test_images_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "images.yaml"
    data = yaml.safe_load((ROOT / "images/images.yaml").read_text())
    data["tag"] = "9.9.9"
    own.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(images.ENV_FILE, str(own))
    assert images.image_for("cpu").endswith("/crossdistill-cpu:9.9.9")


def _build(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "images/build.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **env}, timeout=120)


def test_build_dry_run_lists_every_image() -> None:
    out = _build("--dry-run", "--push")
    assert out.returncode == 0, out.stderr
    for role in images.ROLES:
        image = images.image_for(role)
        assert f"docker build --file images/{role}.Dockerfile --tag {image} ." in out.stdout
        assert f"docker push {image}" in out.stdout
    only = _build("--dry-run", "student")
    assert only.stdout.count(" build ") == 1 and "student.Dockerfile" in only.stdout


def test_build_says_clearly_when_no_engine_answers() -> None:
    out = _build(CONTAINER_ENGINE="crossdistill-no-such-engine")
    assert out.returncode == 3
    assert "no container engine answers" in out.stderr and out.stdout == ""


def test_build_rejects_an_unknown_role() -> None:
    out = _build("--dry-run", "gpu")
    assert out.returncode == 2 and "no image matches roles: gpu" in out.stderr


def test_module_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "crossdistill.images", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == images.image_for("cpu")
    out = subprocess.run([sys.executable, "-m", "crossdistill.images", "nope"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown image role" in out.stderr
