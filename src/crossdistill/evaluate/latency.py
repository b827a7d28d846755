"""Model footprint and speed: parameter count, bytes on disk, CPU latency, teacher round-trip latency.

The student is timed in-process on the CPU with a pinned thread count (reported with the numbers, since
latency means little without it). The teacher is only ever seen through its endpoint: its latency is the
round trip the student side pays, and its size comes from the server's metadata, never from its weights.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from crossdistill import storage
from crossdistill.errors import ConfigError, DataError


@dataclass
class LatencyStats:
    """Wall-clock milliseconds per call of one batch, over ``repeats`` calls after ``warmup`` calls."""

    batch_size: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_parameters(model: Any) -> int:
    """Number of scalar parameters of a torch module (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return int(total)


def size_on_disk(uri: str) -> int:
    """Bytes of a saved file (or the sum over the files of a directory, e.g. a SavedModel)."""
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise DataError(f"{uri}: no such file; cannot measure its size on disk")
    if fs.isdir(path):
        return int(fs.du(path, total=True))
    return int(fs.size(path))


def time_calls(fn: Callable[[], Any], *, batch_size: int, repeats: int = 50, warmup: int = 5) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; median and p90 in ms."""
    if repeats < 1:
        raise ConfigError(f"latency repeats must be >= 1, got {repeats}")
    for _ in range(max(warmup, 0)):
        fn()
    samples = np.empty(repeats, dtype=np.float64)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        samples[i] = (time.perf_counter() - start) * 1e3
    return LatencyStats(batch_size, float(np.median(samples)), float(np.percentile(samples, 90)),
                        float(samples.mean()), float(samples.min()), repeats, max(warmup, 0))


def torch_cpu_latency(model: Any, input_shape: Sequence[int], *, batch_sizes: Sequence[int] = (1, 32),
                      repeats: int = 50, warmup: int = 5, threads: int = 1, seed: int = 0,
                      vocab_size: int | None = None) -> dict[str, Any]:
    """CPU latency of ``model`` on random inputs ``[B, *input_shape]`` for each batch size (token ids below
    ``vocab_size`` for a language model).

    torch's intra-op thread count is pinned to ``threads`` while timing and restored afterwards.
    Returns ``{"device": "cpu", "threads": n, "batches": [LatencyStats dict, ...]}``.
    """
    import torch

    if threads < 1:
        raise ConfigError(f"latency threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    was_training = getattr(model, "training", False)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    try:
        torch.set_num_threads(threads)
        if hasattr(model, "eval"):
            model.eval()
        with torch.inference_mode():
            for bs in batch_sizes:
                x = torch.rand((int(bs), *input_shape), generator=gen) if vocab_size is None else \
                    torch.randint(0, vocab_size, (int(bs), *input_shape), generator=gen)
                rows.append(time_calls(lambda x=x: model(x), batch_size=int(bs), repeats=repeats,
                                       warmup=warmup).to_dict())
    finally:
        torch.set_num_threads(previous)
        if was_training:
            model.train()
    return {"device": "cpu", "threads": threads, "batches": rows}


def teacher_latency(client: Any, input_shape: Sequence[int], *, batch_sizes: Sequence[int] = (1, 32),
                    repeats: int = 20, warmup: int = 3, seed: int = 0, vocab_size: int | None = None) -> dict[str, Any]:
    """Round-trip latency of ``client.infer(ids, x)`` as the student side sees it (network + serving).

    ``client`` is a ``crossdistill.teacher.client.TeacherClient`` (anything with ``infer(ids, x)``).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for bs in batch_sizes:
        x = rng.random((int(bs), *input_shape), dtype=np.float32) if vocab_size is None else \
            rng.integers(0, vocab_size, (int(bs), *input_shape))
        ids = np.arange(int(bs), dtype=np.int64)
        rows.append(time_calls(lambda ids=ids, x=x: client.infer(ids, x), batch_size=int(bs),
                               repeats=repeats, warmup=warmup).to_dict())
    return {"device": "remote (OIP round trip)", "batches": rows}


_FOOTPRINT_KEYS = ("num_parameters", "size_bytes")


def teacher_footprint(metadata: Mapping[str, Any]) -> dict[str, int | None]:
    """``num_parameters`` and ``size_bytes`` from the teacher server's metadata (None when absent).

    Looks at the top level, under ``parameters``, and in the ``platform`` string, where the crossdistill
    server puts them because OIP model metadata has no free-form field
    (``"crossdistill/keras num_parameters=50826 size_bytes=645354"``). Values may arrive as strings
    or as OIP parameter wrappers.
    """
    out: dict[str, int | None] = {}
    nested = metadata.get("parameters") if isinstance(metadata.get("parameters"), Mapping) else {}
    platform = str(metadata.get("platform") or "")
    for key in _FOOTPRINT_KEYS:
        value = _as_int(metadata.get(key, nested.get(key)))
        if value is None:
            found = re.search(rf"\b{key}=(\d+)", platform)
            value = int(found.group(1)) if found else None
        out[key] = value
    return out


def _as_int(raw: Any) -> int | None:
    if isinstance(raw, Mapping):  # e.g. {"int64_param": 123} from a protobuf-to-dict conversion
        raw = next((v for v in raw.values() if v not in (None, "")), None)
    if raw is None or isinstance(raw, bool):
        return None
    try:
        return int(float(raw))
    except (TypeError, ValueError):
        return None
