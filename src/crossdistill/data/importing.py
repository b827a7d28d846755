"""`crossdistill import-data`: a user's own data (any size, any fsspec URI) in, a crossdistill dataset out.

Two streaming passes over the source (readers in :mod:`crossdistill.data.formats`): the first reads
only the label and id columns (class names, row count, duplicate ids, split plan), the second reads
everything, validates it (NaN/Inf, ragged cells, non-numeric features, images that do not decode)
and appends it to a :class:`~crossdistill.data.shards.DatasetWriter` row group by row group. Memory is
bounded by a batch plus a few bytes per row (the split plan; ids only when an id column is given).

Labels: integers (gaps allowed) and texts become class indices 0..C-1 over ``class_names``, which is
the given list, the list the format declares (a Hugging Face ClassLabel), or the distinct labels
sorted (numerically when they are all integers). With ``holdout`` the outputs are ``<out>/train``,
``<out>/val`` and ``<out>/test`` (a part of size 0 is not written); without, ``<out>`` is the dataset.
No output gets its manifest before every output's shards are written, so an interrupted import leaves
nothing that looks complete.

Text (``text=<column>`` of a JSON Lines, Parquet, CSV or Hugging Face source, or ``format: text``: plain
``.txt`` files, each one document) goes to :mod:`crossdistill.data.text`: the first pass counts the
documents and plans the holdout by document, a second trains the tokenizer (unless ``tokenizer`` names
one) on the training documents, the last tokenizes, packs rows of ``seq_len + 1`` tokens and writes them;
``tokenizer.json`` lands in ``out`` before any manifest.
"""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationInfo, field_validator, model_validator

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.data.formats import Chunk, Columns, Reader, detect_format, open_reader
from crossdistill.data.preprocess import image_info
from crossdistill.data.shards import MANIFEST, UNLABELED, DatasetWriter
from crossdistill.data.splits import stratified_indices
from crossdistill.errors import ConfigError, DataError

PARTS = {"train": 0, "val": 1, "test": 2}  # split codes of the plan


class Holdout(StrictConfig):
    """Fractions of the rows held out (by seed) as a test and a validation dataset."""

    test: float = Field(0.0, ge=0, lt=1, description="fraction of the rows written to <out>/test")
    val: float = Field(0.0, ge=0, lt=1, description="fraction of the rows written to <out>/val")


