"""Export a trained student for serving: TorchScript (trace or script) and ONNX, each checked on load.

An export is written to a local temporary file, loaded back (torch.jit / onnxruntime), compared with
the eager model on an example batch, and only then copied to its URI in one atomic write. A file that
is not loadable or disagrees with the model never reaches the destination.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from crossdistill import storage
from crossdistill.errors import ConfigError, ModelFormatError

ExportFormat = Literal["torchscript", "onnx"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "student.torchscript.pt", "onnx": "student.onnx"}
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def example_input(input_shape: Sequence[int], batch_size: int = 2, seed: int = 0, vocab_size: int | None = None) -> Any:
    """A random float32 batch ``[B, *input_shape]`` (token ids below ``vocab_size`` for a language model; B >= 2
    so ONNX export keeps the batch axis dynamic)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    if vocab_size is not None:
        return torch.randint(0, vocab_size, (batch_size, *input_shape), generator=gen)
    return torch.rand((batch_size, *input_shape), generator=gen)


def _reference(model: Any, example: Any) -> np.ndarray:
    import torch

    model.eval()
    with torch.inference_mode():
        return _first_tensor(model(example)).detach().cpu().numpy()


def _first_tensor(out: Any) -> Any:
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, dict):
        return out.get(OUTPUT_NAME, next(iter(out.values())))
    return out


def _check_close(got: np.ndarray, want: np.ndarray, what: str, atol: float, rtol: float) -> float:
    if got.shape != want.shape:
        raise ModelFormatError(f"{what}: output shape {got.shape} differs from the torch model's {want.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    if not np.allclose(got, want, atol=atol, rtol=rtol):
        raise ModelFormatError(f"{what}: output differs from the torch model by up to {diff:.3g} "
                               f"(allowed atol={atol}, rtol={rtol})")
    return diff


def export_torchscript(model: Any, example: Any, uri: str, *, method: Literal["trace", "script"] = "trace",
                       atol: float = 1e-5, rtol: float = 1e-4) -> dict[str, Any]:
    """Write ``model`` as TorchScript to ``uri``; returns ``{"uri", "method", "max_abs_diff"}``.

    The archive carries ``crossdistill.json`` (input shape, class count), which TorchScript itself
    lacks, so the exported student can be served as a teacher by ``crossdistill.teacher.adapters``.
    """
    import torch

    from crossdistill.teacher.adapters import TORCHSCRIPT_META

    if method not in ("trace", "script"):
        raise ConfigError(f"torchscript method must be 'trace' or 'script', got {method!r}")
    try:
        with torch.no_grad():
            scripted = torch.jit.trace(model, example) if method == "trace" else torch.jit.script(model)
    except Exception as exc:  # torch raises many types here; all mean "cannot export"
        raise ModelFormatError(f"{uri}: torch.jit.{method} failed for {type(model).__name__}: {exc}") from exc
    want = _reference(model, example)
    meta = {"input_shape": list(example.shape[1:]), "num_classes": int(want.shape[-1])}
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
    data = buf.getvalue()
    loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    loaded.eval()
    # a second batch size checks that tracing did not bake the example's batch size in
    checks = [example, torch.cat([example, example[:1]])]
    diff = 0.0
    with torch.inference_mode():
        for x in checks:
            got = _first_tensor(loaded(x)).numpy()
            diff = max(diff, _check_close(got, _reference(model, x), f"{uri} (TorchScript, batch {len(x)})",
                                          atol, rtol))
    storage.write_bytes(uri, data)
    return {"uri": uri, "method": method, "max_abs_diff": diff}


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """The dynamo exporter prints progress and warns about optional packages; keep the logs clean."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: Any, example: Any, uri: str, *, opset: int | None = None,
                atol: float = 1e-4, rtol: float = 1e-3) -> dict[str, Any]:
    """Write ``model`` as ONNX (dynamic batch axis) to ``uri`` after checking it in onnxruntime.

    Input ``input`` ``[batch, *input_shape]`` float32, output ``logits``. Returns
    ``{"uri", "opset", "max_abs_diff"}``.
    """
    import onnx
    import onnxruntime as ort
    import torch

    if len(example) < 2:
        raise ConfigError("export_onnx needs an example batch of >= 2 rows to keep the batch axis dynamic")
    model.eval()
    with tempfile.TemporaryDirectory(prefix="crossdistill-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with _quiet_onnx_exporter():
                torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  opset_version=opset, verbose=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            raise ModelFormatError(f"{uri}: torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
        try:
            proto = onnx.load(str(path))
            onnx.checker.check_model(proto)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelFormatError(f"{uri}: exported ONNX model does not load in onnx/onnxruntime: {exc}") from exc
        diff = 0.0
        for x in (example, torch.cat([example, example[:1]])):
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(np.float32)})[0]
            diff = max(diff, _check_close(got, _reference(model, x), f"{uri} (ONNX, batch {len(x)})", atol, rtol))
        opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        storage.put_file(path, uri)
    return {"uri": uri, "opset": opset_used, "max_abs_diff": diff}


def export_student(model: Any, input_shape: Sequence[int], out_uri: str,
                   formats: Sequence[str] = FORMATS, *, torchscript_method: Literal["trace", "script"] = "trace",
                   vocab_size: int | None = None) -> dict[str, dict[str, Any]]:
    """Export ``model`` in each of ``formats`` to ``<out_uri>/student.{torchscript.pt,onnx}``.

    Each file is written only after it loaded back and matched the model; a failure raises
    ModelFormatError (the caller then must not report the step as done). Returns
    ``{format: {"uri": ..., ...}}``.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"export: unknown format(s) {unknown}; expected any of {list(FORMATS)}")
    example = example_input(input_shape, vocab_size=vocab_size)
    done: dict[str, dict[str, Any]] = {}
    for fmt in dict.fromkeys(formats):  # de-duplicate, keep order
        uri = storage.join(out_uri, FILE_NAMES[fmt])
        if fmt == "torchscript":
            done[fmt] = export_torchscript(model, example, uri, method=torchscript_method)
        else:
            done[fmt] = export_onnx(model, example, uri)
    return done
