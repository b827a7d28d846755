"""Real datasets that install offline: scikit-learn's digits (embedded) and Fashion-MNIST IDX files.

Images come out as float32 ``(N, 1, H, W)`` in [0, 1] (PyTorch's channel-first layout); ids are the
example's index in the source (Fashion-MNIST test images continue after the 60,000 training ones),
so an id means the same image wherever it travels.
"""

from __future__ import annotations

import gzip
import struct

import numpy as np

from crossdistill import storage
from crossdistill.data.shards import Dataset
from crossdistill.errors import DataError

FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load_digits() -> Dataset:
    """The 1,797 8x8 digits that ship inside scikit-learn."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return Dataset(
        {"id": np.arange(len(x), dtype=np.int64), "x": x, "y": bunch.target.astype(np.int64)},
        {"name": "digits", "num_classes": 10, "class_names": [str(i) for i in range(10)]},
    )


def read_idx(uri: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped) from any URI into a numpy array."""
    raw = storage.read_bytes(uri)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise DataError(f"{uri}: corrupt gzip stream: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{uri}: not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise DataError(f"{uri}: unknown IDX element type 0x{dtype_code:02x}")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims)) * np.dtype(dtypes[dtype_code]).itemsize
    if len(raw) - header != expected:
        raise DataError(f"{uri}: IDX header says shape {dims} ({expected} bytes), file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtypes[dtype_code], offset=header).reshape(dims)


def load_fashion_mnist(root: str = FASHION_MNIST_DEBIAN) -> Dataset:
    """Fashion-MNIST (70,000 28x28 images): Debian's ``dataset-fashion-mnist`` or the same files at any URI."""
    parts = []
    offset = 0
    for prefix in ("train", "t10k"):
        imgs_uri = _find(root, f"{prefix}-images-idx3-ubyte")
        labels_uri = _find(root, f"{prefix}-labels-idx1-ubyte")
        imgs, labels = read_idx(imgs_uri), read_idx(labels_uri)
        if len(imgs) != len(labels):
            raise DataError(f"{imgs_uri} has {len(imgs)} images but {labels_uri} has {len(labels)} labels")
        parts.append((imgs, labels, np.arange(offset, offset + len(imgs), dtype=np.int64)))
        offset += len(imgs)
    x = np.concatenate([p[0] for p in parts]).astype(np.float32)[:, None] / 255.0
    return Dataset(
        {"id": np.concatenate([p[2] for p in parts]), "x": x,
         "y": np.concatenate([p[1] for p in parts]).astype(np.int64)},
        {"name": "fashion-mnist", "num_classes": 10, "class_names": FASHION_CLASSES,
         "official_test_from_id": int(len(parts[0][0]))},
    )


def _find(root: str, stem: str) -> str:
    for suffix in (".gz", ""):
        uri = storage.join(root, stem + suffix)
        if storage.exists(uri):
            return uri
    hint = " (apt-get install dataset-fashion-mnist)" if root == FASHION_MNIST_DEBIAN else ""
    raise DataError(f"{root}: neither {stem}.gz nor {stem} found{hint}")


def load_source(name: str, root: str | None = None) -> Dataset:
    if name == "digits":
        return load_digits()
    if name in ("fashion-mnist", "fashion_mnist"):
        return load_fashion_mnist(root or FASHION_MNIST_DEBIAN)
    raise DataError(f"unknown dataset '{name}' (known: digits, fashion-mnist)")
