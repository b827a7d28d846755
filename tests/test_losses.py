"""Distillation losses against hand-computed values and Hinton's high-temperature limit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from crossdistill.errors import ConfigError, DataError
from crossdistill.losses import (
    CrossLayerDistiller,
    FeatureHooks,
    FeatureProjection,
    combine_teachers,
    kd_loss,
    logit_matching_loss,
    logits_to_topk,
    soft_target_loss,
    teacher_probs_at,
    topk_to_probs,
)
from crossdistill.losses.feature import feature_shapes

torch.set_num_threads(1)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_soft_target_loss_hand_case():
    z = np.array([[1.0, 2.0, 0.0]])
    p = np.array([[0.2, 0.5, 0.3]])
    T = 2.0
    q = _softmax(z / T)
    expected = T * T * float(np.sum(p * (np.log(p) - np.log(q))))
    got = soft_target_loss(torch.tensor(z), torch.tensor(p), T)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_soft_target_loss_is_zero_when_student_matches_and_handles_zero_probs():
    z = torch.tensor([[3.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    T = 4.0
    p = torch.softmax(z / T, dim=-1)
    assert soft_target_loss(z, p, T).item() == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.tensor([[0.0, 1.0, 0.0]])
    loss = soft_target_loss(torch.tensor([[0.0, 0.0, 0.0]]), one_hot, 1.0)
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)  # -log(1/3), no NaN from 0*log 0


def test_soft_target_gradient_is_t_squared_scaled_hinton_eq2():
    z = torch.tensor([[0.5, -0.2, 1.0, 0.1]], requires_grad=True)
    v = torch.tensor([[1.0, 0.0, -1.0, 0.3]])
    T = 3.0
    soft_target_loss(z, torch.softmax(v / T, -1), T).backward()
    # eq. 2 gives dC/dz = (q - p) / T; times T^2 -> T (q - p)
    expected = T * (torch.softmax(z.detach() / T, -1) - torch.softmax(v / T, -1))
    assert torch.allclose(z.grad, expected, atol=1e-6)


def _grad(loss_fn, z0: torch.Tensor) -> torch.Tensor:
    z = z0.clone().requires_grad_(True)
    loss_fn(z).backward()
    return z.grad


def test_soft_gradient_magnitude_invariant_to_temperature_in_high_t_limit():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 10, generator=g, dtype=torch.float64)
    v = torch.randn(8, 10, generator=g, dtype=torch.float64) * 2
    z, v = z - z.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)
    norms = {}
    unscaled = {}
    for T in (20.0, 50.0, 200.0):
        grad = _grad(lambda s, T=T: soft_target_loss(s, torch.softmax(v / T, -1), T), z)
        norms[T] = grad.norm().item()
        unscaled[T] = norms[T] / T**2
    assert norms[20.0] == pytest.approx(norms[200.0], rel=0.1)
    assert norms[50.0] == pytest.approx(norms[200.0], rel=0.03)
    # without the T^2 factor the soft gradient would shrink 100x between T=20 and T=200
    assert unscaled[20.0] / unscaled[200.0] == pytest.approx(100.0, rel=0.1)


def test_soft_gradient_equals_logit_matching_gradient_in_the_limit_eq4():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 6, generator=g, dtype=torch.float64)
    v = torch.randn(4, 6, generator=g, dtype=torch.float64)
    z, v = z - z.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)
    lm = _grad(lambda s: logit_matching_loss(s, v), z)
    # eq. 4: (z_i - v_i) / (N T^2) for the unscaled loss -> (z_i - v_i) / N, averaged over the batch
    assert torch.allclose(lm, (z - v) / (6 * 4), atol=1e-12)
    errors = []
    for T in (10.0, 100.0, 1000.0):
        soft = _grad(lambda s, T=T: soft_target_loss(s, torch.softmax(v / T, -1), T), z)
        errors.append((soft - lm).abs().max().item() / lm.abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 2e-3


def test_logit_matching_loss_hand_case_zero_means_logits():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    v = torch.tensor([[10.0, 10.0, 13.0]])  # zero-meaned: [-1, 0, 1] and [-1, -1, 2]
    # diffs [0, 1, -1] -> sum of squares 2 -> / (2*3)
    assert logit_matching_loss(z, v).item() == pytest.approx(2 / 6)
    assert logit_matching_loss(z, z + 5.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_mixes_soft_and_hard_on_labeled_subset_only():
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    p = torch.softmax(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]) / 2.0, -1)
    y = torch.tensor([0, -1, 1])
    soft = soft_target_loss(z, p, 2.0).item()
    log_q = torch.log_softmax(z, -1)
    hard = -(log_q[0, 0] + log_q[2, 1]).item() / 2  # mean over the two labeled rows
    got = kd_loss(z, p, y, None, 2.0, soft_weight=0.7, hard_weight=0.3).item()
    assert got == pytest.approx(0.7 * soft + 0.3 * hard, rel=1e-6)
    mask = torch.tensor([True, False, False])
    only_first = kd_loss(z, p, y, mask, 2.0, soft_weight=0.0, hard_weight=1.0).item()
    assert only_first == pytest.approx(-log_q[0, 0].item(), rel=1e-6)
    # an all-unlabeled batch contributes only the soft term, and a gradient still flows
    zz = z.clone().requires_grad_(True)
    loss = kd_loss(zz, p, torch.full((3,), -1), None, 2.0, 1.0, 1.0)
    assert loss.item() == pytest.approx(soft, rel=1e-6)
    loss.backward()
    assert zz.grad.abs().sum() > 0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(DataError, match="teacher tensor"):
        soft_target_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


def test_logits_to_topk_and_back_is_exact_when_k_equals_c():
    z = torch.tensor([[1.0, 3.0, 0.0, -2.0], [0.5, 0.5, 4.0, 1.0]])
    lp, idx = logits_to_topk(z, 4, T=2.0)
    assert idx[0].tolist() == [1, 0, 2, 3]
    assert torch.allclose(topk_to_probs(lp, idx, 4), torch.softmax(z / 2.0, -1), atol=1e-6)


def test_topk_to_probs_spreads_remaining_mass_evenly():
    lp = torch.log(torch.tensor([[0.5, 0.2]]))
    idx = torch.tensor([[3, 0]])
    probs = topk_to_probs(lp, idx, 5)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    # 0.3 left over for classes 1, 2, 4
    assert probs[0].tolist() == pytest.approx([0.2, 0.1, 0.1, 0.5, 0.1], abs=1e-6)


def test_topk_reconstruction_sums_to_one_and_keeps_top_classes():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 10, generator=g) * 3
    full = torch.softmax(z, -1)
    for k in (1, 3, 7):
        lp, idx = logits_to_topk(z, k)
        probs = topk_to_probs(lp, idx, 10)
        assert torch.allclose(probs.sum(-1), torch.ones(16), atol=1e-5)
        assert torch.allclose(probs.gather(-1, idx), full.gather(-1, idx), atol=1e-6)
        assert torch.equal(probs.argmax(-1), full.argmax(-1))


def test_topk_errors_name_the_problem():
    with pytest.raises(ConfigError, match="top_k=11"):
        logits_to_topk(torch.zeros(1, 10), 11)
    with pytest.raises(DataError, match="outside 0..3"):
        topk_to_probs(torch.log(torch.tensor([[0.9]])), torch.tensor([[7]]), 4)


def test_teacher_probs_at_from_dense_and_topk_at_other_temperature():
    z = torch.tensor([[2.0, 1.0, -1.0, 0.0]])
    assert torch.allclose(teacher_probs_at(3.0, logits=z), torch.softmax(z / 3.0, -1))
    # top-k with k=C computed at T=1, asked for at T=4: re-tempering is exact
    lp, idx = logits_to_topk(z, 4, T=1.0)
    got = teacher_probs_at(4.0, topk_logprobs=lp, topk_indices=idx, topk_temperature=1.0, num_classes=4)
    assert torch.allclose(got, torch.softmax(z / 4.0, -1), atol=1e-6)
    # k < C at another temperature: ratios inside the top k are still exact
    lp2, idx2 = logits_to_topk(z, 2, T=1.0)
    got2 = teacher_probs_at(4.0, topk_logprobs=lp2, topk_indices=idx2, topk_temperature=1.0, num_classes=4)
    ref = torch.softmax(z / 4.0, -1)
    assert (got2[0, 0] / got2[0, 1]).item() == pytest.approx((ref[0, 0] / ref[0, 1]).item(), rel=1e-5)
    assert got2.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_combine_teachers_arithmetic_and_geometric_hand_cases():
    a = torch.tensor([[0.5, 0.5]])
    b = torch.tensor([[0.9, 0.1]])
    assert combine_teachers([a, b]).tolist()[0] == pytest.approx([0.7, 0.3])
    assert combine_teachers([a, b], weights=[3, 1]).tolist()[0] == pytest.approx([0.6, 0.4])
    # geometric: sqrt(.45)=0.6708, sqrt(.05)=0.2236 -> normalised
    g = combine_teachers([a, b], method="geometric").tolist()[0]
    s = math.sqrt(0.45) + math.sqrt(0.05)
    assert g == pytest.approx([math.sqrt(0.45) / s, math.sqrt(0.05) / s], rel=1e-5)
    gw = combine_teachers([a, b], method="geometric", weights=[1, 3]).tolist()[0]
    u, w = 0.5**0.25 * 0.9**0.75, 0.5**0.25 * 0.1**0.75
    assert gw == pytest.approx([u / (u + w), w / (u + w)], rel=1e-5)
    with pytest.raises(ConfigError, match="2 teachers"):
        combine_teachers([a, b], weights=[1.0])
    with pytest.raises(DataError, match="teacher 1"):
        combine_teachers([a, torch.ones(1, 3) / 3])


def test_feature_hooks_read_layers_by_path_and_projection_learns():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ConfigError, match="no submodule 'features.9'"):
        FeatureHooks(student, ["features.9"])
    shapes = feature_shapes(student, ["1", "3"], (1, 4, 4))
    assert shapes == {"1": (4, 4, 4), "3": (10,)}
    teacher_shapes = {"conv": (8, 2, 2), "dense": (16,)}
    distiller = CrossLayerDistiller([("1", "conv"), ("3", "dense")], shapes, teacher_shapes, weights=[1, 3])
    assert distiller.weights == [0.25, 0.75]
    x = torch.rand(32, 1, 4, 4)
    target_conv = torch.rand(32, 8, 2, 2)
    target_dense = torch.rand(32, 16)
    opt = torch.optim.Adam([*student.parameters(), *distiller.parameters()], lr=1e-2)
    losses = []
    with FeatureHooks(student, distiller.student_paths) as hooks:
        for _ in range(60):
            student(x)
            loss = distiller(hooks.outputs, {"conv": target_conv, "dense": target_dense})
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not student[1]._forward_hooks  # removed on exit


def test_feature_projection_shapes():
    assert FeatureProjection((4, 8, 8), (6, 4, 4))(torch.zeros(2, 4, 8, 8)).shape == (2, 6, 4, 4)
    assert FeatureProjection((4, 8, 8), (5,))(torch.zeros(2, 4, 8, 8)).shape == (2, 5)
    assert FeatureProjection((3,), (7,))(torch.zeros(2, 3)).shape == (2, 7)
    with pytest.raises(ConfigError, match="cannot project"):
        FeatureProjection((3,), (4, 2, 2))


def test_example_weights_give_a_weighted_mean_of_the_soft_term():
    from crossdistill.losses import soft_target_loss

    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    per_example = soft_target_loss(z, p, 2.0, reduction="none")
    weighted = kd_loss(z, p, torch.tensor([-1, -1]), None, 2.0, example_weights=torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(weighted, per_example[0] / 2)


# --------------------------------------------------------------------------- named, weighted terms
def test_weighted_loss_sums_named_terms_and_reports_each():
    from crossdistill.losses.terms import HardLabelTerm, LossInputs, SoftTargetTerm, WeightedLoss

    torch.manual_seed(0)
    z = torch.randn(6, 4, requires_grad=True)
    p = torch.softmax(torch.randn(6, 4), -1)
    y = torch.tensor([0, -1, 2, 3, -1, 1])
    w = torch.tensor([1.0, 0.5, 0.0, 2.0, 1.0, 1.0])

    def never(_batch):
        raise AssertionError("a term with weight 0 is not computed")

    loss = WeightedLoss({"soft": (0.9, SoftTargetTerm(2.0)), "hard": (0.1, HardLabelTerm()), "feature": (0.0, never)})
    total, values = loss(LossInputs(z, y, teacher_probs=p, example_weights=w))
    assert loss.names == ["soft", "hard"] and set(values) == {"soft", "hard"}
    assert values["hard"] == pytest.approx(torch.nn.functional.cross_entropy(z[y >= 0], y[y >= 0]).item(), rel=1e-6)
    assert total.item() == pytest.approx(0.9 * values["soft"] + 0.1 * values["hard"], rel=1e-6)
    expected = kd_loss(z, p, y, None, 2.0, 0.9, 0.1, example_weights=w)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="at least one term"):
        WeightedLoss({"soft": (0.0, SoftTargetTerm(1.0))})


def test_topk_indices_take_the_smallest_type_that_holds_the_classes_over_any_leading_axes():
    from crossdistill.data.shards import index_dtype
    from crossdistill.teacher.protocol import topk_logprobs

    assert index_dtype(10) == np.uint16 and index_dtype(65_536) == np.uint16 and index_dtype(65_537) == np.int32
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(2, 3, 70_000)).astype(np.float32)  # [B, T, V] above uint16's range
    lp, idx = topk_logprobs(seq, 4, 2.0)
    assert lp.shape == idx.shape == (2, 3, 4) and idx.dtype == np.int32
    z = seq.astype(np.float64) / 2.0
    full = z - z.max(-1, keepdims=True)
    full -= np.log(np.exp(full).sum(-1, keepdims=True))
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=-1, kind="stable")[..., :4])
    np.testing.assert_allclose(lp, np.take_along_axis(full, idx.astype(np.int64), -1), atol=1e-5)
    ties = np.zeros((1, 6), np.float32)
    assert topk_logprobs(ties, 3, 1.0)[1].tolist() == [[0, 1, 2]]  # ties: lower index first
