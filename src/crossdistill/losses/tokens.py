"""Losses over tokens for sequence (language-model) distillation.

Every position of a sequence is one classification over the vocabulary, so these are the class losses
of :mod:`crossdistill.losses.kd` taken per position and averaged over the real tokens of the batch
(``mask`` ``[B, T]``, true or 1 for a real token): padding never enters the computation (its logits and
teacher values are not even read), and a batch without a real token gives 0 with a gradient path.

Conventions shared by :func:`forward_kl`, :func:`reverse_kl` and :func:`generalized_jsd`:

- the student is softened by the temperature (``log_softmax(student_logits / T)``); the teacher comes
  as log-probabilities ``[B, T, V]`` already at that temperature (:func:`teacher_token_logprobs` builds
  them from dense logits or a top-k pair) and is used as it is;
- the per-token divergence is multiplied by ``T**2``, as :func:`~crossdistill.losses.kd.soft_target_loss`
  does, so the gradient magnitude stays comparable across temperatures and against the next-token
  cross-entropy. TRL's ``GKDTrainer`` does not scale; at ``T = 1`` the values are the same;
- the work is done in float32 (float64 stays float64), whatever the logits' or log-probs' dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from crossdistill.errors import DataError
from crossdistill.losses.topk import teacher_probs_at

ArrayLike = torch.Tensor | np.ndarray

IGNORE_INDEX = -100  # Hugging Face's label for "no target here"; next_token_ce skips it
# Stand-in for log(0): the class path clamps probabilities at float32's smallest normal number before
# its log (teacher_probs_at), so a token the teacher rules out costs a large but finite amount.
LOG_FLOOR = math.log(torch.finfo(torch.float32).tiny)


def teacher_token_logprobs(temperature: float = 1.0, *, logits: ArrayLike | None = None,
                           topk_logprobs: ArrayLike | None = None, topk_indices: ArrayLike | None = None,
                           topk_temperature: float | None = None, vocab_size: int | None = None,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
    """The teacher's per-position log-probabilities ``[B, T, V]`` (float32, finite) at ``temperature``.

    From dense ``logits`` ``[B, T, V]`` (``log_softmax(logits / temperature)``) or from a top-k pair
    ``topk_logprobs`` / ``topk_indices`` ``[B, T, k]`` (any float / integer dtype, e.g. float16 and
    uint16 from the wire) plus ``vocab_size``. The top-k pair is rebuilt per position exactly as classes
    are (:func:`~crossdistill.losses.topk.teacher_probs_at`): the tail mass ``1 - sum(top-k probs)`` is
    spread evenly over the ``V - k`` other tokens, nothing is spread when it is 0 or ``k == V``, and
    log-probabilities taken at ``topk_temperature`` (None: at ``temperature``) are re-tempered. Tokens of
    probability 0 get :data:`LOG_FLOOR` instead of ``-inf``. ``mask`` (``[B, T]``) lets padded positions
    of a top-k pair hold anything (an out-of-range pad index included): they read as uniform.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits is not None:
        z = torch.as_tensor(logits)
        if z.ndim != 3:
            raise DataError(f"teacher logits must be [batch, seq_len, vocab], got shape {tuple(z.shape)}")
        dtype = torch.promote_types(z.dtype, torch.float32) if z.is_floating_point() else torch.float32
        return F.log_softmax(z.to(dtype) / temperature, dim=-1).clamp_min(LOG_FLOOR)
    if topk_logprobs is None or topk_indices is None or vocab_size is None:
        raise DataError("the teacher needs logits, or topk_logprobs + topk_indices (+ vocab_size)")
    lp = torch.as_tensor(topk_logprobs).float()
    idx = torch.as_tensor(topk_indices).to(lp.device).long()
    if lp.ndim != 3 or lp.shape != idx.shape:
        raise DataError(f"topk_logprobs {tuple(lp.shape)} and topk_indices {tuple(idx.shape)} "
                        "must both be [batch, seq_len, k]")
    k = lp.shape[-1]
    if mask is not None:
        real = _real_positions(mask, lp.shape[:2], "teacher_token_logprobs")[..., None].to(lp.device)
        lp = torch.where(real, lp, -math.log(vocab_size))
        idx = torch.where(real, idx, torch.arange(k, device=idx.device))
    probs = teacher_probs_at(temperature, topk_logprobs=lp.reshape(-1, k), topk_indices=idx.reshape(-1, k),
                             topk_temperature=topk_temperature, num_classes=vocab_size)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log().reshape(*lp.shape[:2], vocab_size)