class ImportDataConfig(StrictConfig):
    """Configuration of `crossdistill import-data`."""

    source: str = Field(..., description="file, folder or glob at any fsspec URI")
    format: Literal["auto", "parquet", "csv", "jsonl", "npy", "npz", "imagefolder", "webdataset", "hf", "text"] = Field(
        "auto", description="auto: from the file extensions (a folder: HF dataset or class sub-folders; .txt: "
                            "text); text: plain text files, each one document")
    features: list[str] | None = Field(
        None, description="input column(s), stacked in this order (default: all but label and id); npz: the "
                          "array key (default x); webdataset: the image member's extension")
    label: str | None = Field(None, description="label column (npz key, .npy file, webdataset member or json "
                                                "field); empty cells = unlabeled; unset = all unlabeled")
    id: str | None = Field(None, description="integer id column; unset = ids 0..N-1 in source order")
    class_names: list[str] | None = Field(None, description="the class list (a label outside it is an error); "
                                                            "default: the distinct labels, sorted")
    out: str = Field("runs/imported", description="output dataset (or folder of train/val/test with holdout)")
    name: str | None = Field(None, description="dataset name recorded in its meta (default: the source's name)")
    rows_per_shard: int = Field(50_000, ge=1)
    holdout: Holdout = Field(default_factory=Holdout)
    keep_labels: int | None = Field(None, ge=0, description="keep only this many training labels "
                                                            "(stratified by class); the rest become -1")
    seed: int = Field(0, description="seed of the holdout and keep_labels draws")
    size: list[int] | None = Field(None, description="images: [H, W] (or one side) to resize to; default: "
                                                     "the first image's")
    channels: Literal[1, 3] | None = Field(None, description="images: 1 grey or 3 RGB; default: 3 if any "
                                                             "image has colour")
    mean: list[float] | None = Field(None, description="per-channel (or per-feature) mean, subtracted "
                                                       "after scaling")
    std: list[float] | None = Field(None, description="per-channel (or per-feature) std, divided by")
    text: str | None = Field(None, description="text column (json field) of a JSON Lines, Parquet, CSV or HF "
                                               "source: import its documents as token rows for language models "
                                               "(format text needs none: each file is a document)")
    tokenizer: str | None = Field(None, description="text: a Hugging Face tokenizer.json (any fsspec URI), used "
                                                    "as is; unset: train a byte-level BPE tokenizer on the "
                                                    "training documents")
    vocab_size: int = Field(4096, ge=258, description="text: vocabulary size of the trained tokenizer (the 256 "
                                                      "bytes and 2 special tokens at least)")
    seq_len: int = Field(128, description="text: positions per row; a row holds seq_len + 1 tokens (each "
                                          "position's next-token target), the last row padded (see length)")
    eos_token: str | None = Field(None, description="text: end-of-text token, appended to every document "
                                                    "(default: <|endoftext|>; a given tokenizer: the first of "
                                                    "<|endoftext|>, </s>, <eos>, <|end_of_text|>, [SEP] it has)")
    pad_token: str | None = Field(None, description="text: padding token of the last row (default: <|pad|>; a "
                                                    "given tokenizer: <|pad|>, <pad>, [PAD] or <|padding|>, else "
                                                    "the end-of-text token)")

    @field_validator("features", "size", "mean", "std", "class_names", mode="before")
    @classmethod
    def _one_or_list(cls, value: Any, info: ValidationInfo) -> Any:
        """One value means a list of one; names typed on a command line may parse as numbers."""
        if isinstance(value, (str, int, float)):
            value = [value]
        if info.field_name in ("features", "class_names") and isinstance(value, list):
            value = [str(v) if isinstance(v, (int, float)) else v for v in value]
        return value

    @field_validator("seq_len")
    @classmethod
    def _seq_len(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"seq_len {value}: expected at least 2 (a row holds seq_len + 1 tokens: each "
                             "position and its next-token target)")
        return value

    @field_validator("label", "id", "text", mode="before")
    @classmethod
    def _name_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) else value

    @model_validator(mode="after")
    def _check(self) -> ImportDataConfig:
        if self.holdout.test + self.holdout.val >= 1:
            raise ValueError(f"holdout test + val = {self.holdout.test + self.holdout.val}: must be below 1")
        if self.size is not None and (len(self.size) not in (1, 2) or min(self.size) < 1):
            raise ValueError(f"size {self.size}: expected [H, W] or one side, positive")
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names}")
        return self


# ----------------------------------------------------------------------------------------------- pass 1
@dataclass
class _Scan:
    """What the label-and-id pass learns."""

    rows: int = 0
    class_names: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None  # class index per row (-1 unlabeled); kept only for keep_labels


