"""A training loss made of named, weighted terms, each reported on its own.

``WeightedLoss({"soft": (1.0, SoftTargetTerm(T)), "hard": (0.1, HardLabelTerm())})`` returns the
weighted sum to back-propagate and the unweighted value of every term (for the training log), so a
run shows which signal moves and which one stalls. A term is any callable ``(LossInputs) -> scalar``;
terms with weight 0 are left out (not computed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from crossdistill.losses.feature import CrossLayerDistiller
from crossdistill.losses.kd import hard_label_loss, logit_matching_loss, soft_target_loss


@dataclass
class LossInputs:
    """What the terms of one batch may look at (all on the training device)."""

    student_logits: torch.Tensor
    labels: torch.Tensor  # [B] int64, -1 = unlabeled
    teacher_probs: torch.Tensor | None = None  # the teacher's distribution at the training temperature
    teacher_logits: torch.Tensor | None = None  # dense teacher logits (logit matching)
    example_weights: torch.Tensor | None = None  # [B] scale of each example's soft term (assembled sets)
    student_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, torch.Tensor] = field(default_factory=dict)


Term = Callable[[LossInputs], torch.Tensor]


class SoftTargetTerm:
    """``T^2 KL(teacher || student)`` at temperature ``T``, each example scaled by its weight if any."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        if batch.teacher_probs is None:
            raise ValueError("the soft term needs teacher_probs")
        if batch.example_weights is None:
            return soft_target_loss(batch.student_logits, batch.teacher_probs, self.temperature)
        per_example = soft_target_loss(batch.student_logits, batch.teacher_probs, self.temperature, reduction="none")
        return (batch.example_weights.to(per_example.dtype) * per_example).mean()


class LogitMatchingTerm:
    """Squared distance of zero-meaned logits (Caruana; Hinton's high-temperature limit)."""

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        if batch.teacher_logits is None:
            raise ValueError("logit matching needs dense teacher_logits")
        return logit_matching_loss(batch.student_logits, batch.teacher_logits)


class HardLabelTerm:
    """Cross-entropy on the labeled examples of the batch (0 when it has none)."""

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        return hard_label_loss(batch.student_logits, batch.labels)


class FeatureTerm:
    """Cross-layer feature distillation through the learned projections of ``distiller``."""

    def __init__(self, distiller: CrossLayerDistiller) -> None:
        self.distiller = distiller

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        return self.distiller(batch.student_features, batch.teacher_features)


class WeightedLoss:
    """``sum_i w_i * term_i``; calling it returns ``(total, {name: unweighted value})``."""

    def __init__(self, terms: Mapping[str, tuple[float, Term]]) -> None:
        self.terms = {name: (float(w), term) for name, (w, term) in terms.items() if w}
        if not self.terms:
            raise ValueError("a loss needs at least one term with a weight > 0")

    @property
    def names(self) -> list[str]:
        return list(self.terms)

    def __call__(self, batch: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        total = batch.student_logits.new_zeros(())
        values: dict[str, float] = {}
        for name, (weight, term) in self.terms.items():
            value = term(batch)
            total = total + weight * value
            values[name] = float(value.detach())
        return total, values