def _real_positions(mask: torch.Tensor, shape: tuple[int, ...] | torch.Size, what: str) -> torch.Tensor:
    m = torch.as_tensor(mask)
    if tuple(m.shape) != tuple(shape):
        raise DataError(f"{what}: mask {tuple(m.shape)} must be [batch, seq_len] = {tuple(shape)}")
    return m.bool()


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _rows(t: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """The ``[N, ...]`` real positions of a ``[B, T, ...]`` tensor (all of them when ``real`` is None)."""
    return t.reshape(-1, *t.shape[2:]) if real is None else t[real]


Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _token_divergence(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor | None,
                      temperature: float, divergence: Divergence, what: str) -> torch.Tensor:
    """``T**2 * mean over real tokens of divergence(log_q, log_p)`` (per-row log-probs ``[N, V]``)."""
    if student_logits.ndim != 3 or student_logits.shape != teacher_logprobs.shape:
        raise DataError(f"{what}: student logits {tuple(student_logits.shape)} and teacher log-probs "
                        f"{tuple(teacher_logprobs.shape)} must both be [batch, seq_len, vocab] and equal")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    real = None if mask is None else _real_positions(mask, student_logits.shape[:2], what).to(
        student_logits.device)
    dtype = _compute_dtype(student_logits)
    log_q = F.log_softmax(_rows(student_logits, real).to(dtype) / temperature, dim=-1)
    log_p = _rows(teacher_logprobs.to(student_logits.device), real).to(dtype).clamp_min(LOG_FLOOR)
    per_token = divergence(log_q, log_p)
    return per_token.sum() * (temperature * temperature) / max(per_token.shape[0], 1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``KL(a || b)`` per row from log-probabilities."""
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def forward_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """``T**2 * KL(teacher || softmax(student_logits / T))`` per token, averaged over the real tokens.

    The classic (mass-covering) distillation direction: :func:`~crossdistill.losses.kd.soft_target_loss`
    per position. ``mask`` None counts every position.
    """
    return _token_divergence(student_logits, teacher_logprobs, mask, temperature,
                             lambda log_q, log_p: _kl(log_p, log_q), "forward_kl")


def reverse_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """``T**2 * KL(softmax(student_logits / T) || teacher)`` per token, averaged over the real tokens.

    Mode-seeking: the student is pushed off tokens the teacher finds unlikely (a token the teacher rules
    out costs about ``-LOG_FLOOR = 87`` per unit of student mass), rather than made to cover them all.
    """
    return _token_divergence(student_logits, teacher_logprobs, mask, temperature, _kl, "reverse_kl")


def generalized_jsd(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor,
                    mask: torch.Tensor | None = None, temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """GKD's generalized Jensen-Shannon divergence per token (Agarwal et al. 2024, eq. 1; TRL's GKDTrainer).

    With ``P`` the teacher, ``Q`` the student at ``T`` and ``M = beta * P + (1 - beta) * Q`` (mixed in
    probability space, by a log-sum-exp of the log-probs):
    ``JSD_beta = beta * KL(P || M) + (1 - beta) * KL(Q || M)``, times ``T**2``, averaged over the real
    tokens. It is symmetric at ``beta = 0.5`` and 0 when ``P == Q``.

    TRL's convention for the ends, kept here: ``beta = 0`` is the forward KL ``KL(P || Q)``
    (:func:`forward_kl`) and ``beta = 1`` the reverse KL ``KL(Q || P)`` (:func:`reverse_kl`). The mixture
    itself vanishes at both ends; these are its limits up to scale, ``JSD_beta / beta -> KL(P || Q)`` as
    ``beta -> 0`` and ``JSD_beta / (1 - beta) -> KL(Q || P)`` as ``beta -> 1``, so the value jumps at the
    ends: the ends are distinct losses, not a continuation of the mixture.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logprobs, mask, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logprobs, mask, temperature)
    log_beta, log_rest = math.log(beta), math.log1p(-beta)

    def jsd(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        log_m = torch.logaddexp(log_p + log_beta, log_q + log_rest)
        return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)

    return _token_divergence(student_logits, teacher_logprobs, mask, temperature, jsd, "generalized_jsd")