def _ordered(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


def _unknown_label(texts: pa.Array, index: pa.Array) -> int | None:
    unknown = pc.and_(pc.is_valid(texts), pc.is_null(index))
    return int(pc.index(unknown, True).as_py()) if pc.any(unknown).as_py() else None


def _scan(reader: Reader, cfg: ImportDataConfig) -> _Scan:
    given = cfg.class_names or reader.declared_names
    value_set = pa.array(given, type=pa.string()) if given else None
    seen: set[str] = set()
    kept: list[pa.Array] = []
    ids: list[np.ndarray] = []
    places: list[tuple[int, Chunk]] = []
    scan = _Scan()
    label_col = cfg.label or "label"
    for chunk in reader.chunks(with_inputs=False):
        if chunk.labels is not None:
            if value_set is not None:
                row = _unknown_label(chunk.labels, pc.index_in(chunk.labels, value_set=value_set))
                if row is not None:
                    raise DataError(f"{chunk.locate(row)}, column '{label_col}': label {chunk.labels[row].as_py()!r} "
                                    f"is not one of class_names {list(given or [])} (labels match class names "
                                    "by their text)")
            else:
                seen.update(v for v in pc.unique(chunk.labels).to_pylist() if v is not None)
            if cfg.keep_labels is not None:
                kept.append(chunk.labels.dictionary_encode())
        if chunk.ids is not None:
            ids.append(chunk.ids)
            places.append((scan.rows, Chunk(chunk.where, chunk.start, chunk.num_rows)))
        scan.rows += chunk.num_rows
    if scan.rows == 0:
        raise DataError(f"{cfg.source}: no rows to import")
    scan.class_names = list(given) if given else _ordered(seen)
    if ids:
        _check_unique(np.concatenate(ids), places, cfg.id or "id")
    if cfg.keep_labels is not None:
        scan.labels = np.concatenate([_indices(a, scan.class_names) for a in kept]) if kept else None
    return scan


def _indices(texts: pa.Array, names: list[str]) -> np.ndarray:
    """Class index per row (-1 unlabeled) of label texts already known to be in ``names``."""
    index = pc.index_in(texts, value_set=pa.array(names, type=pa.string()))
    return pc.fill_null(index, UNLABELED).to_numpy(zero_copy_only=False).astype(np.int64)


def _check_unique(ids: np.ndarray, places: list[tuple[int, Chunk]], column: str) -> None:
    order = np.argsort(ids, kind="stable")
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if not len(same):
        return
    first, second = int(order[same[0]]), int(order[same[0] + 1])
    starts = [g for g, _ in places]

    def where(row: int) -> str:
        g, chunk = places[int(np.searchsorted(starts, row, side="right")) - 1]
        return chunk.locate(row - g)

    raise DataError(f"{where(second)}, column '{column}': duplicate id {ids[first]} (also at {where(first)}); "
                    "ids must be unique")


# ------------------------------------------------------------------------------------------------- plan
def _plan(scan: _Scan, cfg: ImportDataConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Split code per row (``PARTS``) and, with keep_labels, the rows whose label is dropped."""
    rng = np.random.default_rng(cfg.seed)
    codes = np.zeros(scan.rows, dtype=np.int8)
    if cfg.holdout.test or cfg.holdout.val:
        perm = rng.permutation(scan.rows)
        n_test = int(round(cfg.holdout.test * scan.rows))
        n_val = int(round(cfg.holdout.val * scan.rows))
        codes[perm[:n_test]] = PARTS["test"]
        codes[perm[n_test:n_test + n_val]] = PARTS["val"]
        del perm
    if cfg.keep_labels is None:
        return codes, None
    assert scan.labels is not None  # import_data refuses keep_labels without labels before the scan
    candidates = np.flatnonzero((codes == PARTS["train"]) & (scan.labels != UNLABELED))
    if cfg.keep_labels > len(candidates):
        raise ConfigError(f"keep_labels={cfg.keep_labels} exceeds the {len(candidates)} labeled training rows")
    keep = candidates[stratified_indices(scan.labels[candidates], cfg.keep_labels, rng)]
    drop = np.zeros(scan.rows, dtype=bool)
    drop[candidates] = True
    drop[keep] = False
    return codes, drop


# ----------------------------------------------------------------------------------------------- pass 2
@dataclass
class _Images:
    """What the write pass learns about the images (for the default preprocess spec)."""

    size: tuple[int, int] | None = None
    channels: int = 1
    varied: bool = False

    def check(self, chunk: Chunk) -> None:
        assert chunk.inputs is not None
        for i, data in enumerate(chunk.inputs):
            h, w, c = image_info(data, chunk.locate(i))
            self.size = self.size or (h, w)
            self.varied = self.varied or self.size != (h, w)
            self.channels = max(self.channels, c)


def _outputs(cfg: ImportDataConfig) -> dict[str, str]:
    if not (cfg.holdout.test or cfg.holdout.val):
        return {"dataset": cfg.out}
    fractions = {"train": 1.0, "val": cfg.holdout.val, "test": cfg.holdout.test}
    return {name: storage.join(cfg.out, name) for name in PARTS if fractions[name] > 0}


def _forget(uri: str) -> None:
    """Remove an old manifest at ``uri`` so a half-done rewrite never passes for complete."""
    manifest = storage.join(uri, MANIFEST)
    if storage.exists(manifest):
        fs, path = storage.filesystem(manifest)
        fs.rm(path)


def _preprocess(cfg: ImportDataConfig, kind: str, stored: np.ndarray, images: _Images) -> dict[str, Any]:
    """The preprocess spec recorded in the meta; ``stored`` is an empty slice of the stored input column."""
    spec: dict[str, Any] = {}
    if kind == "image":
        assert images.size is not None
        size = cfg.size or list(images.size)
        channels = cfg.channels or images.channels
        spec = {"kind": "image", "size": [size[0], size[-1]], "channels": channels, "scale": 1 / 255}
    elif stored.dtype == np.uint8:
        spec = {"scale": 1 / 255}
    width = spec["channels"] if kind == "image" else (stored.shape[1] if stored.ndim > 1 else 1)
    for key, stat in (("mean", cfg.mean), ("std", cfg.std)):
        if stat is not None:
            if len(stat) not in (1, width):
                raise ConfigError(f"{key} has {len(stat)} values: expected 1 or {width} (one per channel, or per "
                                  "feature of a table)")
            spec[key] = stat
    return spec


def _default_name(source: str) -> str:
    """The source's file or folder name without extension (a glob: its folder's name)."""
    path = source.rstrip("/").split("://")[-1]
    while any(ch in posixpath.basename(path) for ch in "*?["):
        path = posixpath.dirname(path)
    base = posixpath.basename(path)
    return (base[:-len(".tar.gz")] if base.endswith(".tar.gz") else posixpath.splitext(base)[0]) or "dataset"


def import_data(cfg: ImportDataConfig) -> dict[str, Any]:
    """Import ``cfg.source`` into crossdistill dataset(s); returns a summary.

    The summary: ``out``, ``format``, ``rows``, ``labeled`` (after keep_labels), ``class_names``,
    ``num_classes``, ``columns``, ``preprocess`` and ``datasets``: name (``dataset``, or
    ``train``/``val``/``test`` with holdout) -> ``{"uri", "rows", "labeled"}``.
    """
    fmt = detect_format(cfg.source) if cfg.format == "auto" else cfg.format
    if cfg.text is not None or fmt == "text":
        return _import_text(cfg, fmt)
    given = sorted(TEXT_OPTIONS & cfg.model_fields_set)
    if given:
        raise ConfigError(f"options for text imports only: {', '.join(given)}; set text=<column> (JSON Lines, "
                          "Parquet, CSV, HF) or format=text (plain text files)")
    with open_reader(cfg.source, fmt, Columns(features=cfg.features, label=cfg.label, id=cfg.id)) as reader:
        if cfg.keep_labels is not None and not reader.has_labels:
            raise ConfigError("keep_labels needs labels: set label= (the label column)")
        if reader.kind != "image" and (cfg.size is not None or cfg.channels is not None):
            raise ConfigError("size and channels apply to images; this source holds numeric features")
        scan = _scan(reader, cfg)
        meta: dict[str, Any] = {"name": cfg.name or _default_name(cfg.source), "source": cfg.source,
                                "source_format": fmt}
        if scan.class_names:
            meta.update(class_names=scan.class_names, num_classes=len(scan.class_names))
        if reader.features:
            meta["features"] = list(reader.features)
        counts, spec, images = _write(reader, cfg, scan, meta)
    names = scan.class_names
    summary = {
        "out": cfg.out, "source": cfg.source, "format": fmt, "rows": scan.rows,
        "labeled": sum(c[1] for c in counts.values()), "class_names": names, "num_classes": len(names),
        "columns": ["id", reader.kind, *(["y"] if reader.has_labels else [])], "preprocess": spec,
        "datasets": {name: {"uri": uri, "rows": counts[name][0], "labeled": counts[name][1]}
                     for name, uri in _outputs(cfg).items()},
    }
    if images.varied:
        summary["note"] = f"images vary in size; all are resized to {spec['size']} when read"
    print(describe(summary))
    return summary


def _write(reader: Reader, cfg: ImportDataConfig, scan: _Scan,
           meta: dict[str, Any]) -> tuple[dict[str, list[int]], dict[str, Any], _Images]:
    """The second pass: every row to its output. Returns per output [rows, labeled], the preprocess spec
    and what was learnt about the images. No output gets a manifest unless every one was written."""
    codes, drop = _plan(scan, cfg)
    outputs = _outputs(cfg)
    for uri in {cfg.out, *outputs.values()}:
        _forget(uri)
    counts = {name: [0, 0] for name in outputs}
    images, stored = _Images(), np.zeros(0, np.float32)
    with contextlib.ExitStack() as stack:
        writers = {name: stack.enter_context(DatasetWriter(
            uri, dict(meta, **({"split": name, "seed": cfg.seed} if name in PARTS else {})),
            rows_per_shard=cfg.rows_per_shard, row_group_rows=256 if reader.kind == "image" else 4096))
            for name, uri in outputs.items()}
        g = 0
        for chunk in reader.chunks(with_inputs=True):
            assert chunk.inputs is not None
            if g + chunk.num_rows > scan.rows:
                raise DataError(f"{chunk.where}: more rows than when the labels were scanned ({scan.rows}); "
                                "did the source change during the import?")
            if reader.kind == "image":
                images.check(chunk)
            stored = chunk.inputs[:0]
            batch = {"id": chunk.ids if chunk.ids is not None else np.arange(g, g + chunk.num_rows),
                     reader.kind: chunk.inputs}
            if reader.has_labels:
                batch["y"] = _labels(chunk, scan.class_names, cfg.label or "label")
                if drop is not None:
                    batch["y"][drop[g:g + chunk.num_rows]] = UNLABELED
            part = codes[g:g + chunk.num_rows]
            for name, writer in writers.items():
                idx = np.flatnonzero(part == PARTS.get(name, 0))
                rows = batch if len(idx) == len(part) else {k: v[idx] for k, v in batch.items()}
                writer.write(rows)
                counts[name][0] += len(idx)
                counts[name][1] += int((rows["y"] != UNLABELED).sum()) if "y" in rows else 0
            g += chunk.num_rows
        if g != scan.rows:
            raise DataError(f"{cfg.source}: {g} rows read, {scan.rows} when the labels were scanned; did the "
                            "source change during the import?")
        spec = _preprocess(cfg, reader.kind, stored, images)
        for writer in writers.values():
            writer.meta["preprocess"] = spec
            writer.finish_shard()  # every shard of every output is in place before any manifest
    return counts, spec, images


def _labels(chunk: Chunk, names: list[str], column: str) -> np.ndarray:
    assert chunk.labels is not None
    index = pc.index_in(chunk.labels, value_set=pa.array(names, type=pa.string()))
    row = _unknown_label(chunk.labels, index)
    if row is not None:  # the source changed between the two passes
        raise DataError(f"{chunk.locate(row)}, column '{column}': label {chunk.labels[row].as_py()!r} was not "
                        f"there when the labels were scanned (classes {names})")
    return pc.fill_null(index, UNLABELED).to_numpy(zero_copy_only=False).astype(np.int64)


def describe(summary: dict[str, Any]) -> str:
    """A few lines for people: rows, labeled, classes, where each output went (text: documents, tokens,
    rows, the vocabulary, bytes per token)."""
    if summary.get("kind") == "text":
        return _describe_text(summary)
    names = summary["class_names"]
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    lines = [f"imported {summary['rows']} rows ({summary['labeled']} labeled) from {summary['source']} "
             f"({summary['format']}); {len(names)} classes: {shown or '-'}"]
    for name, part in summary["datasets"].items():
        lines.append(f"  {name}: {part['uri']}  {part['rows']} rows, {part['labeled']} labeled")
    if "note" in summary:
        lines.append(f"  note: {summary['note']}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- text
TEXT_OPTIONS = {"tokenizer", "vocab_size", "seq_len", "eos_token", "pad_token"}
NOT_FOR_TEXT = ("features", "label", "id", "class_names", "keep_labels", "size", "channels", "mean", "std")
TEXT_FORMATS = ("jsonl", "parquet", "csv", "hf", "text")


def _check_text_options(cfg: ImportDataConfig, fmt: str) -> None:
    if fmt not in TEXT_FORMATS:
        raise ConfigError(f"text={cfg.text!r} names a text column of a JSON Lines, Parquet, CSV or HF source; format "
                          f"{fmt} has none (plain text files: format=text)")
    if fmt == "text" and cfg.text is not None:
        raise ConfigError(f"format text reads each file as one document; text={cfg.text!r} names a column, which "
                          "plain text files do not have (leave text unset)")
    given = [k for k in NOT_FOR_TEXT if getattr(cfg, k) is not None]
    if given:
        which = f"text={cfg.text!r}" if cfg.text is not None else "format text"
        raise ConfigError(f"{which} imports documents as token rows; {', '.join(given)} belong to feature and "
                          "image imports (rows are numbered, unlabeled): leave them unset")
    if cfg.tokenizer is not None and "vocab_size" in cfg.model_fields_set:
        raise ConfigError(f"vocab_size is the size of a trained tokenizer; tokenizer={cfg.tokenizer} brings its own "
                          "vocabulary (leave vocab_size unset)")


def _import_text(cfg: ImportDataConfig, fmt: str) -> dict[str, Any]:
    """A text import: count and split the documents, then :func:`crossdistill.data.text.write_text`."""
    _check_text_options(cfg, fmt)
    from crossdistill.data import text  # tokenizers is imported only by text imports

    with open_reader(cfg.source, fmt, Columns(text=cfg.text)) as reader:
        documents = sum(chunk.num_rows for chunk in reader.chunks(with_inputs=False))
        if documents == 0:
            raise DataError(f"{cfg.source}: an empty corpus: no documents to import")
        codes, _ = _plan(_Scan(rows=documents), cfg)
        outputs = _outputs(cfg)
        for uri in {cfg.out, *outputs.values()}:
            _forget(uri)
        meta: dict[str, Any] = {"name": cfg.name or _default_name(cfg.source), "source": cfg.source,
                                "source_format": fmt, **({"text": cfg.text} if cfg.text is not None else {})}
        parts = [text.Output(name, uri, PARTS.get(name, 0),
                             dict(meta, **({"split": name, "seed": cfg.seed} if name in PARTS else {})))
                 for name, uri in outputs.items()]
        result = text.write_text(reader, codes, parts, home=cfg.out, source=cfg.source, seq_len=cfg.seq_len,
                                 rows_per_shard=cfg.rows_per_shard, tokenizer=cfg.tokenizer,
                                 vocab_size=cfg.vocab_size, eos_token=cfg.eos_token, pad_token=cfg.pad_token,
                                 train_code=PARTS["train"])
    tokens = sum(p.tokens for p in parts)
    summary: dict[str, Any] = {
        "out": cfg.out, "source": cfg.source, "format": fmt, "kind": "text",
        "documents": sum(p.documents for p in parts), "tokens": tokens, "rows": sum(p.rows for p in parts),
        "seq_len": cfg.seq_len, "vocab_size": result.vocab_size, "eos_id": result.eos_id, "pad_id": result.pad_id,
        "dtype": result.dtype, "tokenizer": result.tokenizer_uri, "tokenizer_trained": result.trained,
        "vocab_fingerprint": result.fingerprint, "columns": ["id", "tokens", "length"],
        "bytes_per_token": round(sum(p.stored_bytes for p in parts) / max(tokens, 1), 3),
        "text_bytes_per_token": round(sum(p.text_bytes for p in parts) / max(tokens, 1), 3),
        "datasets": {p.name: {"uri": p.uri, "documents": p.documents, "tokens": p.tokens, "rows": p.rows}
                     for p in parts},
    }
    if result.empty_documents:
        summary["empty_documents"] = result.empty_documents
        summary["note"] = f"{result.empty_documents} empty documents skipped"
    print(describe(summary))
    return summary


def _describe_text(summary: dict[str, Any]) -> str:
    how = "trained byte-level BPE" if summary["tokenizer_trained"] else "given"
    lines = [f"imported {summary['documents']} documents, {summary['tokens']} tokens from {summary['source']} "
             f"({summary['format']}) as {summary['rows']} rows of seq_len {summary['seq_len']} + 1 tokens",
             f"  vocabulary: {summary['vocab_size']} tokens ({how}; {summary['tokenizer']}, fingerprint "
             f"{summary['vocab_fingerprint'][:16]}); tokens stored as {summary['dtype']}: "
             f"{summary['bytes_per_token']} bytes per token on disk, {summary['text_bytes_per_token']} bytes of "
             "text per token"]
    for name, part in summary["datasets"].items():
        lines.append(f"  {name}: {part['uri']}  {part['documents']} documents, {part['tokens']} tokens, "
                     f"{part['rows']} rows")
    if "note" in summary:
        lines.append(f"  note: {summary['note']}")
    return "\n".join(lines)
