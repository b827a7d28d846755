"""Readers for the formats `import-data` takes, each streaming :class:`Chunk` s of rows in source order.

Parquet, CSV and JSON Lines are read with ``pyarrow.dataset``, a Hugging Face dataset with
``datasets.load_from_disk``, ``.npy``/``.npz`` through ``numpy.lib.format`` (rows read in slices from
the file, never the whole array), an image folder with fsspec + the class sub-folder names, WebDataset
tar shards with ``webdataset``'s tar iterators. A reader yields the same rows in the same order every
time it is iterated, so a label-only scan and the full read agree row by row. Problems name the file,
the row (counted from 0 within the file, header excluded) and the column.

Text (``Columns.text`` set, or format ``text``): the readers yield documents as Python strings (kind
``text``): the named column of a Parquet, CSV or Hugging Face source, the named field of each JSON Lines
record (read line by line, so a bad record is named by its row and line), or whole ``.txt`` files (each file
one document).
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import sys
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossdistill import storage
from crossdistill.data.finite import first_nonfinite
from crossdistill.errors import ConfigError, DataError

FORMATS = ("parquet", "csv", "jsonl", "npy", "npz", "imagefolder", "webdataset", "hf", "text")
EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".json": "jsonl", ".npy": "npy", ".npz": "npz", ".tar": "webdataset", ".tgz": "webdataset",
              ".tar.gz": "webdataset", ".txt": "text"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGE_KEYS = ("png", "jpg", "jpeg")  # WebDataset members holding the image
TEXT_EXTENSIONS = (".txt",)  # the documents of a folder read with format text
TABLE_BATCH_ROWS = 4096
IMAGE_BATCH_ROWS = 256
TEXT_BATCH_BYTES = 16 << 20  # a text chunk ends after this much text (or TABLE_BATCH_ROWS documents)


@dataclass
class Chunk:
    """Consecutive rows of one file: inputs (None in a label scan), label texts, ids.

    ``labels`` is a string array (null = unlabeled); ``ids`` None means "generate them";
    ``row_names`` names each row where a row is a file or tar member of its own.
    """

    where: str
    start: int
    num_rows: int
    inputs: np.ndarray | None = None
    labels: pa.Array | None = None
    ids: np.ndarray | None = None
    row_names: list[str] | None = None

    def locate(self, i: int) -> str:
        """Where row ``i`` of this chunk comes from, for error messages."""
        if self.row_names is not None:
            return self.row_names[i]
        return f"{self.where}: row {self.start + i}"


@dataclass
class Columns:
    """Which columns (or keys) of the source hold the inputs, the label and the id; ``text`` names the
    column of documents of a text import (then features, label and id are unset)."""

    features: list[str] | None = None
    label: str | None = None
    id: str | None = None
    text: str | None = None


class Reader:
    """Base of every format reader; also a context manager (some hold a local copy open)."""

    kind = "x"  # the stored input column: "x" (numbers) or "image" (encoded bytes); "text": documents (str)
    features: list[str] | None = None  # recorded in the dataset meta
    declared_names: list[str] | None = None  # class names the format itself declares, in order
    has_labels = False

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def chunks(self, with_inputs: bool = True) -> Iterator[Chunk]:
        raise NotImplementedError


# ------------------------------------------------------------------------------------- files and formats
def list_files(source: str) -> list[str]:
    """The files of ``source`` (one file, a folder searched recursively, or a glob), as sorted URIs."""
    fs, path = storage.filesystem(source)
    proto = storage.protocol_of(source)

    def uri(p: str) -> str:
        return p if proto == "file" else f"{proto}://{p.lstrip('/')}"

    if any(ch in path for ch in "*?["):
        found = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        found = fs.find(path)
    elif fs.exists(path):
        found = [path]
    else:
        raise DataError(f"{source}: no such file, folder or object")
    found = sorted(p for p in found if not posixpath.basename(p).startswith("."))
    if not found:
        raise DataError(f"{source}: matched no files")
    return [uri(p) for p in found]


def _extension(name: str) -> str:
    low = name.lower()
    return ".tar.gz" if low.endswith(".tar.gz") else posixpath.splitext(low)[1]


def detect_format(source: str) -> str:
    """The format of ``source`` from its file extensions (a folder: HF markers, class sub-folders)."""
    fs, path = storage.filesystem(source)
    if fs.isdir(path):
        names = set(storage.listdir(source))
        if {"state.json", "dataset_info.json"} <= names or "dataset_dict.json" in names:
            return "hf"
    files = list_files(source)
    exts = {_extension(f) for f in files}
    if exts & set(IMAGE_EXTENSIONS):
        return "imagefolder"
    kinds = {EXTENSIONS[e] for e in exts if e in EXTENSIONS}
    if len(kinds) == 1:
        return kinds.pop()
    found = sorted(exts)[:10]
    raise ConfigError(f"{source}: cannot tell its format from the file extensions {found}; "
                      f"set format= one of {list(FORMATS)}")


def open_reader(source: str, fmt: str, columns: Columns) -> Reader:
    """The reader of ``source`` in format ``fmt`` (already resolved, not ``auto``)."""
    if fmt == "text":
        return TextFilesReader(source, columns)
    if fmt == "jsonl" and columns.text is not None:
        return JsonLinesTextReader(source, columns)
    if fmt in ("parquet", "csv", "jsonl"):
        return ArrowFileReader(source, fmt, columns)
    if fmt == "hf":
        return HuggingFaceReader(source, columns)
    if fmt in ("npy", "npz"):
        return NumpyReader(source, fmt, columns)
    if fmt == "imagefolder":
        return ImageFolderReader(source, columns)
    if fmt == "webdataset":
        return WebDatasetReader(source, columns)
    raise ConfigError(f"unknown format '{fmt}' (known: auto, {', '.join(FORMATS)})")


# ------------------------------------------------------------------------------------------ labels, ids
def label_texts(values: pa.Array, chunk: Chunk, column: str, names: Sequence[str] | None = None) -> pa.Array:
    """Labels as strings, null where unlabeled (null, empty text, NaN; -1 for a declared class list).

    Integers become their decimal text; integral floats too; with ``names`` (a class list the format
    declares, e.g. a Hugging Face ClassLabel) an integer is an index into it.
    """
    t = values.type
    if pa.types.is_dictionary(t):
        values, t = values.cast(t.value_type), t.value_type
    if pa.types.is_floating(t):
        as_float = values.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(np.isfinite(as_float) & (as_float != np.round(as_float)))
        if len(bad):
            raise DataError(f"{chunk.locate(int(bad[0]))}, column '{column}': label {as_float[bad[0]]} is not a "
                            "whole number or a name")
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, t), values).cast(pa.int64())
        t = pa.int64()
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        if names is None:
            return values.cast(pa.string())
        idx = values.cast(pa.int64()).to_numpy(zero_copy_only=False)
        idx = np.where(np.isnan(idx.astype(np.float64)), -1, idx).astype(np.int64)
        bad = np.flatnonzero((idx < -1) | (idx >= len(names)))
        if len(bad):
            raise DataError(f"{chunk.locate(int(bad[0]))}, column '{column}': label {idx[bad[0]]} is outside the "
                            f"declared classes {list(names)}")
        texts = np.array(list(names) + [None], dtype=object)[np.where(idx < 0, len(names), idx)]
        return pa.array(texts, type=pa.string())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        values = values.cast(pa.string())
        return pc.if_else(pc.equal(pc.utf8_trim_whitespace(values), ""), pa.scalar(None, pa.string()), values)
    raise DataError(f"{chunk.where}: label column '{column}' has type {t}: expected integers or text")


def as_ids(values: pa.Array | np.ndarray, chunk: Chunk, column: str) -> np.ndarray:
    """An id column as int64: every cell present and a whole number."""
    arr = values if isinstance(values, pa.Array) else pa.array(values)
    if arr.null_count:
        row = int(pc.index(pc.is_null(arr), True).as_py())
        raise DataError(f"{chunk.locate(row)}, column '{column}': the id is missing")
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        raise DataError(f"{chunk.where}: id column '{column}' has type {arr.type}: expected integers")
    out = arr.to_numpy(zero_copy_only=False)
    ints = out.astype(np.int64)
    bad = np.flatnonzero(ints != out)
    if len(bad):
        raise DataError(f"{chunk.locate(int(bad[0]))}, column '{column}': id {out[bad[0]]} is not an integer")
    return ints


# ------------------------------------------------------------------------------------- numeric features
def _null_row(arr: pa.Array) -> int | None:
    return int(pc.index(pc.is_null(arr), True).as_py()) if arr.null_count else None


def numeric_cells(arr: pa.Array, chunk: Chunk, column: str) -> np.ndarray:
    """One feature column as float32 ``[n, *cell shape]``: numbers, or equal-length lists of numbers."""
    row = _null_row(arr)
    if row is not None:
        raise DataError(f"{chunk.locate(row)}, column '{column}': the value is missing")
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataError(f"{chunk.locate(row)}, column '{column}': a list of {lengths[row]} values where row "
                            f"{chunk.start} has {lengths[0]} (ragged rows; every row needs the same shape)")
        items = arr.flatten()
        where = f"{chunk.where} (the list items of rows {chunk.start}..{chunk.start + len(arr) - 1}, in order)"
        inner = numeric_cells(items, Chunk(where, 0, len(items)), column) if len(arr) else np.zeros(0, np.float32)
        width = int(lengths[0]) if len(lengths) else 0
        return inner.reshape(len(arr), width, *inner.shape[1:])
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = arr.cast(pa.float64()) if pa.types.is_decimal(t) else arr
        return values.to_numpy(zero_copy_only=False).astype(np.float32)
    sample = arr[0].as_py() if len(arr) else None
    raise DataError(f"{chunk.locate(0)}, column '{column}': type {t} (e.g. {sample!r}) is not numeric; "
                    "features must be numbers or lists of numbers")


def check_finite(x: np.ndarray, chunk: Chunk, column: str) -> None:
    """Refuse NaN or Inf, naming the first row (and position inside a list cell) that holds one."""
    bad = first_nonfinite(x)
    if bad is not None:
        r, pos = bad
        flat = x.reshape(len(x), -1)
        cell = f"[{pos}]" if flat.shape[1] > 1 else ""
        raise DataError(f"{chunk.locate(r)}, column '{column}{cell}': {flat[r, pos]} (NaN and Inf are not "
                        "allowed in features)")


def image_bytes(arr: pa.Array, chunk: Chunk, column: str) -> np.ndarray:
    """An encoded-image column (binary, or a Hugging Face Image struct of bytes/path) as an object array.

    A struct cell without bytes is read from its path (a Hugging Face image kept as a file path)."""
    if not pa.types.is_struct(arr.type):
        row = _null_row(arr)
        if row is not None:
            raise DataError(f"{chunk.locate(row)}, column '{column}': no image bytes")
        return np.array(arr.to_pylist(), dtype=object)
    data = pc.struct_field(arr, "bytes").to_pylist()
    paths = pc.struct_field(arr, "path").to_pylist() if arr.type.get_field_index("path") >= 0 else [None] * len(arr)
    for i, (blob, path) in enumerate(zip(data, paths, strict=True)):
        if blob is None:
            if not path:
                raise DataError(f"{chunk.locate(i)}, column '{column}': no image bytes and no path")
            data[i] = storage.read_bytes(path)
    return np.array(data, dtype=object)


def text_cells(arr: pa.Array, chunk: Chunk, column: str) -> np.ndarray:
    """A text column as an object array of Python strings: every cell present and a string."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.cast(t.value_type), t.value_type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        valid = pc.is_valid(arr)
        row = int(pc.index(valid, True).as_py()) if pc.any(valid).as_py() else 0
        sample = arr[row].as_py() if len(arr) else None
        raise DataError(f"{chunk.locate(row)}, column '{column}': {_short(sample)} ({t}) is not text; the text "
                        "column must hold strings")
    row = _null_row(arr)
    if row is not None:
        raise DataError(f"{chunk.locate(row)}, column '{column}': no text (null); expected a string (an empty "
                        "string is skipped)")
    return np.array(arr.to_pylist(), dtype=object)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def is_image_type(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return t.get_field_index("bytes") >= 0 and pa.types.is_binary(t.field("bytes").type)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


# ------------------------------------------------------------------------------------------------ tables
class _TableColumns:
    """Turns tables of one schema into chunks: named feature columns, label, id."""

    def __init__(self, schema: pa.Schema, where: str, columns: Columns,
                 declared_names: list[str] | None = None) -> None:
        names = schema.names
        self.columns, self.declared_names = columns, declared_names
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.first_where: dict[str, str] = {}
        if columns.text is not None:  # a text import: one column of documents
            if columns.text not in names:
                raise DataError(f"{where}: no text column '{columns.text}' (columns: {names})")
            self.features, self.kind = [columns.text], "text"
            return
        for role, col in (("label", columns.label), ("id", columns.id)):
            if col is not None and col not in names:
                raise DataError(f"{where}: no {role} column '{col}' (columns: {names})")
        self.features = columns.features or [n for n in names if n not in (columns.label, columns.id)]
        missing = [f for f in self.features if f not in names]
        if missing:
            raise DataError(f"{where}: no feature column(s) {missing} (columns: {names})")
        if not self.features:
            raise DataError(f"{where}: no feature columns left besides label and id (columns: {names})")
        images = [f for f in self.features if is_image_type(schema.field(f).type)]
        if images and len(self.features) > 1:
            raise DataError(f"{where}: column '{images[0]}' holds encoded images; name it alone as the "
                            f"feature (features={images[0]}), not with {self.features}")
        self.kind = "image" if images else "x"

    def chunk(self, table: pa.Table, where: str, start: int, with_inputs: bool) -> Chunk:
        chunk = Chunk(where, start, table.num_rows)
        col = self.columns
        if col.label is not None:
            chunk.labels = label_texts(table.column(col.label).combine_chunks(), chunk, col.label,
                                       self.declared_names)
        if col.id is not None:
            chunk.ids = as_ids(table.column(col.id).combine_chunks(), chunk, col.id)
        if with_inputs:
            chunk.inputs = self._inputs(table, chunk)
        return chunk

    def needed(self, with_inputs: bool) -> list[str]:
        cols = [c for c in (self.columns.label, self.columns.id) if c is not None]
        return cols + (self.features if with_inputs else [])

    def _inputs(self, table: pa.Table, chunk: Chunk) -> np.ndarray:
        if self.kind == "text":
            return text_cells(table.column(self.features[0]).combine_chunks(), chunk, self.features[0])
        if self.kind == "image":
            return image_bytes(table.column(self.features[0]).combine_chunks(), chunk, self.features[0])
        parts = []
        for name in self.features:
            cells = numeric_cells(table.column(name).combine_chunks(), chunk, name)
            check_finite(cells, chunk, name)
            shape = cells.shape[1:]
            if self.shapes.setdefault(name, shape) != shape:
                raise DataError(f"{chunk.locate(0)}, column '{name}': cells of shape {list(shape)}, but "
                                f"{self.first_where[name]} has {list(self.shapes[name])} (ragged rows)")
            self.first_where.setdefault(name, chunk.locate(0))
            parts.append(cells)
        if len(parts) == 1 and parts[0].ndim > 1:
            return parts[0]
        return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)