def next_token_ce(student_logits: torch.Tensor, labels: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (T = 1) of ``labels`` averaged over the real tokens (0 when there is none).

    ``labels`` ``[B, T]`` are already aligned with the logits' positions (the caller shifts: the label at
    ``t`` is the token after ``t``). A position counts when ``mask`` is true there (None: everywhere) and
    its label is not :data:`IGNORE_INDEX` (-100, Hugging Face's prompt/padding label).
    """
    if student_logits.ndim != 3 or tuple(labels.shape) != tuple(student_logits.shape[:2]):
        raise DataError(f"next_token_ce: student logits {tuple(student_logits.shape)} must be "
                        f"[batch, seq_len, vocab] and labels {tuple(labels.shape)} [batch, seq_len]")
    labels = labels.to(student_logits.device).long()
    real = labels != IGNORE_INDEX
    if mask is not None:
        real = real & _real_positions(mask, labels.shape, "next_token_ce").to(labels.device)
    logits = student_logits[real].to(_compute_dtype(student_logits))
    return F.cross_entropy(logits, labels[real], reduction="sum") / max(logits.shape[0], 1)


@dataclass
class TokenLossInputs:
    """What the token terms of one batch may look at (all on the training device).

    The teacher is either dense ``teacher_logits`` or the top-k pair ``topk_logprobs`` +
    ``topk_indices`` (log-probs taken at ``topk_temperature``; None: at each term's temperature).
    """

    student_logits: torch.Tensor  # [B, T, V]
    labels: torch.Tensor  # [B, T] int64 next tokens, aligned with the logits (-100: no target)
    mask: torch.Tensor | None = None  # [B, T] bool or 0/1, true for a real token; None: all real
    teacher_logits: torch.Tensor | None = None  # [B, T, V]
    topk_logprobs: torch.Tensor | None = None  # [B, T, k]
    topk_indices: torch.Tensor | None = None  # [B, T, k], any integer dtype
    topk_temperature: float | None = None

    def teacher_logprobs(self, temperature: float) -> torch.Tensor:
        """The teacher's ``[B, T, V]`` log-probabilities at ``temperature``."""
        if self.teacher_logits is None and (self.topk_logprobs is None or self.topk_indices is None):
            raise ValueError("a teacher term needs teacher_logits or topk_logprobs + topk_indices")
        return teacher_token_logprobs(temperature, logits=self.teacher_logits, topk_logprobs=self.topk_logprobs,
                                      topk_indices=self.topk_indices, topk_temperature=self.topk_temperature,
                                      vocab_size=self.student_logits.shape[-1], mask=self.mask)


class ForwardKLTerm:
    """``T^2 KL(teacher || student)`` per token at temperature ``T`` (:func:`forward_kl`)."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, batch: TokenLossInputs) -> torch.Tensor:
        teacher = batch.teacher_logprobs(self.temperature)
        return forward_kl(batch.student_logits, teacher, batch.mask, self.temperature)


class ReverseKLTerm:
    """``T^2 KL(student || teacher)`` per token at temperature ``T`` (:func:`reverse_kl`)."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, batch: TokenLossInputs) -> torch.Tensor:
        teacher = batch.teacher_logprobs(self.temperature)
        return reverse_kl(batch.student_logits, teacher, batch.mask, self.temperature)


class JSDTerm:
    """GKD's generalized JSD per token (:func:`generalized_jsd`; beta 0 forward KL, 1 reverse KL)."""

    def __init__(self, beta: float, temperature: float = 1.0) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta
        self.temperature = temperature

    def __call__(self, batch: TokenLossInputs) -> torch.Tensor:
        teacher = batch.teacher_logprobs(self.temperature)
        return generalized_jsd(batch.student_logits, teacher, batch.mask, self.temperature, self.beta)


class NextTokenTerm:
    """Cross-entropy of the next token on the real, labeled positions (:func:`next_token_ce`)."""

    def __call__(self, batch: TokenLossInputs) -> torch.Tensor:
        return next_token_ce(batch.student_logits, batch.labels, batch.mask)
