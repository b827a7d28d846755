"""`pseudo-label`: the teacher labels a dataset once (offline mode), one shard of it per parallel task.

Task ``shard_index`` of ``num_shards`` labels the examples at positions ``i % num_shards ==
shard_index``, so the tasks' outputs concatenate back to every example exactly once. The output is a
soft-label dataset (``id`` + ``logits``, or ``topk_logprobs`` + ``topk_indices``, optionally
``layer/<name>``); nothing is written unless every example of the shard got its answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field, model_validator
from tqdm import tqdm

from crossdistill.config import StrictConfig
from crossdistill.data.shards import Dataset, read_dataset, write_dataset
from crossdistill.errors import ConfigError, DataError, TeacherResponseError
from crossdistill.teacher import protocol as P
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig


class PseudoLabelConfig(StrictConfig):
    """Configuration of `crossdistill pseudo-label`."""

    data: str = Field(..., description="dataset URI to label (columns id, x)")
    teacher_url: str = Field(..., description="host:port of the teacher's OIP gRPC endpoint")
    model_name: str = P.DEFAULT_MODEL_NAME
    out: str = Field(..., description="soft-label dataset URI to write")
    top_k: int = Field(0, ge=0, description="0 = dense logits")
    temperature: float = Field(1.0, gt=0)
    fp16: bool = False
    layers: list[str] = Field(default_factory=list, description="intermediate layers to store as layer/<name>")
    batch_size: int = Field(256, ge=1)
    max_in_flight: int = Field(4, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(5, ge=0)
    deadline_s: float = Field(300.0, gt=0)
    ready_timeout_s: float = Field(120.0, gt=0)
    shard_index: int = Field(0, ge=0)
    num_shards: int = Field(1, ge=1)
    out_shards: int = Field(1, ge=1, description="Parquet files of the output dataset")
    progress: bool = True
    label_map: list[int] | None = Field(
        None, description="a specialist teacher: output index -> global class id (written to the table's meta; "
                          "None = the teacher outputs every class in order)")

    @model_validator(mode="after")
    def _shard_in_range(self) -> PseudoLabelConfig:
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index={self.shard_index} must be < num_shards={self.num_shards}")
        return self


def run_pseudo_label(cfg: PseudoLabelConfig) -> str:
    """Label this task's part of ``cfg.data`` through the teacher; returns ``cfg.out``."""
    data = read_dataset(cfg.data, columns=["x"])
    positions = np.arange(cfg.shard_index, len(data), cfg.num_shards)
    ids, x = data.ids[positions], data["x"][positions]
    if len(np.unique(ids)) != len(ids):
        raise ConfigError(f"{cfg.data}: ids are not unique; pseudo labels are keyed by id")
    client_cfg = TeacherClientConfig(url=cfg.teacher_url, model_name=cfg.model_name, max_in_flight=cfg.max_in_flight,
                                     timeout_s=cfg.timeout_s, retries=cfg.retries, deadline_s=cfg.deadline_s,
                                     top_k=cfg.top_k, temperature=cfg.temperature, fp16=cfg.fp16, layers=cfg.layers)
    with TeacherClient(client_cfg) as client:
        client.wait_ready(cfg.ready_timeout_s)
        meta = client.metadata()
        _label_map_meta(cfg, {}, meta, data.meta.get("num_classes"))  # a wrong map fails before any labelling
        columns = _collect(client, ids, x, cfg)
    num_classes = meta.get("num_classes") or data.meta.get("num_classes")
    if cfg.top_k == 0 and num_classes is None:
        num_classes = int(columns[P.LOGITS].shape[1])
    specialist = _label_map_meta(cfg, columns, meta, data.meta.get("num_classes"))
    if specialist:
        num_classes = specialist["num_classes"]
    out_meta: dict[str, Any] = {
        "num_classes": num_classes, "temperature": float(cfg.temperature), "teacher": cfg.model_name,
        "teacher_url": cfg.teacher_url, "teacher_platform": meta.get("platform", ""),
        "mode": "dense" if cfg.top_k == 0 else "topk", "top_k": cfg.top_k, "source": cfg.data,
        "shard_index": cfg.shard_index, "num_shards": cfg.num_shards,
        "class_names": data.meta.get("class_names"), "name": data.meta.get("name"), **specialist,
    }
    write_dataset(cfg.out, Dataset({"id": ids, **columns}, out_meta), num_shards=min(cfg.out_shards, max(1, len(ids))))
    return cfg.out


