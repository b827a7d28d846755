"""Teachers and augmentation for the quality suite (benchmarks/quality.py).

The main teacher is a PyTorch CNN (two blocks of two 3x3 convs, 32 and 64 channels, batch norm,
dropout, random 2-pixel shifts, OneCycle lr) exported to TorchScript so the project's teacher server
can serve it. The cross-framework teacher is a Keras MLP trained by ``train_keras``; its ONNX twin is
written here from the Keras weights, because no Keras-to-ONNX converter ships with the project.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossdistill import storage
from crossdistill.errors import ModelFormatError


def random_shift(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by its own random (dy, dx) in [-max_shift, max_shift], zero-filled."""
    if max_shift <= 0:
        return x.copy()
    n, _, h, w = x.shape
    s = max_shift
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)))
    dy = rng.integers(0, 2 * s + 1, size=n)
    dx = rng.integers(0, 2 * s + 1, size=n)
    out = np.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


class TeacherCNN(nn.Module):
    """Two blocks of ``(conv3x3 -> BN -> ReLU) x2 -> maxpool -> dropout``, then a 256-unit head."""

    def __init__(self, input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10,
                 channels: tuple[int, int] = (32, 64), hidden: int = 256):
        super().__init__()
        c, h, w = input_shape
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2), nn.Dropout(0.25)]
            c, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Eval-mode logits of a torch module, batched."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def train_teacher_cnn(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, lr: float = 3e-3,
                      batch_size: int = 128, max_shift: int = 2, num_classes: int = 10) -> tuple[nn.Module, dict]:
    """Train :class:`TeacherCNN` with random shifts and a OneCycle schedule; returns (model, stats)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = TeacherCNN(tuple(x.shape[1:]), num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2))
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for b in range(0, len(x), batch_size):
            idx = order[b:b + batch_size]
            xb = torch.from_numpy(random_shift(x[idx], max_shift, rng))
            loss = loss_fn(model(xb), torch.from_numpy(y[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model, {"train_seconds": round(time.perf_counter() - start, 1), "epochs": epochs,
                   "num_parameters": int(sum(p.numel() for p in model.parameters()))}


def keras_mlp_to_onnx(keras_path: str, onnx_uri: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Write the ONNX twin of a ``train_keras`` MLP (Flatten -> Dense/ReLU ... -> Dense logits).

    Dropout is the identity at inference, so the graph is Flatten, then Gemm (+ Relu) per Dense layer.
    Raises ``ModelFormatError`` for any other layer type (e.g. the CNN teacher).
    """
    import keras
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    with storage.local_copy(keras_path) as path:
        model = keras.saving.load_model(str(Path(path)), compile=False)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1)]
    inits = []
    prev = "flat"
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Dense, keras.layers.Dropout, keras.layers.Flatten,
                                  keras.layers.InputLayer)):
            raise ModelFormatError(f"{keras_path}: layer '{layer.name}' ({type(layer).__name__}) has no ONNX "
                                   "mapping here; only Flatten/Dense/Dropout MLPs are exported")
    for i, layer in enumerate(dense):
        kernel, bias = (np.asarray(w, dtype=np.float32) for w in layer.get_weights())
        inits += [numpy_helper.from_array(kernel, f"W{i}"), numpy_helper.from_array(bias, f"b{i}")]
        last = i == len(dense) - 1
        out = "logits" if last else f"h{i}"
        act = layer.get_config().get("activation", "linear")
        if act not in ("relu", "linear"):
            raise ModelFormatError(f"{keras_path}: Dense '{layer.name}' activation '{act}' is not exported")
        gemm_out = f"{out}_pre" if act == "relu" else out
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [gemm_out]))
        if act == "relu":
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        prev = out
    num_classes = int(dense[-1].units)
    graph = helper.make_graph(
        nodes, "keras_mlp_teacher",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="crossdistill-bench")
    proto.ir_version = min(proto.ir_version, 10)
    onnx.checker.check_model(proto)
    storage.write_bytes(onnx_uri, proto.SerializeToString())
    return {"uri": onnx_uri, "dense_layers": len(dense), "num_classes": num_classes}