class ArrowFileReader(Reader):
    """Parquet, CSV or JSON Lines files (one, a folder or a glob) through ``pyarrow.dataset``."""

    def __init__(self, source: str, fmt: str, columns: Columns) -> None:
        super().__init__()
        self.fmt, self.columns = fmt, columns
        self.files = list_files(source)
        self.has_labels = columns.label is not None
        first = self._dataset(self.files[0])
        self._layout = _TableColumns(first.schema, self.files[0], columns)
        self.kind, self.features = self._layout.kind, self._layout.features

    def _dataset(self, uri: str) -> Any:
        import pyarrow.dataset as pads

        fmt: Any = {"parquet": "parquet", "csv": pads.CsvFileFormat(), "jsonl": pads.JsonFileFormat()}[self.fmt]
        if self.fmt == "csv" and self.columns.text is not None:
            import pyarrow.csv as pacsv

            # a text column stays text (digits too) and a quoted cell may span lines
            fmt = pads.CsvFileFormat(parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                     convert_options=pacsv.ConvertOptions(column_types={self.columns.text: pa.string()}))
        fs, path = storage.filesystem(uri)
        try:
            return pads.dataset(path, format=fmt, filesystem=fs)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{uri} is not a readable {self.fmt} file: {_brief(exc)}") from None

    def _batches(self, uri: str, dataset: Any, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Record batches of one file, one at a time. Parquet goes through ``ParquetFile.iter_batches``
        (one row group decoded at a time, unbuffered): the dataset scanner reads ahead several row groups,
        which made memory grow with the file up to ~100 MB more."""
        if self.fmt != "parquet":
            yield from dataset.to_batches(columns=columns, batch_size=TABLE_BATCH_ROWS, batch_readahead=1,
                                          fragment_readahead=1, use_threads=False)
            return
        import pyarrow.parquet as pq

        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as fh:
            yield from pq.ParquetFile(fh, pre_buffer=False, buffer_size=1 << 20).iter_batches(
                batch_size=TABLE_BATCH_ROWS, columns=columns, use_threads=False)

    def chunks(self, with_inputs: bool = True) -> Iterator[Chunk]:
        for uri in self.files:
            dataset = self._dataset(uri)
            layout = self._layout if uri == self.files[0] else _TableColumns(dataset.schema, uri, self.columns)
            layout.shapes, layout.first_where = self._layout.shapes, self._layout.first_where
            if layout.kind != self.kind:
                raise DataError(f"{uri}: its feature columns hold {layout.kind} inputs, {self.files[0]}'s hold "
                                f"{self.kind}")
            start = 0
            batches = self._batches(uri, dataset, layout.needed(with_inputs))
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as exc:
                    raise DataError(f"{uri}: cannot read it as {self.fmt} near row {start}: {_brief(exc)}") from None
                if batch.num_rows:
                    yield layout.chunk(pa.Table.from_batches([batch]), uri, start, with_inputs)
                start += batch.num_rows


class HuggingFaceReader(Reader):
    """A ``datasets.Dataset`` saved with ``save_to_disk`` (a ClassLabel label keeps its class names)."""

    def __init__(self, source: str, columns: Columns) -> None:
        super().__init__()
        import datasets

        self.source, self.columns = source, columns
        path = self._stack.enter_context(storage.local_copy(source))
        try:
            hf = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            self._stack.close()
            raise DataError(f"{source} is not a Hugging Face dataset saved with save_to_disk: {exc}") from None
        if isinstance(hf, datasets.DatasetDict):
            self._stack.close()
            raise DataError(f"{source} holds a DatasetDict with splits {list(hf)}: point source at one split's "
                            f"folder, e.g. {storage.join(source, next(iter(hf)))}")
        self.hf = hf
        feature = hf.features.get(columns.label) if columns.label else None
        self.declared_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        self.has_labels = columns.label is not None
        self._layout = _TableColumns(hf.data.schema, source, columns, self.declared_names)
        self.kind, self.features = self._layout.kind, self._layout.features

    def chunks(self, with_inputs: bool = True) -> Iterator[Chunk]:
        needed = self._layout.needed(with_inputs)
        if not needed:  # a scan without label or id: only the row count matters
            for start in range(0, self.hf.num_rows, TABLE_BATCH_ROWS):
                yield Chunk(self.source, start, min(TABLE_BATCH_ROWS, self.hf.num_rows - start))
            return
        start = 0
        for table in self.hf.select_columns(needed).with_format("arrow").iter(batch_size=TABLE_BATCH_ROWS):
            yield self._layout.chunk(table, self.source, start, with_inputs)
            start += table.num_rows


# ----------------------------------------------------------------------------------------------- numpy
class _NpyStream:
    """Rows of one ``.npy`` stream (a file or an ``.npz`` member) read a slice at a time."""

    def __init__(self, fh: Any, where: str) -> None:
        from numpy.lib import format as npformat

        self.where = where
        try:
            version = npformat.read_magic(fh)
            read_header = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}
            if version not in read_header:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read_header[version](fh)
        except ValueError as exc:
            raise DataError(f"{where} is not a NumPy .npy array: {exc}") from None
        if fortran and len(shape) > 1:
            raise DataError(f"{where}: stored in Fortran order; save it with np.save(np.ascontiguousarray(a))")
        if dtype.hasobject or dtype.kind not in "biuf" or not shape:
            raise DataError(f"{where}: dtype {dtype} shape {list(shape)}: expected an array of numbers with "
                            "one row per example")
        self.fh, self.shape, self.dtype = fh, tuple(shape), dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def read(self, rows: int) -> np.ndarray:
        data = self.fh.read(rows * self.row_bytes)
        if len(data) != rows * self.row_bytes:
            raise DataError(f"{self.where}: truncated (the header says {self.shape[0]} rows)")
        values = np.frombuffer(data, dtype=self.dtype).reshape(rows, *self.shape[1:])
        return values.astype(self.dtype.newbyteorder("="), copy=False)  # native byte order for Arrow


class NumpyReader(Reader):
    """``.npy``: ``source`` holds the inputs, ``label``/``id`` name sibling ``.npy`` files (or URIs).
    ``.npz``: ``features`` (default ``x``), ``label`` and ``id`` name arrays inside it.

    uint8 inputs stay uint8 (pixels); other numbers become float32.
    """

    def __init__(self, source: str, fmt: str, columns: Columns) -> None:
        super().__init__()
        files = list_files(source)
        if len(files) != 1:
            raise ConfigError(f"{source}: format {fmt} reads one file, matched {len(files)}")
        self.uri, self.fmt, self.columns = files[0], fmt, columns
        if fmt == "npy" and columns.features:
            raise ConfigError(f"npy: the source file holds the inputs; features={columns.features} does not apply "
                              "(it names the array key of an .npz)")
        feats = columns.features or (["x"] if fmt == "npz" else None)
        if feats is not None and len(feats) != 1:
            raise ConfigError(f"{fmt}: features names one array, got {feats}")
        self.feature = feats[0] if feats else None
        self.features = [self.feature] if fmt == "npz" else None
        self.has_labels = columns.label is not None
        with self._streams(with_inputs=True) as streams:
            self.num_rows = self._check(streams)

    def _sibling(self, name: str) -> str:
        if "://" in name or name.startswith("/"):
            return name
        return posixpath.join(posixpath.dirname(self.uri), name)

    @contextlib.contextmanager
    def _streams(self, with_inputs: bool) -> Iterator[dict[str, _NpyStream]]:
        roles = {"x": self.feature, "y": self.columns.label, "id": self.columns.id}
        wanted = {r: n for r, n in roles.items() if n is not None and (with_inputs or r != "x")}
        with contextlib.ExitStack() as stack:
            streams: dict[str, _NpyStream] = {}
            if self.fmt == "npy":
                if with_inputs:
                    streams["x"] = _NpyStream(stack.enter_context(_open(self.uri)), self.uri)
                for role in ("y", "id"):
                    if role in wanted:
                        uri = self._sibling(wanted[role])
                        streams[role] = _NpyStream(stack.enter_context(_open(uri)), uri)
            else:
                archive = self._zip(stack.enter_context(_open(self.uri)))
                keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
                for role, key in wanted.items():
                    if key not in keys:
                        raise DataError(f"{self.uri}: no array '{key}' (arrays: {keys})")
                    streams[role] = _NpyStream(stack.enter_context(archive.open(f"{key}.npy")),
                                               f"{self.uri}[{key}]")
            yield streams

    def _zip(self, fh: Any) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(fh)
        except zipfile.BadZipFile as exc:
            raise DataError(f"{self.uri} is not a NumPy .npz archive: {exc}") from None

    def _check(self, streams: dict[str, _NpyStream]) -> int:
        n = streams["x"].shape[0]
        for role in ("y", "id"):
            s = streams.get(role)
            if s is not None and (s.shape[0] != n or len(s.shape) != 1):
                raise DataError(f"{s.where}: shape {list(s.shape)}, expected [{n}] (one value per row of "
                                f"{streams['x'].where})")
        return n

    def chunks(self, with_inputs: bool = True) -> Iterator[Chunk]:
        with self._streams(with_inputs) as streams:
            start = 0
            while start < self.num_rows:
                n = min(TABLE_BATCH_ROWS, self.num_rows - start)
                chunk = Chunk(self.uri, start, n)
                if "y" in streams:
                    chunk.labels = label_texts(pa.array(streams["y"].read(n)), chunk, self.columns.label or "y")
                if "id" in streams:
                    chunk.ids = as_ids(streams["id"].read(n), chunk, self.columns.id or "id")
                if with_inputs:
                    x = streams["x"].read(n)
                    x = x if x.dtype == np.uint8 else x.astype(np.float32)
                    check_finite(x, chunk, self.feature or "x")
                    chunk.inputs = x.reshape(n, 1) if x.ndim == 1 else x
                yield chunk
                start += n


def _brief(exc: Exception, limit: int = 300) -> str:
    """A library's error message, printable and short (a parser may quote binary bytes); a long one keeps
    its start and its end, where pyarrow puts the cause (``Row #4: Expected 3 columns, got 2``)."""
    text = "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in str(exc).replace("\n", " "))
    return text if len(text) <= limit else f"{text[:limit // 3]} ... {text[-(limit - limit // 3):]}"


def _open(uri: str) -> Any:
    fs, path = storage.filesystem(uri)
    try:
        return fs.open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{uri}: no such file or object") from None


# ---------------------------------------------------------------------------------------------- images
class ImageFolderReader(Reader):
    """``<source>/<class name>/<image>``: one sub-folder per class; images directly in ``source`` are
    unlabeled. Files are taken in sorted order (ids 0..N-1); other file types are skipped."""

    kind = "image"
    has_labels = True

    def __init__(self, source: str, columns: Columns) -> None:
        super().__init__()
        if columns.features or columns.label or columns.id:
            raise ConfigError("imagefolder: the class comes from the sub-folder name and ids from the sorted "
                              "file order; leave features, label and id unset")
        fs, path = storage.filesystem(source.rstrip("/"))
        if not fs.isdir(path):
            raise DataError(f"{source} is not a folder of class sub-folders (format=imagefolder)")
        root = path.rstrip("/") + "/"
        self.fs, self.source = fs, source
        self.paths = sorted(p for p in fs.find(path) if _extension(p) in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p[len(root):].split("/")))
        if not self.paths:
            raise DataError(f"{source}: no {'/'.join(IMAGE_EXTENSIONS)} images in it or its sub-folders")
        rel = [p[len(root):] for p in self.paths]
        self.classes = [sys.intern(r.split("/", 1)[0]) if "/" in r else None for r in rel]
        proto = storage.protocol_of(source)
        self.prefix = "" if storage.is_local(source) else f"{proto}://"

    def chunks(self, with_inputs: bool = True) -> Iterator[Chunk]:
        for lo in range(0, len(self.paths), IMAGE_BATCH_ROWS):
            paths = self.paths[lo:lo + IMAGE_BATCH_ROWS]
            names = [self.prefix + p.lstrip("/") for p in paths] if self.prefix else paths
            chunk = Chunk(self.source, lo, len(paths), row_names=names,
                          labels=pa.array(self.classes[lo:lo + IMAGE_BATCH_ROWS], type=pa.string()))
            if with_inputs:
                blobs = self.fs.cat(paths)
                chunk.inputs = np.array([blobs[p] for p in paths], dtype=object)
            yield chunk


class WebDatasetReader(Reader):
    """WebDataset tar shards: one sample per key, the image in a ``.png``/``.jpg``/``.jpeg`` member (or the
    member ``features`` names); ``label`` and ``id`` name a member (e.g. ``cls``) or a field of ``.json``."""

    kind = "image"

    def __init__(self, source: str, columns: Columns) -> None:
        super().__init__()
        self.files = list_files(source)
        if columns.features and len(columns.features) != 1:
            raise ConfigError(f"webdataset: features names one image member, got {columns.features}")
        self.image_key = columns.features[0].lstrip(".") if columns.features else None
        self.columns = columns
        self.has_labels = columns.label is not None

    def _samples(self, uri: str) -> Iterator[dict[str, Any]]:
        from webdataset.tariterators import group_by_keys, tar_file_expander

        with _open(uri) as fh:
            try:
                yield from group_by_keys(tar_file_expander([{"url": uri, "stream": fh}]))
            except (tarfile.TarError, OSError, ValueError) as exc:
                raise DataError(f"{uri} is not a readable WebDataset tar shard: {exc.args[0] if exc.args else exc}"
                                ) from None

    def _field(self, sample: dict[str, Any], name: str, where: str) -> Any:
        key = name.lstrip(".")
        if key in sample:
            return sample[key].decode("utf-8").strip()
        if "json" in sample:
            record = json.loads(sample["json"])
            if isinstance(record, dict) and name in record:
                return record[name]
        members = sorted(k for k in sample if not k.startswith("__"))
        raise DataError(f"{where}: no member '.{key}' and no '{name}' in its .json (members: {members})")

    def _image(self, sample: dict[str, Any], where: str) -> bytes:
        keys = [self.image_key] if self.image_key else [k for k in IMAGE_KEYS if k in sample]
        if not keys or keys[0] not in sample:
            members = sorted(k for k in sample if not k.startswith("__"))
            raise DataError(f"{where}: no image member ({', '.join('.' + k for k in keys or IMAGE_KEYS)}) "
                            f"(members: {members}; name it with features=<extension>)")
        return sample[keys[0]]

    def chunks(self, with_inputs: bool = True) -> Iterator[Chunk]:
        for uri in self.files:
            start = 0
            rows: list[dict[str, Any]] = []
            for sample in self._samples(uri):
                rows.append(sample)
                if len(rows) == IMAGE_BATCH_ROWS:
                    yield self._chunk(uri, start, rows, with_inputs)
                    start, rows = start + len(rows), []
            if rows:
                yield self._chunk(uri, start, rows, with_inputs)

    def _chunk(self, uri: str, start: int, rows: list[dict[str, Any]], with_inputs: bool) -> Chunk:
        names = [f"{uri}: sample '{s['__key__']}'" for s in rows]
        chunk = Chunk(uri, start, len(rows), row_names=names)
        col = self.columns
        if col.label is not None:
            raw = [self._field(s, col.label, w) for s, w in zip(rows, names, strict=True)]
            texts = [None if v is None else str(v) for v in raw]
            chunk.labels = label_texts(pa.array(texts, type=pa.string()), chunk, col.label)
        if col.id is not None:
            raw_ids = [self._field(s, col.id, w) for s, w in zip(rows, names, strict=True)]
            try:
                chunk.ids = np.array([int(v) for v in raw_ids], dtype=np.int64)
            except (TypeError, ValueError):
                bad = next(i for i, v in enumerate(raw_ids) if not str(v).lstrip("-").isdigit())
                raise DataError(f"{names[bad]}: id {raw_ids[bad]!r} is not an integer") from None
        if with_inputs:
            chunk.inputs = np.array([self._image(s, w) for s, w in zip(rows, names, strict=True)], dtype=object)
        return chunk



# ------------------------------------------------------------------------------------------------ text
def _no_columns(fmt: str, columns: Columns) -> None:
    given = {k: v for k, v in (("features", columns.features), ("label", columns.label), ("id", columns.id),
                               ("text", columns.text)) if v}
    if given:
        raise ConfigError(f"format {fmt}: each file is one document; {sorted(given)} name columns, which plain "
                          "text files do not have")


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is not text
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 4]!r}); save it "
                        "as UTF-8") from None


