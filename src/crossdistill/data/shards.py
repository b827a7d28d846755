"""Sharded datasets: ``<uri>/shard-00000.parquet`` ... plus ``<uri>/manifest.json``.

Every column is a numpy array whose first axis is the example; extra axes are flattened into a
fixed-size Parquet list and restored from the shapes recorded in the manifest; a ``binary`` column
holds variable-length bytes (encoded images). Shards are written one at a time in row groups, so
neither writing nor reading holds more than a row group in memory. The manifest is written last and
lists each shard with its row count, row-group sizes and SHA-256, so a reader knows a dataset is
complete, can address any row group (:class:`Fragment`) and names the shard that is missing or corrupt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossdistill import storage
from crossdistill.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "crossdistill.dataset/v1"
UNLABELED = -1
BINARY = "binary"  # dtype recorded for variable-length bytes columns
ROW_GROUP_ROWS = 4096
MIN_GROUP_ROWS = 256


def index_dtype(count: int) -> np.dtype:
    """The smallest type for indices ``0..count-1`` (classes, vocabulary entries), on disk and on the wire:
    uint16 while every index fits (up to 65,536 entries), else int32. At 10 classes and top-5 this keeps
    top-k (5 x 2 bytes of index + 5 x 4 of log-probability) smaller than dense FP32 logits (40 bytes)."""
    return np.dtype(np.uint16) if count <= 1 << 16 else np.dtype(np.int32)


@dataclass
class Dataset:
    """Columns of equal length (``id`` always present) and free-form metadata, held in memory."""

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


# ---------------------------------------------------------------------------------------------- writing
def _column_spec(name: str, col: np.ndarray) -> dict[str, Any]:
    if col.dtype == object or col.dtype.kind == "S":
        if col.ndim != 1:
            raise DataError(f"column '{name}': a bytes column must be 1-D, got shape {list(col.shape)}")
        return {"dtype": BINARY, "shape": []}
    if col.dtype.kind not in "biuf":
        raise DataError(f"column '{name}' has dtype {col.dtype}: expected numbers, booleans or bytes")
    return {"dtype": str(col.dtype), "shape": list(col.shape[1:])}


def _to_arrow(col: np.ndarray, spec: dict[str, Any]) -> pa.Array:
    if spec["dtype"] == BINARY:
        return pa.array(list(col), type=pa.binary())
    if col.ndim == 1:
        return pa.array(col)
    # One fixed-size binary cell per row (the row's little-endian bytes): read back with one
    # np.frombuffer, where a fixed_size_list column costs a per-row walk (~30x slower on images).
    flat = np.ascontiguousarray(col, dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
    width = flat.dtype.itemsize * int(np.prod(spec["shape"], dtype=np.int64))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(col), [None, pa.py_buffer(flat)])


class _HashingFile:
    """A write-only file wrapper that hashes what passes through (the shard's SHA-256 without re-reading)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh, self.sha = fh, hashlib.sha256()
        self.closed = False

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self._fh.write(data)

    def tell(self) -> int:
        return self._fh.tell()

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:  # the atomic_open context closes the real file
        self.closed = True


class DatasetWriter:
    """Append column batches to a dataset at ``uri``; shards rotate every ``rows_per_shard`` rows.

    Nothing looks complete until :meth:`close` writes the manifest (the last file). Used as a context
    manager, an exception inside the block leaves the shards written so far but no manifest, so every
    reader refuses the folder as unfinished. Every batch must have the same columns, dtypes and shapes.
    """

    def __init__(self, uri: str, meta: dict[str, Any] | None = None, *, rows_per_shard: int = 50_000,
                 row_group_rows: int = ROW_GROUP_ROWS) -> None:
        if rows_per_shard < 1 or row_group_rows < 1:
            raise ValueError("rows_per_shard and row_group_rows must be >= 1")
        self.uri, self.meta = uri, dict(meta or {})
        self.rows_per_shard, self.row_group_rows = rows_per_shard, row_group_rows
        self.spec: dict[str, dict[str, Any]] | None = None
        self.shards: list[dict[str, Any]] = []
        self.num_examples = 0
        self._open: Any = None  # (context manager, hashing file, ParquetWriter, entry)
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def write(self, columns: dict[str, np.ndarray]) -> None:
        """Append rows (a dict of equal-length arrays, ``id`` included)."""
        Dataset(columns)  # same lengths, an id column
        spec = {k: _column_spec(k, v) for k, v in columns.items()}
        if self.spec is None:
            self.spec = spec
        elif spec != self.spec:
            diff = sorted(k for k in {*spec, *self.spec} if spec.get(k) != self.spec.get(k))
            raise DataError(f"{self.uri}: batch columns differ from the first batch's in {diff} "
                            f"(got {[spec.get(k) for k in diff]}, expected {[self.spec.get(k) for k in diff]})")
        n = len(columns["id"])
        lo = 0
        while lo < n:
            room = self.rows_per_shard - self._rows_in_current_shard()
            hi = min(n, lo + room)
            self._buffer({k: v[lo:hi] for k, v in columns.items()})
            lo = hi
            if self._rows_in_current_shard() >= self.rows_per_shard:
                self.finish_shard()

    def finish_shard(self) -> None:
        """End the current shard (the next rows start a new one)."""
        self._flush_groups(final=True)
        if self._open is None:
            return
        ctx, hashing, writer, entry = self._open
        writer.close()
        ctx.__exit__(None, None, None)
        entry["sha256"] = hashing.sha.hexdigest()
        self.shards.append(entry)
        self._open = None

    def close(self, meta: dict[str, Any] | None = None) -> str:
        """Finish the last shard and write the manifest; returns ``uri``."""
        self.finish_shard()
        if meta:
            self.meta.update(meta)
        manifest = {"format": FORMAT, "num_examples": int(self.num_examples),
                    "columns": self.spec or {"id": {"dtype": "int64", "shape": []}},
                    "shards": self.shards, "meta": self.meta}
        storage.write_text(storage.join(self.uri, MANIFEST),
                           json.dumps(manifest, indent=1, default=_json_default))
        return self.uri

    def _rows_in_current_shard(self) -> int:
        entry_rows = self._open[3]["num_examples"] if self._open is not None else 0
        return entry_rows + self._pending_rows

    def _buffer(self, columns: dict[str, np.ndarray]) -> None:
        self._pending.append(columns)
        self._pending_rows += len(columns["id"])
        self._flush_groups(final=False)

    def _flush_groups(self, final: bool) -> None:
        while self._pending_rows >= self.row_group_rows or (final and self._pending_rows):
            merged = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
            take = min(self.row_group_rows, self._pending_rows)
            self._write_group({k: v[:take] for k, v in merged.items()})
            rest = {k: v[take:] for k, v in merged.items()}
            self._pending = [rest] if len(rest["id"]) else []
            self._pending_rows -= take

    def _write_group(self, columns: dict[str, np.ndarray]) -> None:
        assert self.spec is not None
        table = pa.table({k: _to_arrow(v, self.spec[k]) for k, v in columns.items()})
        if self._open is None:
            name = f"shard-{len(self.shards):05d}.parquet"
            ctx = storage.atomic_open(storage.join(self.uri, name), "wb")
            hashing = _HashingFile(ctx.__enter__())
            # Dictionary encoding only pays for small scalar integer columns (labels); on float features it
            # costs ~6x the write time and makes files larger. Min/max statistics only for scalar columns
            # (a multi-dimensional cell's would be two more copies of a whole row).
            scalar = [k for k, v in self.spec.items() if not v["shape"] and v["dtype"] != BINARY]
            small = [k for k in scalar if k == "y" or self.spec[k]["dtype"] in ("int8", "uint8", "bool")]
            writer = pq.ParquetWriter(hashing, table.schema, compression="zstd", use_dictionary=small or False,
                                      write_statistics=scalar or False)
            self._open = (ctx, hashing, writer, {"name": name, "num_examples": 0, "row_groups": []})
        _, _, writer, entry = self._open
        writer.write_table(table, row_group_size=len(table))
        entry["num_examples"] += len(table)
        entry["row_groups"].append(len(table))
        self.num_examples += len(table)

    def _abort(self) -> None:
        self._pending, self._pending_rows = [], 0
        if self._open is not None:
            ctx, _, writer, _ = self._open
            try:
                writer.close()
            finally:
                ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)  # drops the temp file
            self._open = None


