"""Distillation losses: soft targets with temperature, logit matching, top-k targets, ensembles, features,
and per-token losses for sequence (language-model) distillation."""

from crossdistill.losses.ensemble import combine_teachers
from crossdistill.losses.feature import CrossLayerDistiller, FeatureHooks, FeatureProjection, feature_mse
from crossdistill.losses.kd import hard_label_loss, kd_loss, logit_matching_loss, soft_target_loss
from crossdistill.losses.tokens import (
    forward_kl,
    generalized_jsd,
    next_token_ce,
    reverse_kl,
    teacher_token_logprobs,
)
from crossdistill.losses.topk import logits_to_topk, teacher_probs_at, topk_to_probs

__all__ = [
    "CrossLayerDistiller", "FeatureHooks", "FeatureProjection", "combine_teachers", "feature_mse",
    "forward_kl", "generalized_jsd", "hard_label_loss", "kd_loss", "logit_matching_loss", "logits_to_topk",
    "next_token_ce", "reverse_kl", "soft_target_loss", "teacher_probs_at", "teacher_token_logprobs",
    "topk_to_probs",
]