class TextFilesReader(Reader):
    """Plain text files, each file one document (UTF-8), in sorted path order: a folder's ``.txt`` files
    (sub-folders included), or every file that one file name or a glob matches."""

    kind = "text"

    def __init__(self, source: str, columns: Columns) -> None:
        super().__init__()
        _no_columns("text", columns)
        fs, path = storage.filesystem(source)
        files = list_files(source)
        if fs.isdir(path):
            files = [f for f in files if _extension(f) in TEXT_EXTENSIONS]
            if not files:
                raise DataError(f"{source}: no {'/'.join(TEXT_EXTENSIONS)} files in it or its sub-folders; name "
                                f"other files with a glob (e.g. {storage.join(source, '*.md')})")
        self.source, self.fs, self.files = source, fs, files

    def chunks(self, with_inputs: bool = True) -> Iterator[Chunk]:
        start, names, texts, size = 0, [], [], 0
        for uri in self.files:
            names.append(uri)
            if with_inputs:
                try:
                    data = self.fs.cat_file(uri)  # fsspec takes the URI (protocol and all)
                except FileNotFoundError:
                    raise DataError(f"{uri}: no such file or object (did the source change during the "
                                    "import?)") from None
                texts.append(_utf8(data, uri))
                size += len(data)
            if len(names) == TABLE_BATCH_ROWS or size >= TEXT_BATCH_BYTES:
                yield self._chunk(start, names, texts, with_inputs)
                start, names, texts, size = start + len(names), [], [], 0
        if names:
            yield self._chunk(start, names, texts, with_inputs)

    def _chunk(self, start: int, names: list[str], texts: list[str], with_inputs: bool) -> Chunk:
        chunk = Chunk(self.source, start, len(names), row_names=names)
        if with_inputs:
            chunk.inputs = np.array(texts, dtype=object)
        return chunk


