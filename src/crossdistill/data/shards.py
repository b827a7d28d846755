"""Sharded datasets: ``<uri>/shard-00000-of-00004.parquet`` ... plus ``<uri>/manifest.json``.

Every column is a numpy array whose first axis is the example; extra axes are flattened into a
fixed-size Parquet list and restored from the shapes recorded in the manifest. The manifest is
written last and lists each shard with its row count and SHA-256, so a reader knows a dataset is
complete and names the shard that is missing or corrupt.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossdistill import storage
from crossdistill.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "crossdistill.dataset/v1"
UNLABELED = -1


@dataclass
class Dataset:
    """Columns of equal length (``id`` always present) and free-form metadata."""

    columns: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "id" not in self.columns:
            raise DataError("a dataset needs an 'id' column (a stable int64 id per example)")
        n = len(self.columns["id"])
        for name, col in self.columns.items():
            if len(col) != n:
                raise DataError(f"column '{name}' has {len(col)} rows, expected {n} like 'id'")

    def __len__(self) -> int:
        return len(self.columns["id"])

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise DataError(f"dataset has no column '{name}' (columns: {sorted(self.columns)})") from None

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    @property
    def ids(self) -> np.ndarray:
        return self.columns["id"]

    def take(self, index: np.ndarray) -> Dataset:
        return Dataset({k: v[index] for k, v in self.columns.items()}, dict(self.meta))

    def with_columns(self, **cols: np.ndarray) -> Dataset:
        return Dataset({**self.columns, **cols}, dict(self.meta))

    def labeled_mask(self) -> np.ndarray:
        if "y" not in self.columns:
            return np.zeros(len(self), dtype=bool)
        return self.columns["y"] != UNLABELED


def _to_arrow(col: np.ndarray) -> pa.Array:
    flat = col.reshape(len(col), -1) if col.ndim > 1 else col
    if col.ndim == 1:
        return pa.array(flat)
    width = flat.shape[1]
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), width)


def write_dataset(uri: str, data: Dataset, *, num_shards: int | None = None,
                  rows_per_shard: int = 50_000) -> str:
    """Write ``data`` as Parquet shards and a manifest under ``uri``; returns ``uri``."""
    n = len(data)
    num_shards = num_shards or max(1, -(-n // rows_per_shard))
    bounds = np.linspace(0, n, num_shards + 1).astype(int)
    shards = []
    for i in range(num_shards):
        lo, hi = bounds[i], bounds[i + 1]
        table = pa.table({k: _to_arrow(np.ascontiguousarray(v[lo:hi])) for k, v in data.columns.items()})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        raw = buf.getvalue()
        name = f"shard-{i:05d}-of-{num_shards:05d}.parquet"
        storage.write_bytes(storage.join(uri, name), raw)
        shards.append({"name": name, "num_examples": int(hi - lo), "sha256": hashlib.sha256(raw).hexdigest()})
    manifest = {
        "format": FORMAT,
        "num_examples": int(n),
        "columns": {k: {"dtype": str(v.dtype), "shape": list(v.shape[1:])} for k, v in data.columns.items()},
        "shards": shards,
        "meta": data.meta,
    }
    storage.write_text(storage.join(uri, MANIFEST), json.dumps(manifest, indent=1, default=_json_default))
    return uri


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_manifest(uri: str) -> dict[str, Any]:
    muri = storage.join(uri, MANIFEST)
    if not storage.exists(muri):
        present = storage.listdir(uri)
        hint = f" (found {present[:5]}: an unfinished write?)" if present else ""
        raise DataError(f"{uri} is not a crossdistill dataset: {MANIFEST} is missing{hint}")
    try:
        manifest = json.loads(storage.read_text(muri))
    except json.JSONDecodeError as exc:
        raise DataError(f"{muri} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{muri}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def read_dataset(uri: str | list[str], columns: list[str] | None = None, *, verify: bool = True) -> Dataset:
    """Read one dataset, or several with the same columns concatenated (e.g. parallel label shards)."""
    if isinstance(uri, (list, tuple)):
        if not uri:
            raise DataError("read_dataset got an empty list of dataset URIs")
        parts = [read_dataset(u, columns, verify=verify) for u in uri]
        first = parts[0]
        for u, p in zip(uri[1:], parts[1:], strict=True):
            if set(p.columns) != set(first.columns):
                raise DataError(f"{u} has columns {sorted(p.columns)}, expected {sorted(first.columns)}")
        cols = {k: np.concatenate([p.columns[k] for p in parts]) for k in first.columns}
        return Dataset(cols, dict(first.meta))
    manifest = read_manifest(uri)
    spec = manifest["columns"]
    wanted = list(spec) if columns is None else ["id", *[c for c in columns if c != "id"]]
    for c in wanted:
        if c not in spec:
            raise DataError(f"{uri}: no column '{c}' (columns: {sorted(spec)})")
    chunks: dict[str, list[np.ndarray]] = {c: [] for c in wanted}
    for shard in manifest["shards"]:
        suri = storage.join(uri, shard["name"])
        if not storage.exists(suri):
            raise DataError(f"shard {suri} is missing (listed in {MANIFEST} with {shard['num_examples']} rows)")
        raw = storage.read_bytes(suri)
        if verify and hashlib.sha256(raw).hexdigest() != shard["sha256"]:
            raise DataError(f"shard {suri} is corrupt: its SHA-256 does not match {MANIFEST}")
        try:
            table = pq.read_table(io.BytesIO(raw), columns=wanted)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"shard {suri} is corrupt: {exc}") from None
        if table.num_rows != shard["num_examples"]:
            raise DataError(f"shard {suri} has {table.num_rows} rows, manifest says {shard['num_examples']}")
        for c in wanted:
            chunks[c].append(_from_arrow(table.column(c), spec[c]))
    cols = {c: (np.concatenate(v) if v else np.zeros((0, *spec[c]["shape"]), dtype=spec[c]["dtype"]))
            for c, v in chunks.items()}
    return Dataset(cols, manifest.get("meta", {}))


def _from_arrow(col: pa.ChunkedArray, spec: dict[str, Any]) -> np.ndarray:
    shape = tuple(spec["shape"])
    arr = col.combine_chunks()
    if shape:
        values = arr.flatten().to_numpy(zero_copy_only=False)
        return values.astype(spec["dtype"], copy=False).reshape((len(arr), *shape))
    return arr.to_numpy(zero_copy_only=False).astype(spec["dtype"], copy=False)
