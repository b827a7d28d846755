"""Container image references, read from ``images/images.yaml`` (the one place names and tags live).

``image_for(role)`` gives the full reference for ``teacher``, ``teacher-tpu``, ``student`` or ``cpu``.
The file is looked up as ``$CROSSDISTILL_IMAGES_FILE``, then as package data (``crossdistill/image_files/images.yaml``
in an installed wheel), then in the source checkout (``<repo>/images/images.yaml``). The images set
``CROSSDISTILL_IMAGES_FILE`` themselves, so code inside a container resolves the same references.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

import yaml
from pydantic import Field

from crossdistill.config import StrictConfig
from crossdistill.errors import ConfigError

ROLES = ("teacher", "teacher-tpu", "student", "cpu")
ENV_FILE = "CROSSDISTILL_IMAGES_FILE"
ENV_REGISTRY = "CROSSDISTILL_IMAGE_REGISTRY"
ENV_TAG = "CROSSDISTILL_IMAGE_TAG"


class ImageSpec(StrictConfig):
    name: str = Field(..., pattern=r"^[a-z0-9]+([._-][a-z0-9]+)*$")
    dockerfile: str
    description: str = ""


class ImagesFile(StrictConfig):
    """The schema of ``images/images.yaml``."""

    registry: str = Field(..., min_length=1)
    tag: str = Field(..., pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    images: dict[str, ImageSpec]


def images_file() -> Path:
    """Where ``images.yaml`` is read from (see the module docstring for the order)."""
    env = os.environ.get(ENV_FILE)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"{ENV_FILE}={env}: no such file (expected an images.yaml)")
        return path
    try:
        packaged = resources.files("crossdistill.image_files").joinpath("images.yaml")
    except ModuleNotFoundError:  # an editable install made before images.yaml was package data
        packaged = None
    if packaged is not None and packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "images" / "images.yaml"
    if checkout.is_file():
        return checkout
    raise ConfigError(f"images.yaml not found: set {ENV_FILE}, install crossdistill with its package data, "
                      f"or run from a checkout that has {checkout}")


def load_images(path: str | Path | None = None) -> ImagesFile:
    """Parse and validate ``images.yaml``; every role in ROLES must be present."""
    path = Path(path) if path else images_file()
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    spec = ImagesFile.parse(data, source=str(path))
    missing = [r for r in ROLES if r not in spec.images]
    if missing:
        raise ConfigError(f"{path}: images.{missing[0]} is missing (expected roles {', '.join(ROLES)})")
    return spec


def _role_env(role: str) -> str:
    return "CROSSDISTILL_IMAGE_" + role.upper().replace("-", "_")


def image_for(role: str, spec: ImagesFile | None = None) -> str:
    """The full image reference (``registry/name:tag``) for ``role``, after environment overrides."""
    if role not in ROLES:
        raise ConfigError(f"unknown image role '{role}' (expected one of {', '.join(ROLES)})")
    override = os.environ.get(_role_env(role))
    if override:
        return override
    spec = spec or load_images()
    registry = os.environ.get(ENV_REGISTRY) or spec.registry
    tag = os.environ.get(ENV_TAG) or spec.tag
    return f"{registry.rstrip('/')}/{spec.images[role].name}:{tag}"


def kustomize_images(spec: ImagesFile | None = None) -> list[dict[str, str]]:
    """The ``images:`` entries of manifests/base/kustomization.yaml that images.yaml implies.

    Manifests name images by their bare name (e.g. ``crossdistill-teacher``); kustomize rewrites them.
    """
    spec = spec or load_images()
    return [{"name": spec.images[r].name, "newName": f"{spec.registry.rstrip('/')}/{spec.images[r].name}",
             "newTag": spec.tag} for r in ROLES]


def main(argv: list[str] | None = None) -> int:
    """``python -m crossdistill.images [list|kustomize|ROLE]``: used by images/build.sh."""
    parser = argparse.ArgumentParser(prog="python -m crossdistill.images", description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="list",
                        help="list (role, image, dockerfile per line), kustomize (YAML images block) or a role")
    args = parser.parse_args(argv)
    try:
        spec = load_images()
        if args.what == "list":
            for role in ROLES:
                print(f"{role}\t{image_for(role, spec)}\t{spec.images[role].dockerfile}")
        elif args.what == "kustomize":
            print("images:")
            for entry in kustomize_images(spec):
                print(f"  - name: {entry['name']}\n    newName: {entry['newName']}\n    newTag: \"{entry['newTag']}\"")
        else:
            print(image_for(args.what, spec))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
