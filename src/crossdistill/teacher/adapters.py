"""One interface over teacher models of any framework: Keras, TF SavedModel, TorchScript, ONNX.

``load_teacher(uri)`` reads the model from any fsspec URI, detects its format (suffix, then contents)
and returns a ``TeacherAdapter`` whose ``predict(x, layers)`` maps float32 ``(N, *input_shape)`` inputs
to ``{"logits": (N, C), "<layer>": ...}``. Framework imports happen only for the format in use, so a
server for an ONNX teacher never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossdistill import storage
from crossdistill.errors import ModelFormatError, TeacherError
from crossdistill.teacher.protocol import LOGITS

FORMATS = ("keras", "savedmodel", "torchscript", "onnx")
# Written by our exporters into a TorchScript archive: input shape and class count, which TorchScript lacks.
TORCHSCRIPT_META = "crossdistill.json"
_PROB_FLOOR = 1e-12


def first_line(exc: BaseException) -> str:
    """An exception as one short line (frameworks raise pages of C++ context)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class TeacherAdapter(ABC):
    """A loaded teacher: inputs ``(N, *input_shape)`` float32 -> logits ``(N, num_classes)``; or, for a model
    whose input is integer (a language model), token ids ``(N, T)`` -> logits per position ``(N, T, V)``
    (``num_classes`` is then the vocabulary size)."""

    format: str = ""

    def __init__(self, source: str, size_bytes: int, output_is_probs: bool) -> None:
        self.source = source
        self.size_bytes = int(size_bytes)
        self.output_is_probs = output_is_probs
        self.input_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = None
        self.num_parameters: int = 0
        self.input_dtype = np.dtype(np.float32)  # an integer dtype: a token model

    @property
    def takes_tokens(self) -> bool:
        """Whether the inputs are token ids (integers) and the outputs one row of logits per position."""
        return self.input_dtype.kind in "iu"

    @abstractmethod
    def layer_names(self) -> list[str]:
        """Names accepted by ``predict(..., layers=)``."""

    @abstractmethod
    def _run(self, x: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Framework forward: (model output, {layer: activation})."""

    def predict(self, x: np.ndarray, layers: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Logits (log of the outputs when the model ends in softmax) plus each requested layer."""
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if not x.flags.writeable:  # e.g. a view of a Parquet column: frameworks want their own buffer
            x = x.copy()
        if self.input_shape is not None and tuple(x.shape[1:]) != tuple(self.input_shape):
            raise TeacherError(f"input has shape {list(x.shape)}, teacher {self.source} expects "
                               f"[N, {', '.join(map(str, self.input_shape))}]")
        layers = tuple(layers)
        unknown = [n for n in layers if n not in self.layer_names()]
        if unknown:
            raise TeacherError(f"teacher {self.source} has no layer {unknown} "
                               f"(known: {self.layer_names()[:20]})")
        out, acts = self._run(x, layers)
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2 and len(out) == len(x) and not self.takes_tokens:
            out = out.reshape(len(x), -1)
        # A wrong output shape is passed on as is: the client checks every response.
        if self.output_is_probs:
            out = np.log(np.clip(out, _PROB_FLOOR, None))
        if self.num_classes is None and out.ndim == (3 if self.takes_tokens else 2):
            self.num_classes = int(out.shape[-1])
        result = {LOGITS: out}
        result.update({n: np.asarray(acts[n], dtype=np.float32) for n in layers})
        return result

    def describe(self) -> dict[str, Any]:
        """What a client may know about the teacher: sizes and shapes, never weights."""
        return {"format": self.format, "num_parameters": self.num_parameters, "size_bytes": self.size_bytes,
                "num_classes": self.num_classes, "input_dtype": self.input_dtype.name,
                "input_shape": list(self.input_shape) if self.input_shape is not None else None}


# --------------------------------------------------------------------------- Keras / SavedModel


def _pin_tf_threads(threads: int | None) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # the runtime is already initialised in this process: keep its pools


class KerasAdapter(TeacherAdapter):
    """A Keras 3 model (``.keras``); layers by name through a cached multi-output sub-model."""

    format = "keras"

    def __init__(self, path: Path, source: str, output_is_probs: bool, threads: int | None) -> None:
        super().__init__(source, _size_of(path), output_is_probs)
        _pin_tf_threads(threads)
        import keras

        try:
            self.model = keras.saving.load_model(str(path), compile=False)
        except Exception as exc:  # keras raises many types for a broken archive
            raise ModelFormatError(f"{source}: cannot load as a Keras .keras model: {first_line(exc)}") from None
        self.input_shape = tuple(int(d) for d in self.model.input_shape[1:])
        self.num_classes = int(self.model.output_shape[-1])
        self.num_parameters = int(self.model.count_params())
        self.input_dtype = np.dtype(str(self.model.inputs[0].dtype))
        self._subs: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.model.layers if type(layer).__name__ != "InputLayer"]

    def _sub_model(self, layers: tuple[str, ...]) -> Any:
        """A compiled graph function returning the logits and ``layers`` (eager Keras calls cost ~4x more)."""
        import keras
        import tensorflow as tf

        with self._lock:
            if layers not in self._subs:
                model = self.model
                if layers:
                    outs = [self.model.outputs[0], *(self.model.get_layer(n).output for n in layers)]
                    inputs = self.model.inputs[0] if len(self.model.inputs) == 1 else self.model.inputs
                    model = keras.Model(inputs, outs)
                spec = tf.TensorSpec([None, *self.input_shape], tf.as_dtype(self.input_dtype))
                self._subs[layers] = tf.function(lambda x: model(x, training=False), input_signature=[spec])
            return self._subs[layers]

    def _run(self, x: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        outs = self._sub_model(layers)(x)
        if not layers:
            return np.asarray(outs), {}
        return np.asarray(outs[0]), {n: np.asarray(o) for n, o in zip(layers, outs[1:], strict=True)}


class SavedModelAdapter(TeacherAdapter):
    """A TF SavedModel directory; its ``serving_default`` signature. Extra signature outputs are layers."""

    format = "savedmodel"

    def __init__(self, path: Path, source: str, output_is_probs: bool, threads: int | None) -> None:
        super().__init__(source, _size_of(path), output_is_probs)
        _pin_tf_threads(threads)
        import tensorflow as tf

        try:
            self._obj = tf.saved_model.load(str(path))
            self._fn = self._obj.signatures["serving_default"]
        except KeyError:
            raise ModelFormatError(f"{source}: SavedModel has no 'serving_default' signature") from None
        except Exception as exc:
            raise ModelFormatError(f"{source}: cannot load as a TF SavedModel: {first_line(exc)}") from None
        args = self._fn.structured_input_signature[1]
        if len(args) != 1:
            raise ModelFormatError(f"{source}: serving_default takes {sorted(args)}, expected one input tensor")
        self._arg, spec = next(iter(args.items()))
        self.input_shape = tuple(int(d) for d in spec.shape[1:]) if spec.shape.rank else None
        self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)
        outs = self._fn.structured_outputs
        self._out_key = LOGITS if LOGITS in outs else sorted(outs)[0]
        self._layer_keys = sorted(k for k in outs if k != self._out_key)
        last = outs[self._out_key].shape
        self.num_classes = int(last[-1]) if last.rank and last[-1] is not None else None
        variables = getattr(self._obj, "variables", None) or []
        self.num_parameters = int(sum(int(np.prod(v.shape)) for v in variables))

    def layer_names(self) -> list[str]:
        return list(self._layer_keys)

    def _run(self, x: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        import tensorflow as tf

        outs = self._fn(**{self._arg: tf.constant(x)})
        return outs[self._out_key].numpy(), {n: outs[n].numpy() for n in layers}


# --------------------------------------------------------------------------- TorchScript


class TorchScriptAdapter(TeacherAdapter):
    """A TorchScript archive.

    Loaded TorchScript modules run no Python forward hooks, so layers come from either the model's own
    outputs (a forward returning ``{"logits": ..., "<layer>": ...}``) or, for an ``nn.Sequential`` root,
    the prefix of its children up to the named one.
    """

    format = "torchscript"

    def __init__(self, path: Path, source: str, output_is_probs: bool, threads: int | None) -> None:
        super().__init__(source, _size_of(path), output_is_probs)
        import torch

        if threads:
            torch.set_num_threads(threads)
        extra = {TORCHSCRIPT_META: ""}
        try:
            self.model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
        except Exception as exc:
            raise ModelFormatError(f"{source}: cannot load as a TorchScript archive: {first_line(exc)}") from None
        meta = json.loads(extra[TORCHSCRIPT_META]) if extra[TORCHSCRIPT_META] else {}
        if meta.get("input_shape"):
            self.input_shape = tuple(int(d) for d in meta["input_shape"])
        if meta.get("num_classes"):
            self.num_classes = int(meta["num_classes"])
        if meta.get("input_dtype"):  # e.g. "int64": a token model
            self.input_dtype = np.dtype(meta["input_dtype"])
        self.num_parameters = int(sum(p.numel() for p in self.model.parameters()))
        self._sequential = self.model.original_name == "Sequential"
        self._dict_layers: list[str] = []
        if self.input_shape is not None:
            try:
                with torch.no_grad():
                    probe = self.model(torch.zeros((1, *self.input_shape), dtype=_torch_dtype(self.input_dtype)))
            except Exception as exc:  # the archive's recorded input shape does not fit the module
                raise ModelFormatError(f"{source}: a forward pass on 'input' of the recorded input_shape "
                                       f"{[1, *self.input_shape]} failed: {first_line(exc)}") from None
            if isinstance(probe, dict):
                self._dict_layers = [k for k in probe if k != LOGITS]

    def layer_names(self) -> list[str]:
        if self._sequential:
            return [name for name, _ in self.model.named_children()]
        return list(self._dict_layers)

    def _run(self, x: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        import torch

        with torch.no_grad():
            t = torch.from_numpy(x)
            if self._sequential and layers:
                acts = {}
                h = t
                for name, child in self.model.named_children():
                    h = child(h)
                    if name in layers:
                        acts[name] = h.numpy().copy()
                return h.numpy(), acts
            out = self.model(t)
            if isinstance(out, dict):
                if LOGITS not in out:
                    raise TeacherError(f"teacher {self.source} returned keys {sorted(out)}, expected '{LOGITS}'")
                return out[LOGITS].numpy(), {n: out[n].numpy() for n in layers}
            if isinstance(out, (tuple, list)):
                out = out[0]
            return out.numpy(), {}


def _torch_dtype(dtype: np.dtype) -> Any:
    import torch

    return torch.from_numpy(np.zeros(0, dtype)).dtype


# --------------------------------------------------------------------------- ONNX

_ONNX_INTS = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OnnxAdapter(TeacherAdapter):
    """An ONNX model through onnxruntime; layers are graph value names, added as extra graph outputs."""

    format = "onnx"

    def __init__(self, path: Path, source: str, output_is_probs: bool, threads: int | None) -> None:
        super().__init__(source, _size_of(path), output_is_probs)
        import onnx

        try:
            self._proto = onnx.load(str(path))
            onnx.checker.check_model(self._proto)
        except Exception as exc:
            raise ModelFormatError(f"{source}: not a valid ONNX model: {first_line(exc)}") from None
        self._threads = threads
        self._sessions: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        try:
            base = self._session(())
        except Exception as exc:  # onnxruntime refuses a graph the checker let through
            raise ModelFormatError(f"{source}: onnxruntime cannot load the ONNX model: {first_line(exc)}") from None
        inp = base.get_inputs()
        if len(inp) != 1:
            raise ModelFormatError(f"{source}: ONNX graph has inputs {[i.name for i in inp]}, expected one")
        self._input_name = inp[0].name
        if inp[0].type in _ONNX_INTS:
            self.input_dtype = np.dtype(_ONNX_INTS[inp[0].type])
        dims = inp[0].shape[1:]
        self.input_shape = tuple(int(d) for d in dims) if all(isinstance(d, int) for d in dims) else None
        last = base.get_outputs()[0].shape[-1]
        self.num_classes = int(last) if isinstance(last, int) else None
        weights = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
        # Float initializers are weights; integer ones are shapes and indices.
        self.num_parameters = int(sum(int(np.prod(t.dims)) for t in self._proto.graph.initializer
                                      if t.data_type in weights))
        self._values = [o for node in self._proto.graph.node for o in node.output if o]

    def _session(self, layers: tuple[str, ...]) -> Any:
        import onnx
        import onnxruntime as ort

        with self._lock:
            if layers not in self._sessions:
                proto = self._proto
                if layers:
                    proto = onnx.ModelProto()
                    proto.CopyFrom(self._proto)
                    for name in layers:
                        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                opts = ort.SessionOptions()
                if self._threads:
                    opts.intra_op_num_threads = self._threads
                    opts.inter_op_num_threads = 1
                self._sessions[layers] = ort.InferenceSession(
                    proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
            return self._sessions[layers]

    def layer_names(self) -> list[str]:
        outputs = {o.name for o in self._proto.graph.output}
        return [v for v in self._values if v not in outputs]

    def _run(self, x: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        outs = self._session(layers).run(None, {self._input_name: x})
        n_model = len(self._proto.graph.output)
        return outs[0], dict(zip(layers, outs[n_model:], strict=True))


# --------------------------------------------------------------------------- loading


_ADAPTERS: dict[str, type[TeacherAdapter]] = {
    "keras": KerasAdapter, "savedmodel": SavedModelAdapter, "torchscript": TorchScriptAdapter, "onnx": OnnxAdapter,
}
_EXPECTED = {"keras": "a Keras .keras archive (zip with config.json)",
             "savedmodel": "a TF SavedModel directory (with saved_model.pb)",
             "torchscript": "a TorchScript archive (zip with code/ and data.pkl)",
             "onnx": "an ONNX protobuf (.onnx)"}


def detect_format(path: Path) -> str | None:
    """The format the file's contents say, or None when they match no known format."""
    if path.is_dir():
        return "savedmodel" if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists() else None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if "config.json" in names and any(n.startswith("model.weights") for n in names):
            return "keras"
        if any(n.endswith("/data.pkl") for n in names) and any("/code/" in n for n in names):
            return "torchscript"
        return None
    with open(path, "rb") as fh:
        head = fh.read(64)
    # An ONNX ModelProto starts with field 1 (ir_version, varint: 0x08) and is not text.
    if head[:1] == b"\x08" and b"\x00" not in head[:1]:
        return "onnx"
    return None


def _suffix_format(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return {".keras": "keras", ".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript",
            ".torchscript": "torchscript"}.get(suffix)


def load_teacher(uri: str, fmt: str = "auto", output_is_probs: bool = False, *,
                 threads: int | None = None) -> TeacherAdapter:
    """Load the teacher at ``uri`` (any fsspec URI); ``fmt`` one of auto, keras, savedmodel, torchscript, onnx.

    ``threads`` pins the framework's intra-op thread pool (the node's cores are shared with the server).
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ModelFormatError(f"model_format '{fmt}' is not one of auto, {', '.join(FORMATS)}")
    with storage.local_copy(uri) as path:
        try:
            found = detect_format(path)
        except OSError as exc:
            raise ModelFormatError(f"{uri}: cannot read the model: {exc.strerror or first_line(exc)}") from None
        if fmt == "auto":
            fmt_used = found or _suffix_format(path)
            if fmt_used is None:
                raise ModelFormatError(f"{uri}: cannot tell the model format from its name or contents; "
                                       f"expected one of: {'; '.join(_EXPECTED.values())}")
        else:
            fmt_used = fmt
            if found is not None and found != fmt:
                raise ModelFormatError(f"{uri}: is {_EXPECTED[found]}, but model_format='{fmt}' expects "
                                       f"{_EXPECTED[fmt]}")
        if fmt_used == "savedmodel" and not path.is_dir():
            raise ModelFormatError(f"{uri}: is a file, expected {_EXPECTED['savedmodel']}")
        if fmt_used != "savedmodel" and path.is_dir():
            raise ModelFormatError(f"{uri}: is a directory, expected {_EXPECTED[fmt_used]}")
        return _ADAPTERS[fmt_used](path, uri, output_is_probs, threads)


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
