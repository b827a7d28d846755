"""`pseudo-label`: the teacher labels a dataset once (offline mode), one part of it per parallel task.

Task ``shard_index`` of ``num_shards`` reads only its part of the input (``DatasetReader.partition``:
a contiguous run of fragments, ~1/n of the rows) and streams it through the teacher
(:func:`crossdistill.teacher.labeling.label_dataset`), writing its soft labels as they come: one row
group per input fragment, in input order. The tasks' outputs, read in task order, therefore hold every
input row exactly once, at the same global row as its input, in fragments that match the input's one
to one (the offline trainer reads soft labels in step with inputs by that order). The output is a
soft-label dataset (``id`` + ``logits``, or ``topk_logprobs`` + ``topk_indices``, optionally
``layer/<name>``); its manifest is written last, so a task that fails leaves nothing that looks
complete. ``teacher_url`` may be ``inprocess:<model uri>`` (the teacher runs inside this task).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from crossdistill.config import StrictConfig
from crossdistill.data.shards import DatasetReader, DatasetWriter, Fragment, index_dtype
from crossdistill.errors import DataError
from crossdistill.teacher import protocol as P
from crossdistill.teacher.client import TeacherClientConfig, check_url
from crossdistill.teacher.labeling import check_vocabulary, label_dataset, open_teacher
from crossdistill.teacher.transport import ClientTLS


class PseudoLabelConfig(StrictConfig):
    """Configuration of `crossdistill pseudo-label`."""

    data: str = Field(..., description="dataset URI to label (columns id, x)")
    teacher_url: str = Field(..., description="host:port (or dns:///name:port) of the teacher's OIP gRPC endpoint, "
                                              "or inprocess:<model uri> to run the teacher inside this task")
    model_name: str = P.DEFAULT_MODEL_NAME
    out: str = Field(..., description="soft-label dataset URI to write")
    top_k: int = Field(0, ge=0, description="0 = dense logits")
    temperature: float = Field(1.0, gt=0)
    fp16: bool = False
    layers: list[str] = Field(default_factory=list, description="intermediate layers to store as layer/<name>")
    batch_size: int = Field(256, ge=1)
    max_in_flight: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        4, description="requests outstanding at once; auto = sized from the measured round trip")
    timeout_s: float = Field(60.0, gt=0)
    deadline_s: float = Field(600.0, gt=0, description="a teacher outage this long is ridden out")
    ready_timeout_s: float = Field(120.0, gt=0)
    token_file: str | None = Field(None, description="file holding the teacher's bearer token")
    tls: ClientTLS | None = Field(None, description="TLS towards the teacher (ca_file, cert_file, key_file)")
    shard_index: int = Field(0, ge=0)
    num_shards: int = Field(1, ge=1)
    out_shards: int = Field(1, ge=1, description="Parquet files of the output dataset (split between fragments)")
    progress: bool = True
    label_map: list[int] | None = Field(
        None, description="a specialist teacher: output index -> global class id (written to the table's meta; "
                          "None = the teacher outputs every class in order)")

    @field_validator("teacher_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @model_validator(mode="after")
    def _shard_in_range(self) -> PseudoLabelConfig:
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index={self.shard_index} must be < num_shards={self.num_shards}")
        return self


def client_config(cfg: PseudoLabelConfig) -> TeacherClientConfig:
    """The teacher client settings of a pseudo-label task."""
    return TeacherClientConfig(url=cfg.teacher_url, model_name=cfg.model_name, max_in_flight=cfg.max_in_flight,
                               timeout_s=cfg.timeout_s, deadline_s=cfg.deadline_s, top_k=cfg.top_k,
                               temperature=cfg.temperature, fp16=cfg.fp16, layers=cfg.layers,
                               token_file=cfg.token_file, tls=cfg.tls)


def run_pseudo_label(cfg: PseudoLabelConfig) -> str:
    """Label this task's part of ``cfg.data`` through the teacher, writing as it goes; returns ``cfg.out``."""
    reader = DatasetReader(cfg.data)
    fragments = reader.partition(cfg.shard_index, cfg.num_shards)
    with open_teacher(client_config(cfg)) as teacher:
        teacher.wait_ready(cfg.ready_timeout_s)
        server_meta = teacher.metadata()
        if reader.meta.get("kind") == "text":  # token ids mean the same tokens on both sides, or nothing
            check_vocabulary(server_meta, cfg.teacher_url, str(reader.meta.get("vocab_fingerprint")),
                             reader.description)
        specialist = _label_map_meta(cfg, server_meta.get("num_classes"), reader.meta.get("num_classes"))
        meta = _meta(cfg, reader, fragments, server_meta, specialist)
        bounds = _shard_ends(fragments, cfg.out_shards)
        with DatasetWriter(cfg.out, meta, rows_per_shard=max(1, sum(f.num_rows for f in fragments))) as writer:
            for part in label_dataset(teacher, reader, fragments, batch_size=cfg.batch_size,
                                      progress=f"pseudo-label {cfg.shard_index + 1}/{cfg.num_shards}"
                                      if cfg.progress else None):
                if len(part):
                    if writer.spec is None:  # the first answers: their width is the teacher's
                        width = part.outputs[P.LOGITS].shape[-1] if P.LOGITS in part.outputs else None
                        _label_map_meta(cfg, width, reader.meta.get("num_classes"))  # a label_map must fit it
                        writer.meta["num_classes"] = writer.meta["num_classes"] or width
                    writer.row_group_rows = len(part)  # this fragment becomes exactly one row group
                    writer.write({"id": part.ids, **part.outputs})
                if part.index in bounds:
                    writer.finish_shard()
            if writer.spec is None:  # an empty part: empty columns of the right kind
                writer.write(_empty_columns(cfg, server_meta))
    return cfg.out