def write_dataset(uri: str, data: Dataset, *, num_shards: int | None = None,
                  rows_per_shard: int = 50_000) -> str:
    """Write an in-memory ``data`` as ``num_shards`` (or ``rows_per_shard``-row) shards; returns ``uri``."""
    n = len(data)
    num_shards = num_shards or max(1, -(-n // rows_per_shard))
    bounds = np.linspace(0, n, num_shards + 1).astype(int)
    # Small sets still get several row groups (>= MIN_GROUP_ROWS rows each), so that n parallel
    # pseudo-label tasks or data-parallel ranks each have a part to work on.
    group_rows = min(ROW_GROUP_ROWS, max(MIN_GROUP_ROWS, -(-n // 16)))
    with DatasetWriter(uri, data.meta, rows_per_shard=max(n, 1), row_group_rows=group_rows) as writer:
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            writer.write({k: v[lo:hi] for k, v in data.columns.items()})
            writer.finish_shard()
        if n == 0:
            writer.write({k: v[:0] for k, v in data.columns.items()})
    return uri


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------- reading
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


@dataclass(frozen=True)
class Fragment:
    """One row group of one shard: the unit of streaming, partitioning and resuming.

    ``start`` is the global row offset of the fragment's first row in the (concatenated) dataset;
    ``row_group`` is None for a shard written without row-group sizes in its manifest (read whole).
    """

    uri: str
    shard: str
    row_group: int | None
    start: int
    num_rows: int


class DatasetReader:
    """A dataset (or several with the same columns, concatenated) read row group by row group.

    Opening reads only the manifest(s). :meth:`iter_batches` yields one fragment's columns at a time,
    so memory is bounded by the largest row group; :meth:`partition` gives part ``i`` of ``n`` of the
    fragments (contiguous, balanced by rows) for parallel pseudo-labelling or data-parallel ranks.
    """

    def __init__(self, uri: str | Sequence[str]) -> None:
        uris = [uri] if isinstance(uri, str) else list(uri)
        if not uris:
            raise DataError("got an empty list of dataset URIs")
        self.uris = uris
        self.manifests = [read_manifest(u) for u in uris]
        self.spec: dict[str, dict[str, Any]] = self.manifests[0]["columns"]
        for u, m in zip(uris[1:], self.manifests[1:], strict=True):
            if set(m["columns"]) != set(self.spec):
                raise DataError(f"{u} has columns {sorted(m['columns'])}, expected {sorted(self.spec)} "
                                f"like {uris[0]}")
        self.meta: dict[str, Any] = dict(self.manifests[0].get("meta", {}))
        self.fragments: list[Fragment] = []
        start = 0
        for u, m in zip(uris, self.manifests, strict=True):
            for shard in m["shards"]:
                groups = shard.get("row_groups") or [None]
                for i, rows in enumerate(groups):
                    n = shard["num_examples"] if rows is None else int(rows)
                    self.fragments.append(Fragment(u, shard["name"], None if rows is None else i, start, n))
                    start += n
        self.num_examples = start
        self._cache: tuple[str, Any] | None = None
        self._rows_cache: tuple[Any, dict[str, np.ndarray]] | None = None  # read_rows' last fragment

    def __len__(self) -> int:
        return self.num_examples

    @property
    def description(self) -> str:
        return ", ".join(self.uris)

    def column_names(self) -> list[str]:
        return list(self.spec)

    def _wanted(self, columns: Sequence[str] | None) -> list[str]:
        wanted = list(self.spec) if columns is None else ["id", *[c for c in columns if c != "id"]]
        for c in wanted:
            if c not in self.spec:
                raise DataError(f"{self.description}: no column '{c}' (columns: {sorted(self.spec)})")
        return wanted

    def _file(self, frag: Fragment) -> pq.ParquetFile:
        suri = storage.join(frag.uri, frag.shard)
        if self._cache is not None and self._cache[0] == suri:
            return self._cache[1]
        if not storage.exists(suri):
            raise DataError(f"shard {suri} is missing (listed in {MANIFEST})")
        fs, path = storage.filesystem(suri)
        try:
            pf = pq.ParquetFile(fs.open(path, "rb"))
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"shard {suri} is corrupt: {exc}") from None
        self._cache = (suri, pf)
        return pf

    def read(self, frag: Fragment, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One fragment's columns as numpy arrays (``id`` always included)."""
        wanted = self._wanted(columns)
        suri = storage.join(frag.uri, frag.shard)
        pf = self._file(frag)
        try:
            table = pf.read(columns=wanted) if frag.row_group is None else pf.read_row_group(frag.row_group,
                                                                                             columns=wanted)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"shard {suri} is corrupt: {exc}") from None
        if table.num_rows != frag.num_rows:
            where = "" if frag.row_group is None else f" row group {frag.row_group}"
            raise DataError(f"shard {suri}{where} has {table.num_rows} rows, {MANIFEST} says {frag.num_rows}")
        return {c: _from_arrow(table.column(c), self.spec[c]) for c in wanted}

    def read_rows(self, start: int, stop: int, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Global rows ``start:stop`` (across fragments) as numpy arrays; memory: the fragments they touch."""
        if not 0 <= start <= stop <= self.num_examples:
            raise DataError(f"{self.description}: rows {start}:{stop} outside 0:{self.num_examples}")
        parts, wanted = [], tuple(self._wanted(columns))
        for frag in self.fragments:
            lo, hi = max(start, frag.start), min(stop, frag.start + frag.num_rows)
            if lo < hi:
                hit = self._rows_cache is not None and self._rows_cache[0] == (frag, wanted)
                cols = self._rows_cache[1] if hit and self._rows_cache else self.read(frag, wanted)
                self._rows_cache = ((frag, wanted), cols)
                parts.append({c: v[lo - frag.start:hi - frag.start] for c, v in cols.items()})
        if not parts:
            return {c: _empty(self.spec[c]) for c in wanted}
        return {c: np.concatenate([p[c] for p in parts]) if len(parts) > 1 else parts[0][c] for c in parts[0]}

    def iter_batches(self, columns: Sequence[str] | None = None,
                     fragments: Sequence[Fragment] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Columns of each fragment in turn (all fragments, or the given ones in the given order)."""
        for frag in self.fragments if fragments is None else fragments:
            yield self.read(frag, columns)

    def partition(self, index: int, count: int) -> list[Fragment]:
        """Part ``index`` of ``count``: contiguous fragments, split where the running row count crosses
        ``k * num_examples / count`` (each part ~1/count of the rows; a part may be empty)."""
        if count < 1 or not 0 <= index < count:
            raise DataError(f"part {index} of {count}: expected 0 <= index < count")
        total = max(self.num_examples, 1)
        return [f for f in self.fragments
                if int(count * (f.start + f.num_rows / 2) // total) == index]

    def verify(self) -> None:
        """Check every shard against its SHA-256 in the manifest (reads every byte once)."""
        for u, m in zip(self.uris, self.manifests, strict=True):
            for shard in m["shards"]:
                suri = storage.join(u, shard["name"])
                if not storage.exists(suri):
                    raise DataError(f"shard {suri} is missing (listed in {MANIFEST} with {shard['num_examples']} rows)")
                if hashlib.sha256(storage.read_bytes(suri)).hexdigest() != shard["sha256"]:
                    raise DataError(f"shard {suri} is corrupt: its SHA-256 does not match {MANIFEST}")

    def to_dataset(self, columns: Sequence[str] | None = None,
                   fragments: Sequence[Fragment] | None = None) -> Dataset:
        """The given fragments (default: all) gathered in memory: for small sets only."""
        wanted = self._wanted(columns)
        chunks: dict[str, list[np.ndarray]] = {c: [] for c in wanted}
        for batch in self.iter_batches(wanted, fragments):
            for c in wanted:
                chunks[c].append(batch[c])
        cols = {c: (np.concatenate(v) if v else _empty(self.spec[c])) for c, v in chunks.items()}
        return Dataset(cols, dict(self.meta))


def _empty(spec: dict[str, Any]) -> np.ndarray:
    if spec["dtype"] == BINARY:
        return np.empty(0, dtype=object)
    return np.zeros((0, *spec["shape"]), dtype=spec["dtype"])


def read_dataset(uri: str | list[str], columns: list[str] | None = None, *, verify: bool = True) -> Dataset:
    """Read one dataset, or several with the same columns concatenated, whole into memory.

    For small sets (evaluation splits, tables); training and labelling stream with :class:`DatasetReader`.
    """
    reader = DatasetReader(uri)
    if verify:
        reader.verify()
    return reader.to_dataset(columns)


def _from_arrow(col: pa.ChunkedArray, spec: dict[str, Any]) -> np.ndarray:
    shape = tuple(spec["shape"])
    arr = col.combine_chunks()
    if spec["dtype"] == BINARY:
        return np.array(arr.to_pylist(), dtype=object)
    if shape and pa.types.is_fixed_size_binary(arr.type):
        dtype = np.dtype(spec["dtype"]).newbyteorder("<")
        data = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=len(arr) * arr.type.byte_width,
                             offset=arr.offset * arr.type.byte_width)
        return data.view(dtype).astype(spec["dtype"]).reshape((len(arr), *shape))
    if shape:  # datasets written by earlier versions hold fixed_size_list columns
        values = arr.flatten().to_numpy(zero_copy_only=False)
        return values.astype(spec["dtype"], copy=False).reshape((len(arr), *shape))
    return arr.to_numpy(zero_copy_only=False).astype(spec["dtype"], copy=False)
