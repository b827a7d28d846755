"""Student architectures: a small registry (``mlp``, ``cnn``, ``transformer``) plus any ``package.module:function``.

A student file (``model.pt``) holds the spec, input shape, class count and ``state_dict`` (no
pickled code), so :func:`load_student` rebuilds the module from the registry and needs no trust in
the file beyond tensors and plain data.
"""

from __future__ import annotations

import importlib
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import Field
from torch import nn

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.errors import ConfigError, ModelFormatError

STUDENT_FORMAT = "crossdistill.student/v1"


class ModelSpec(StrictConfig):
    """Which student to build: a registry name (``mlp``, ``cnn``) or ``package.module:function``."""

    name: str = Field("mlp", description="'mlp', 'cnn', 'transformer' (a causal language model, for text data) "
                                         "or 'package.module:function'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the builder")


def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (64, 32),
        dropout: float = 0.0) -> nn.Module:
    """Flatten, then ``Linear -> ReLU (-> Dropout)`` per hidden width, then a linear classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """``Conv3x3 -> ReLU -> MaxPool2`` blocks (pooling while the map is at least 2x2), then linear."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32),
                 hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"cnn needs inputs shaped (channels, height, width), got {tuple(input_shape)}")
        c, h, w = (int(s) for s in input_shape)
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [nn.Conv2d(c, int(out), kernel_size=3, padding=1), nn.ReLU()]
            if h >= 2 and w >= 2:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = int(out)
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        if hidden:
            head += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cnn(input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    return SmallCNN(input_shape, num_classes, **kwargs)


class CausalTransformer(nn.Module):
    """A decoder-only language model: token ids ``[B, T]`` -> next-token logits ``[B, T, V]``.

    Token and learned position embeddings, ``layers`` pre-norm transformer blocks whose attention sees
    only earlier positions (a causal mask), a final norm and a linear head over the vocabulary.
    """

    def __init__(self, seq_len: int, vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 ff_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"transformer: dim {dim} must be a multiple of heads {heads}")
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(seq_len, dim)
        block = nn.TransformerEncoderLayer(dim, heads, dim * ff_mult, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        self.register_buffer("causal", torch.triu(torch.full((seq_len, seq_len), float("-inf")), 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.tokens(x) + self.positions(torch.arange(t, device=x.device))
        return self.head(self.norm(self.blocks(h, mask=self.causal[:t, :t], is_causal=True)))


def transformer(input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """The causal transformer for token data: ``input_shape`` = (seq_len,), ``num_classes`` = vocabulary size."""
    if len(input_shape) != 1:
        raise ConfigError(f"transformer needs token inputs shaped (seq_len,), got {tuple(input_shape)} "
                          "(text data: import-data text=...)")
    return CausalTransformer(int(input_shape[0]), num_classes, **kwargs)


REGISTRY: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "transformer": transformer}


def _resolve(name: str) -> Callable[..., nn.Module]:
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" not in name:
        raise ConfigError(f"model.name '{name}' is neither a registered student ({sorted(REGISTRY)}) "
                          "nor 'package.module:function'")
    module_name, func_name = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.name '{name}': cannot import module '{module_name}': {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"model.name '{name}': module '{module_name}' has no callable '{func_name}'")
    return func


def build_model(spec: ModelSpec, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Call the builder as ``f(input_shape=..., num_classes=..., **spec.kwargs)``."""
    builder = _resolve(spec.name)
    try:
        model = builder(input_shape=tuple(int(s) for s in input_shape), num_classes=int(num_classes),
                        **spec.kwargs)
    except TypeError as exc:
        raise ConfigError(f"model '{spec.name}' rejected model.kwargs {spec.kwargs}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model '{spec.name}' returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def save_student(uri: str, model: nn.Module, spec: ModelSpec, input_shape: Sequence[int], num_classes: int,
                 extra: dict[str, Any] | None = None) -> str:
    """Write spec + ``state_dict`` (on CPU) to ``uri`` atomically; returns ``uri``."""
    payload = {
        "format": STUDENT_FORMAT,
        "spec": spec.model_dump(mode="json"),
        "input_shape": [int(s) for s in input_shape],
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    storage.write_bytes(uri, buf.getvalue())
    return uri


def load_student(uri: str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved student (in eval mode); ``info`` has spec, input_shape, num_classes, extra."""
    raw = storage.read_bytes(uri)
    try:
        payload = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ModelFormatError(f"{uri} is not a crossdistill student file: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != STUDENT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelFormatError(f"{uri}: format {found!r}, expected {STUDENT_FORMAT!r}")
    spec = ModelSpec.parse(payload["spec"], source=uri)
    model = build_model(spec, payload["input_shape"], payload["num_classes"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelFormatError(f"{uri}: weights do not fit model '{spec.name}': {exc}") from None
    model.to(map_location).eval()
    info = {k: payload[k] for k in ("input_shape", "num_classes", "extra")}
    info["spec"] = spec
    return model, info