def _label_map_meta(cfg: PseudoLabelConfig, columns: dict[str, np.ndarray], server_meta: dict[str, Any],
                    global_classes: Any) -> dict[str, Any]:
    """The meta keys that make the table a specialist's (crossdistill.experts.tables reads them):
    ``label_map``, ``num_classes`` = the teacher's output width, ``global_num_classes``."""
    if cfg.label_map is None:
        return {}
    where = f"pseudo-label of teacher '{cfg.model_name}' at {cfg.teacher_url}"
    width = int(columns[P.LOGITS].shape[1]) if P.LOGITS in columns and len(columns[P.LOGITS]) else \
        server_meta.get("num_classes")
    if width is not None and int(width) != len(cfg.label_map):
        raise DataError(f"{where}: label_map has {len(cfg.label_map)} entries {cfg.label_map} but the teacher "
                        f"outputs {int(width)} values (one global class id per output expected)")
    if global_classes is None:
        raise DataError(f"{where}: a label_map needs the global class count, but {cfg.data} has no "
                        "'num_classes' in its meta")
    from crossdistill.experts.tables import validate_label_map

    validate_label_map(cfg.label_map, len(cfg.label_map), int(global_classes), where=where)
    return {"label_map": list(cfg.label_map), "num_classes": len(cfg.label_map),
            "global_num_classes": int(global_classes)}


def _batches(ids: np.ndarray, x: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size], x[start:start + size], start


def _collect(client: TeacherClient, ids: np.ndarray, x: np.ndarray, cfg: PseudoLabelConfig) -> dict[str, np.ndarray]:
    """Every answer placed at its batch's rows; raises unless every row was answered exactly once."""
    columns: dict[str, np.ndarray] = {}
    filled = np.zeros(len(ids), dtype=bool)
    bar = tqdm(total=len(ids), desc=f"pseudo-label {cfg.shard_index + 1}/{cfg.num_shards}", unit="ex",
               disable=not cfg.progress)
    with bar:
        for out, start in client.stream(_batches(ids, x, cfg.batch_size)):
            rows = slice(start, start + len(out))
            if not np.array_equal(out.ids, ids[rows]) or filled[rows].any():
                raise TeacherResponseError(f"answer for rows {start}..{start + len(out)} carries ids that do not "
                                           f"match that batch (or were already labeled)")
            for name, value in _fields(out).items():
                if name not in columns:
                    columns[name] = np.zeros((len(ids), *value.shape[1:]), dtype=value.dtype)
                columns[name][rows] = value
            filled[rows] = True
            bar.update(len(out))
    if not filled.all():
        missing = ids[~filled]
        raise TeacherResponseError(f"{len(missing)} example(s) got no teacher answer (first ids {missing[:5].tolist()}); "
                                   f"nothing written to {cfg.out}")
    if not columns:  # an empty shard: empty columns of the right kind
        columns = {P.LOGITS: np.zeros((0, 0), np.float32)} if cfg.top_k == 0 else {
            P.TOPK_LOGPROBS: np.zeros((0, cfg.top_k), np.float32), P.TOPK_INDICES: np.zeros((0, cfg.top_k), np.int64)}
    return columns


def _fields(out: P.TeacherOutput) -> dict[str, np.ndarray]:
    fields: dict[str, np.ndarray] = {}
    if out.logits is not None:
        fields[P.LOGITS] = out.logits.astype(np.float32)
    if out.topk_logprobs is not None:
        fields[P.TOPK_LOGPROBS] = out.topk_logprobs.astype(np.float32)
        fields[P.TOPK_INDICES] = out.topk_indices.astype(np.int64)
    for name, value in out.layers.items():
        fields[P.LAYER_PREFIX + name] = value.astype(np.float32)
    return fields
