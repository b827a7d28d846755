"""Object storage through fsspec: file://, plain paths, memory://, gs://, s3:// (MinIO via an endpoint).

Credentials come from the environment (or Workload Identity on GKE), never from code or config:
``AWS_ENDPOINT_URL``/``AWS_ACCESS_KEY_ID``/... for s3fs, ``STORAGE_EMULATOR_HOST`` or ADC for gcsfs.
Every write is atomic: a local file is written beside its target and renamed; an object store gets one
single put of a finished local file, so a crash never leaves an object that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from crossdistill.errors import DataError


def _storage_options(uri: str) -> dict[str, Any]:
    proto = protocol_of(uri)
    if proto == "s3":
        endpoint = os.environ.get("CROSSDISTILL_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        return {"endpoint_url": endpoint} if endpoint else {}
    if proto in ("gs", "gcs"):
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:
            # An emulator speaks JSON only; anonymous credentials.
            return {"endpoint_url": emulator if "://" in emulator else f"http://{emulator}", "token": "anon"}
    return {}


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def is_local(uri: str) -> bool:
    return protocol_of(uri) in ("file", "local")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    options = _storage_options(uri)
    if protocol_of(uri) in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
        # gcsfs's default class first asks the gRPC Storage Control API for the bucket type (zonal /
        # hierarchical), which an emulator lacks: ~60 s of retries per bucket before it falls back.
        # The plain JSON-API class never asks.
        from gcsfs.core import GCSFileSystem

        fs = GCSFileSystem(**options)
        return fs, fs._strip_protocol(uri)
    fs, path = url_to_fs(uri, **options)
    return fs, path


def join(uri: str, *parts: str) -> str:
    base = uri.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts if p)])


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    if is_local(uri):
        fs.makedirs(path, exist_ok=True)


def listdir(uri: str) -> list[str]:
    """Base names under ``uri`` (empty when it does not exist)."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(f"{uri}: no such file or object") from None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


@contextlib.contextmanager
def atomic_open(uri: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``uri`` for writing so readers see either the old object or the finished new one."""
    if mode not in ("wb", "w"):
        raise ValueError("atomic_open writes only ('wb' or 'w')")
    fs, path = filesystem(uri)
    if is_local(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with tempfile.NamedTemporaryFile(mode, delete=False, suffix=".part") as fh:
        tmp = fh.name
    try:
        with open(tmp, mode) as fh:
            yield fh
        fs.put_file(tmp, path)  # one single-object put: atomic on GCS, S3 and MinIO
    finally:
        os.unlink(tmp)


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_open(uri, "wb") as fh:
        fh.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def put_file(local: str | Path, uri: str) -> None:
    """Copy a finished local file to ``uri`` atomically."""
    with open(local, "rb") as src, atomic_open(uri, "wb") as dst:
        shutil.copyfileobj(src, dst, length=8 << 20)


def put_dir(local: str | Path, uri: str) -> None:
    """Copy a local directory tree to ``uri`` file by file (each file atomically)."""
    local = Path(local)
    for item in sorted(local.rglob("*")):
        if item.is_file():
            put_file(item, join(uri, item.relative_to(local).as_posix()))


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path holding ``uri`` (file or directory): the path itself when local, else a temp copy."""
    fs, path = filesystem(uri)
    if is_local(uri):
        if not os.path.exists(path):
            raise DataError(f"{uri}: no such file or directory")
        yield Path(path)
        return
    if not fs.exists(path):
        raise DataError(f"{uri}: no such object or prefix")
    tmpdir = Path(tempfile.mkdtemp(prefix="crossdistill-"))
    try:
        target = tmpdir / path.rstrip("/").rsplit("/", 1)[-1]
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(target) + "/", recursive=True)
        else:
            fs.get_file(path, str(target))
        yield target
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
