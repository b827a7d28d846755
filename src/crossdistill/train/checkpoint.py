"""Training checkpoints: ``<out>/checkpoints/ckpt-<step>.pt``, each written atomically.

A checkpoint holds everything needed to continue bit-for-bit where training stopped: model,
optimizer and scheduler state, torch RNG state, epoch, batch position inside the epoch, optimizer
step and samples seen. The newest readable checkpoint wins, so a crash during a write (which never
leaves a partial file, but might on a faulty store) falls back to the previous one.
"""

from __future__ import annotations

import io
import re
from typing import Any

import torch

from crossdistill import storage
from crossdistill.errors import DataError

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_dir(out: str) -> str:
    return storage.join(out, CHECKPOINT_DIR)


def checkpoint_uri(out: str, step: int) -> str:
    return storage.join(checkpoint_dir(out), f"ckpt-{step:08d}.pt")


def list_checkpoints(out: str) -> list[tuple[int, str]]:
    """``(step, uri)`` of every checkpoint under ``out``, oldest first."""
    found = []
    for name in storage.listdir(checkpoint_dir(out)):
        match = _NAME.match(name)
        if match:
            found.append((int(match.group(1)), storage.join(checkpoint_dir(out), name)))
    return sorted(found)


def save_checkpoint(out: str, state: dict[str, Any], keep: int = 0) -> str:
    """Write ``state`` (must hold ``step``) atomically; keep only the newest ``keep`` (0 = all)."""
    uri = checkpoint_uri(out, int(state["step"]))
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(uri, buf.getvalue())
    if keep > 0:
        for _, old in list_checkpoints(out)[:-keep]:
            fs, path = storage.filesystem(old)
            fs.rm(path)
    return uri


def load_checkpoint(uri: str) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise DataError(f"checkpoint {uri} cannot be read: {exc}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise DataError(f"checkpoint {uri} holds no training state (no 'step')")
    return state


def latest_checkpoint(out: str) -> tuple[str, dict[str, Any]] | None:
    """The newest checkpoint that loads, or None when there is none."""
    errors = []
    for _, uri in reversed(list_checkpoints(out)):
        try:
            return uri, load_checkpoint(uri)
        except DataError as exc:
            errors.append(str(exc))
    if errors:
        raise DataError("no readable checkpoint under " + checkpoint_dir(out) + ": " + "; ".join(errors))
    return None