def _meta(cfg: PseudoLabelConfig, reader: DatasetReader, fragments: list[Fragment], server: dict[str, Any],
          specialist: dict[str, Any]) -> dict[str, Any]:
    """The soft-label dataset's meta: the teacher's label space and the input part it covers."""
    first = reader.fragments.index(fragments[0]) if fragments else 0
    rows = [fragments[0].start, fragments[-1].start + fragments[-1].num_rows] if fragments else [0, 0]
    return {
        "num_classes": server.get("num_classes"), "class_names": server.get("class_names"),
        "vocab_fingerprint": server.get("vocab_fingerprint"),
        "temperature": float(cfg.temperature), "teacher": cfg.model_name, "teacher_url": cfg.teacher_url,
        "teacher_platform": server.get("platform", ""), "mode": "dense" if cfg.top_k == 0 else "topk",
        "top_k": cfg.top_k, "source": cfg.data, "name": reader.meta.get("name"),
        "shard_index": cfg.shard_index, "num_shards": cfg.num_shards,
        "input_fragments": [first, first + len(fragments)], "input_num_fragments": len(reader.fragments),
        "input_rows": rows, "input_num_examples": reader.num_examples, **specialist,
    }


def _shard_ends(fragments: list[Fragment], out_shards: int) -> set[int]:
    """Positions of the fragments after which an output shard ends (~equal rows, never inside a fragment)."""
    total = sum(f.num_rows for f in fragments)
    ends, done = set(), 0
    for i, f in enumerate(fragments):
        before = done * out_shards // max(total, 1)
        done += f.num_rows
        if done * out_shards // max(total, 1) > before or i == len(fragments) - 1:
            ends.add(i)
    return ends


def _empty_columns(cfg: PseudoLabelConfig, server: dict[str, Any]) -> dict[str, np.ndarray]:
    """No rows, but the columns (and widths) the other parts have, so all parts read back as one dataset."""
    cols: dict[str, np.ndarray] = {"id": np.zeros(0, np.int64)}
    if cfg.top_k == 0:
        cols[P.LOGITS] = np.zeros((0, int(server.get("num_classes") or 0)), np.float32)
    else:
        cols[P.TOPK_LOGPROBS] = np.zeros((0, cfg.top_k), np.float32)
        width = int(server.get("num_classes") or 0)
        cols[P.TOPK_INDICES] = np.zeros((0, cfg.top_k), index_dtype(width) if width else np.int64)
    for name in cfg.layers:
        shape = (server.get("layers") or {}).get(name) or [-1, 0]
        cols[P.LAYER_PREFIX + name] = np.zeros((0, *[max(int(d), 0) for d in shape[1:]]), np.float32)
    return cols


def _label_map_meta(cfg: PseudoLabelConfig, width: Any, global_classes: Any) -> dict[str, Any]:
    """The meta keys that make the table a specialist's (crossdistill.experts.tables reads them):
    ``label_map``, ``num_classes`` = the teacher's output width, ``global_num_classes``."""
    if cfg.label_map is None:
        return {}
    where = f"pseudo-label of teacher '{cfg.model_name}' at {cfg.teacher_url}"
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
