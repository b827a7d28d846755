"""crossdistill.storage on gs:// and s3:// against real emulators on loopback.

gs:// talks to gcp-storage-emulator (in-memory, its own thread), s3:// to moto's ThreadedMotoServer;
both are started per module and stopped after. Every store gets the same tests.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from crossdistill import storage
from crossdistill.data.shards import read_dataset, write_dataset
from crossdistill.data.sources import load_digits
from crossdistill.errors import DataError

BUCKET = "crossdistill-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs_root() -> Iterator[str]:
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    port = _free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    mp = pytest.MonkeyPatch()
    mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    try:
        yield f"gs://{BUCKET}"
    finally:
        mp.undo()
        server.stop()


@pytest.fixture(scope="module")
def s3_root() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "CROSSDISTILL_S3_ENDPOINT": endpoint}.items():
        mp.setenv(key, value)
    mp.delenv("AWS_PROFILE", raising=False)
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        mp.undo()
        server.stop()


@pytest.fixture(params=["gcs", "s3"])
def root(request: pytest.FixtureRequest) -> str:
    """A fresh prefix in the store under test."""
    base = request.getfixturevalue(f"{request.param}_root")
    return storage.join(base, f"t-{uuid.uuid4().hex[:8]}")


def test_bytes_text_exists_listdir(root: str) -> None:
    storage.write_bytes(storage.join(root, "a.bin"), b"\x00\x01\x02")
    storage.write_text(storage.join(root, "sub/b.txt"), "héllo")
    assert storage.read_bytes(storage.join(root, "a.bin")) == b"\x00\x01\x02"
    assert storage.read_text(storage.join(root, "sub/b.txt")) == "héllo"
    assert storage.exists(storage.join(root, "a.bin"))
    assert not storage.exists(storage.join(root, "nope.bin"))
    assert storage.listdir(root) == ["a.bin", "sub"]
    assert storage.listdir(storage.join(root, "missing")) == []
    storage.write_text(storage.join(root, "sub/b.txt"), "second")  # overwrite
    assert storage.read_text(storage.join(root, "sub/b.txt")) == "second"


def test_missing_object_is_a_data_error_naming_it(root: str) -> None:
    uri = storage.join(root, "absent.json")
    with pytest.raises(DataError, match="absent.json"):
        storage.read_bytes(uri)
    with pytest.raises(DataError, match="absent.json"):
        with storage.local_copy(uri):
            pass


def test_failed_write_leaves_no_object_and_keeps_the_old_one(root: str) -> None:
    fresh = storage.join(root, "fresh.bin")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_open(fresh) as fh:
            fh.write(b"half of it")
            raise RuntimeError("boom")
    assert not storage.exists(fresh)
    assert storage.listdir(root) == []

    kept = storage.join(root, "kept.txt")
    storage.write_text(kept, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_open(kept, "w") as fh:
            fh.write("new but unfinished")
            raise RuntimeError("boom")
    assert storage.read_text(kept) == "old"


def test_put_dir_and_local_copy_of_a_prefix(root: str, tmp_path) -> None:
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "one.txt").write_text("1")
    (src / "nested" / "two.bin").write_bytes(bytes(range(256)) * 64)
    storage.put_dir(src, storage.join(root, "tree"))
    storage.put_file(src / "one.txt", storage.join(root, "single.txt"))

    with storage.local_copy(storage.join(root, "tree")) as local:
        assert local.is_dir()
        assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == \
            ["nested/two.bin", "one.txt"]
        assert (local / "nested" / "two.bin").read_bytes() == bytes(range(256)) * 64
        copied = local
    assert not copied.exists()  # the temporary copy is gone after the block
    with storage.local_copy(storage.join(root, "single.txt")) as local:
        assert local.read_text() == "1"


def test_dataset_round_trip(root: str) -> None:
    digits = load_digits().take(np.arange(300))
    uri = storage.join(root, "digits")
    write_dataset(uri, digits, num_shards=3)
    assert "manifest.json" in storage.listdir(uri)
    back = read_dataset(uri)
    np.testing.assert_array_equal(back.ids, digits.ids)
    np.testing.assert_array_equal(back["x"], digits["x"])
    np.testing.assert_array_equal(back["y"], digits["y"])
    assert back.meta["num_classes"] == 10
    only_y = read_dataset(uri, columns=["y"])
    assert "x" not in only_y and len(only_y) == 300


def test_student_checkpoint_and_report(root: str) -> None:
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("crossdistill.train.models")
    report = pytest.importorskip("crossdistill.evaluate.report")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    digits = load_digits().take(np.arange(200))
    spec = models.ModelSpec(name="mlp")
    model = models.build_model(spec, (1, 8, 8), 10)
    uri = models.save_student(storage.join(root, "checkpoints/student.pt"), model, spec, (1, 8, 8), 10,
                              extra={"step": 7})
    loaded, info = models.load_student(uri)
    x = torch.from_numpy(digits["x"])
    with torch.no_grad():
        want, got = model.eval()(x), loaded(x)
    torch.testing.assert_close(got, want)
    assert info["extra"] == {"step": 7} and info["num_classes"] == 10

    accuracy = float((got.argmax(1).numpy() == digits["y"]).mean())
    metrics = {"title": "storage test", "dataset": {"uri": root, "num_classes": 10, "num_examples": 200,
                                                    "class_names": [str(i) for i in range(10)]},
               "student": {"accuracy": accuracy}}
    report_uri = report.write_report(storage.join(root, "report.html"), metrics)
    html = storage.read_text(report_uri)
    assert html.startswith("<!DOCTYPE html>") and "storage test" in html
