"""Feature (cross-layer) distillation between heterogeneous teacher and student networks.

Following Gorpinich, Bakhteev & Strijov (seed 003) and FitNets' hints: pairs ``(student layer,
teacher layer)`` are matched through a learned projection from the student's width to the teacher's
(a 1x1 convolution for feature maps, a linear map for vectors) and an MSE, and the pair losses are
mixed with coefficients ``lambda_ij`` that sum to 1. The teacher's layers arrive over RPC (the
``layers`` request parameter / ``layer/<name>`` columns); the student's are read with forward hooks
by module path (``"features.3"``), so any ``nn.Module`` works without changes to its ``forward``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.errors import ConfigError, DataError


class FeatureHooks:
    """Capture the outputs of a model's submodules by dotted path while it runs forward.

    Use as a context manager (hooks are removed on exit) or call :meth:`remove`. ``outputs`` holds the
    latest output of each path; it is cleared by :meth:`clear`.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str]):
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        names = dict(model.named_modules())
        for path in paths:
            if path not in names:
                known = [n for n in names if n][:20]
                raise ConfigError(f"student has no submodule '{path}' (module paths: {known})")
            self._handles.append(names[path].register_forward_hook(self._hook(path)))

    def _hook(self, path: str):
        def store(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.outputs[path] = output
        return store

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class FeatureProjection(nn.Module):
    """Learned map from a student feature of shape ``student_shape`` to ``teacher_shape`` (no batch axis).

    ``(C, H, W) -> (C', H', W')``: 1x1 convolution, then adaptive average pooling to the teacher's
    spatial size. ``(C, H, W) -> (D,)``: global average pooling, then linear. ``(D,) -> (D',)``:
    linear. A vector cannot be projected onto a feature map (that would invent spatial structure).
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]):
        super().__init__()
        self.student_shape = tuple(int(s) for s in student_shape)
        self.teacher_shape = tuple(int(s) for s in teacher_shape)
        s, t = self.student_shape, self.teacher_shape
        if len(s) == 3 and len(t) == 3:
            self.proj: nn.Module = nn.Conv2d(s[0], t[0], kernel_size=1)
        elif len(s) == 3 and len(t) == 1:
            self.proj = nn.Linear(s[0], t[0])
        elif len(s) == 1 and len(t) == 1:
            self.proj = nn.Linear(s[0], t[0])
        else:
            raise ConfigError(f"cannot project a student feature of shape {s} onto a teacher feature of "
                              f"shape {t} (supported: (C,H,W)->(C',H',W'), (C,H,W)->(D,), (D,)->(D',))")

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if tuple(feature.shape[1:]) != self.student_shape:
            raise DataError(f"student feature has shape {tuple(feature.shape[1:])}, the projection was "
                            f"built for {self.student_shape}")
        if len(self.student_shape) == 3 and len(self.teacher_shape) == 1:
            return self.proj(feature.mean(dim=(2, 3)))
        out = self.proj(feature)
        if len(self.teacher_shape) == 3 and tuple(out.shape[2:]) != self.teacher_shape[1:]:
            out = F.adaptive_avg_pool2d(out, self.teacher_shape[1:])
        return out


def feature_mse(projected: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error between a projected student feature and the teacher's, with a shape check."""
    if projected.shape != teacher_feature.shape:
        raise DataError(f"projected student feature {tuple(projected.shape)} does not match teacher "
                        f"feature {tuple(teacher_feature.shape)}")
    return F.mse_loss(projected, teacher_feature.to(projected.dtype))


class CrossLayerDistiller(nn.Module):
    """Sum over layer pairs of ``lambda_ij * MSE(proj_ij(h_j^student), h_i^teacher)``.

    ``pairs`` maps ``(student_path, teacher_layer)``; ``shapes`` gives each one's feature shape
    without the batch axis. ``weights`` (the paper's ``lambda``) are normalised to sum to 1, equal by
    default; they are fixed here (the paper tunes them in an outer loop). The projections are trained
    together with the student: pass :meth:`parameters` to the student's optimizer.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]],
                 student_shapes: Mapping[str, Sequence[int]], teacher_shapes: Mapping[str, Sequence[int]],
                 weights: Sequence[float] | None = None):
        super().__init__()
        if not pairs:
            raise ConfigError("CrossLayerDistiller needs at least one (student_path, teacher_layer) pair")
        self.pairs = [(str(s), str(t)) for s, t in pairs]
        w = [1.0] * len(self.pairs) if weights is None else [float(x) for x in weights]
        if len(w) != len(self.pairs) or min(w) < 0 or sum(w) <= 0 or not all(map(math.isfinite, w)):
            raise ConfigError(f"weights {list(w)} must be {len(self.pairs)} non-negative numbers with a "
                              "positive sum (one per layer pair)")
        self.weights = [x / sum(w) for x in w]
        self.projections = nn.ModuleList()
        for s, t in self.pairs:
            if s not in student_shapes:
                raise ConfigError(f"no shape given for student layer '{s}'")
            if t not in teacher_shapes:
                raise ConfigError(f"no shape given for teacher layer '{t}'")
            self.projections.append(FeatureProjection(student_shapes[s], teacher_shapes[t]))

    @property
    def student_paths(self) -> list[str]:
        return sorted({s for s, _ in self.pairs})

    @property
    def teacher_layers(self) -> list[str]:
        return sorted({t for _, t in self.pairs})

    def forward(self, student_features: Mapping[str, torch.Tensor],
                teacher_features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total: torch.Tensor | None = None
        for (s, t), proj, w in zip(self.pairs, self.projections, self.weights, strict=True):
            if s not in student_features:
                raise DataError(f"student feature '{s}' was not captured (is the hook registered?)")
            if t not in teacher_features:
                raise DataError(f"teacher layer '{t}' missing from the teacher output "
                                f"(got {sorted(teacher_features)})")
            term = w * feature_mse(proj(student_features[s]), teacher_features[t])
            total = term if total is None else total + term
        assert total is not None
        return total


def feature_shapes(model: nn.Module, paths: Sequence[str], input_shape: Sequence[int]) -> dict[str, tuple]:
    """Shapes (without the batch axis) of the named submodules' outputs for one dummy input."""
    was_training = model.training
    model.eval()
    try:
        with FeatureHooks(model, paths) as hooks, torch.no_grad():
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            model(torch.zeros((1, *input_shape), device=device))
            return {p: tuple(hooks.outputs[p].shape[1:]) for p in paths}
    finally:
        model.train(was_training)