class JsonLinesTextReader(Reader):
    """JSON Lines files whose records hold a text field (``Columns.text``), read line by line: a record
    that is not an object, lacks the field or holds no string there is named by file, row and line.
    Rows are counted from 0 over the non-blank lines of each file."""

    kind = "text"

    def __init__(self, source: str, columns: Columns) -> None:
        super().__init__()
        if columns.features or columns.label or columns.id:
            raise ConfigError("jsonl text: only text= names a field (features, label and id do not apply)")
        assert columns.text is not None
        self.files, self.column = list_files(source), columns.text

    def chunks(self, with_inputs: bool = True) -> Iterator[Chunk]:
        for uri in self.files:
            start, row, texts, size = 0, 0, [], 0
            with _open(uri) as fh:
                for line_no, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    if with_inputs:
                        texts.append(self._text(line, uri, row, line_no))
                        size += len(line)
                    row += 1
                    if row - start == TABLE_BATCH_ROWS or size >= TEXT_BATCH_BYTES:
                        yield self._chunk(uri, start, row, texts, with_inputs)
                        start, texts, size = row, [], 0
            if row > start:
                yield self._chunk(uri, start, row, texts, with_inputs)

    @staticmethod
    def _chunk(uri: str, start: int, stop: int, texts: list[str], with_inputs: bool) -> Chunk:
        return Chunk(uri, start, stop - start, inputs=np.array(texts, dtype=object) if with_inputs else None)

    def _text(self, line: bytes, uri: str, row: int, line_no: int) -> str:
        where = f"{uri}: row {row} (line {line_no})"
        try:
            record = json.loads(line)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            raise DataError(f"{where} is not valid JSON: {_brief(exc, 120)}") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: a JSON {type(record).__name__} where an object with a '{self.column}' "
                            "field was expected")
        if self.column not in record:
            raise DataError(f"{where}: no text field '{self.column}' (fields: {sorted(record)})")
        value = record[self.column]
        if not isinstance(value, str):
            kind = "null" if value is None else type(value).__name__
            raise DataError(f"{where}, column '{self.column}': {_short(value)} ({kind}) is not a string; the "
                            "text field must hold strings")
        return value
