"""Per-token distillation losses against hand-computed values, masks, top-k teachers and the GKD limits."""

from __future__ import annotations

import math

import pytest
import torch

from crossdistill.errors import DataError
from crossdistill.losses import (
    forward_kl,
    generalized_jsd,
    next_token_ce,
    reverse_kl,
    teacher_token_logprobs,
)
from crossdistill.losses.terms import WeightedLoss
from crossdistill.losses.tokens import (
    LOG_FLOOR,
    ForwardKLTerm,
    JSDTerm,
    NextTokenTerm,
    ReverseKLTerm,
    TokenLossInputs,
)

torch.set_num_threads(1)

# Student logits and teacher logits of one sequence of 3 positions over a vocabulary of 4.
Z = [[1.0, 2.0, 0.0, -1.0], [0.5, -0.5, 1.5, 0.0], [3.0, 0.0, 0.0, 0.0]]
V_T = [[0.0, 1.0, 2.0, 0.5], [2.0, 0.0, -1.0, 1.0], [0.0, 0.0, 4.0, 0.0]]


def _softmax_row(z: list[float], T: float = 1.0) -> list[float]:
    m = max(z)
    e = [math.exp((x - m) / T) for x in z]
    return [x / sum(e) for x in e]


def _kl_row(a: list[float], b: list[float]) -> float:
    return sum(x * (math.log(x) - math.log(y)) for x, y in zip(a, b, strict=True) if x > 0)


def _jsd_row(p: list[float], q: list[float], beta: float) -> float:
    m = [beta * x + (1 - beta) * y for x, y in zip(p, q, strict=True)]
    return beta * _kl_row(p, m) + (1 - beta) * _kl_row(q, m)


def _topk_row(probs: list[float], idx: list[int], V: int) -> list[float]:
    """The rebuilt distribution from the definition: the top-k, then the tail spread evenly."""
    tail = max(1.0 - sum(probs), 0.0)
    out = [tail / (V - len(idx))] * V
    for i, p in zip(idx, probs, strict=True):
        out[i] = p
    return out


def _t(x, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def test_forward_reverse_jsd_dense_teacher_hand_case_with_mask_and_temperature():
    T, beta = 2.0, 0.3
    mask = _t([[1, 1, 0]], torch.int64)  # the third position is padding
    p = [_softmax_row(v, T) for v in V_T[:2]]
    q = [_softmax_row(z, T) for z in Z[:2]]
    expect_fwd = T * T * sum(_kl_row(p[t], q[t]) for t in range(2)) / 2
    expect_rev = T * T * sum(_kl_row(q[t], p[t]) for t in range(2)) / 2
    expect_jsd = T * T * sum(_jsd_row(p[t], q[t], beta) for t in range(2)) / 2
    teacher = teacher_token_logprobs(T, logits=_t([V_T]))
    z = _t([Z])
    assert forward_kl(z, teacher, mask, T).item() == pytest.approx(expect_fwd, rel=1e-5)
    assert reverse_kl(z, teacher, mask, T).item() == pytest.approx(expect_rev, rel=1e-5)
    assert generalized_jsd(z, teacher, mask, T, beta=beta).item() == pytest.approx(expect_jsd, rel=1e-5)


def test_topk_teacher_with_tail_hand_case_at_temperature_2():
    T, V = 2.0, 4
    top_p = [[0.5, 0.3], [0.6, 0.25]]
    top_i = [[2, 0], [1, 3]]
    lp = _t([[[math.log(x) for x in row] for row in top_p]])
    teacher = teacher_token_logprobs(T, topk_logprobs=lp, topk_indices=_t([top_i], torch.int64), vocab_size=V)
    p = [_topk_row(top_p[t], top_i[t], V) for t in range(2)]
    assert p[0] == pytest.approx([0.3, 0.1, 0.5, 0.1]) and p[1] == pytest.approx([0.075, 0.6, 0.075, 0.25])
    assert teacher.exp()[0].tolist() == [pytest.approx(row, rel=1e-6) for row in p]
    z = _t([Z[:2]])
    q = [_softmax_row(Z[t], T) for t in range(2)]
    expect = {
        "fwd": T * T * sum(_kl_row(p[t], q[t]) for t in range(2)) / 2,
        "rev": T * T * sum(_kl_row(q[t], p[t]) for t in range(2)) / 2,
        "jsd": T * T * sum(_jsd_row(p[t], q[t], 0.5) for t in range(2)) / 2,
    }
    assert forward_kl(z, teacher, None, T).item() == pytest.approx(expect["fwd"], rel=1e-5)
    assert reverse_kl(z, teacher, None, T).item() == pytest.approx(expect["rev"], rel=1e-5)
    assert generalized_jsd(z, teacher, None, T, beta=0.5).item() == pytest.approx(expect["jsd"], rel=1e-5)


def test_topk_zero_tail_spreads_nothing_and_reads_log_floor():
    top_p, top_i = [0.7, 0.3], [3, 1]  # no tail: tokens 0 and 2 have probability 0
    teacher = teacher_token_logprobs(1.0, topk_logprobs=_t([[[math.log(0.7), math.log(0.3)]]]),
                                     topk_indices=_t([[top_i]], torch.int32), vocab_size=4)
    assert torch.isfinite(teacher).all()
    assert teacher[0, 0, [0, 2]].tolist() == pytest.approx([LOG_FLOOR] * 2)
    p = _topk_row(top_p, top_i, 4)
    q = _softmax_row(Z[0])
    assert forward_kl(_t([Z[:1]]), teacher).item() == pytest.approx(_kl_row(p, q), rel=1e-5)
    # reverse KL: student mass on a ruled-out token pays log q - LOG_FLOOR
    expect_rev = sum(qi * (math.log(qi) - (math.log(pi) if pi > 0 else LOG_FLOOR)) for pi, qi in zip(p, q, strict=True))
    assert reverse_kl(_t([Z[:1]]), teacher).item() == pytest.approx(expect_rev, rel=1e-5)


@pytest.mark.parametrize("loss", ["fwd", "rev", "jsd"])
def test_losses_scale_by_t_squared(loss):
    fn = {"fwd": forward_kl, "rev": reverse_kl,
          "jsd": lambda s, t, m, T: generalized_jsd(s, t, m, T, beta=0.4)}[loss]
    teacher = teacher_token_logprobs(1.0, logits=_t([V_T]))
    z = _t([Z])
    # the student at T=2 with logits 2z is the same distribution as z at T=1: only the T^2 factor differs
    assert fn(2 * z, teacher, None, 2.0).item() == pytest.approx(4 * fn(z, teacher, None, 1.0).item(), rel=1e-5)


def test_forward_kl_gradient_is_t_times_q_minus_p_per_real_token():
    T = 3.0
    z = _t([Z]).requires_grad_(True)
    teacher = teacher_token_logprobs(T, logits=_t([V_T]))
    mask = _t([[True, False, True]], torch.bool)
    forward_kl(z, teacher, mask, T).backward()
    expected = T * (torch.softmax(z.detach() / T, -1) - teacher.exp()) / 2
    expected[0, 1] = 0.0
    assert torch.allclose(z.grad, expected, atol=1e-6)


def test_next_token_ce_hand_case_skips_padding_and_ignore_index():
    labels = _t([[1, 2, -100]], torch.int64)
    mask = _t([[True, True, True]], torch.bool)
    expect = -sum(math.log(_softmax_row(Z[t])[labels[0, t]]) for t in range(2)) / 2
    assert next_token_ce(_t([Z]), labels, mask).item() == pytest.approx(expect, rel=1e-6)
    labels = _t([[1, 999, 3]], torch.int64)  # 999 sits at padding: never read
    mask = _t([[1, 0, 1]], torch.int64)
    expect = -(math.log(_softmax_row(Z[0])[1]) + math.log(_softmax_row(Z[2])[3])) / 2
    assert next_token_ce(_t([Z]), labels, mask).item() == pytest.approx(expect, rel=1e-6)


def _batch(seed: int, k: int | None = None) -> TokenLossInputs:
    g = torch.Generator().manual_seed(seed)
    B, T, V = 2, 4, 6
    teacher = torch.randn(B, T, V, generator=g) * 2
    batch = TokenLossInputs(student_logits=torch.randn(B, T, V, generator=g),
                            labels=torch.randint(0, V, (B, T), generator=g),
                            mask=torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool))
    if k is None:
        batch.teacher_logits = teacher
    else:
        batch.topk_logprobs, batch.topk_indices = torch.log_softmax(teacher / 2.0, -1).topk(k, dim=-1)
    return batch


TERMS = {"fwd": ForwardKLTerm(2.0), "rev": ReverseKLTerm(2.0), "jsd": JSDTerm(0.5, 2.0), "ce": NextTokenTerm()}


@pytest.mark.parametrize("name", list(TERMS))
@pytest.mark.parametrize("k", [None, 3])
def test_padding_changes_neither_loss_nor_real_gradients(name, k):
    term = TERMS[name]
    base = _batch(0, k)
    s0 = base.student_logits.clone().requires_grad_(True)
    base.student_logits = s0
    loss0 = term(base)
    loss0.backward()

    changed = _batch(0, k)
    pad = ~changed.mask
    s1 = changed.student_logits.clone()
    s1[pad] = 50.0 * torch.randn(int(pad.sum()), s1.shape[-1])
    changed.student_logits = s1.requires_grad_(True)
    changed.labels[pad] = 12345  # out of the vocabulary, never read
    if k is None:
        changed.teacher_logits[pad] = float("nan")
    else:
        changed.topk_logprobs[pad] = float("nan")
        changed.topk_indices = changed.topk_indices.to(torch.int32)
        changed.topk_indices[pad] = 65535  # a wire pad value, out of range
    loss1 = term(changed)
    loss1.backward()
    assert loss1.item() == pytest.approx(loss0.item(), rel=1e-6)
    assert torch.allclose(s1.grad[~pad], s0.grad[~pad], atol=1e-7)
    assert torch.all(s1.grad[pad] == 0)


@pytest.mark.parametrize("name", list(TERMS))
def test_all_padding_gives_zero_and_backward_works(name):
    batch = _batch(1, 3)
    batch.mask = torch.zeros_like(batch.mask)
    batch.student_logits = batch.student_logits.clone().requires_grad_(True)
    loss = TERMS[name](batch)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(batch.student_logits.grad == 0)


@pytest.mark.parametrize("loss", [forward_kl, reverse_kl, generalized_jsd])
def test_dense_teacher_equals_topk_teacher_with_k_equal_v(loss):
    T, V = 2.0, 6
    g = torch.Generator().manual_seed(2)
    logits, z = torch.randn(2, 3, V, generator=g) * 3, torch.randn(2, 3, V, generator=g)
    lp, idx = torch.log_softmax(logits / T, -1).topk(V, dim=-1)  # every token, in a shuffled order
    dense = teacher_token_logprobs(T, logits=logits)
    sparse = teacher_token_logprobs(T, topk_logprobs=lp, topk_indices=idx, vocab_size=V)
    assert torch.allclose(dense, sparse, atol=1e-5)
    assert loss(z, sparse, None, T).item() == pytest.approx(loss(z, dense, None, T).item(), rel=1e-5)


def test_topk_taken_at_another_temperature_is_retempered():
    V = 5
    logits = torch.randn(1, 2, V, generator=torch.Generator().manual_seed(6)) * 2
    lp, idx = torch.log_softmax(logits, -1).topk(V, dim=-1)  # taken at T = 1, k == V: exact
    got = teacher_token_logprobs(3.0, topk_logprobs=lp, topk_indices=idx, topk_temperature=1.0, vocab_size=V)
    assert torch.allclose(got, teacher_token_logprobs(3.0, logits=logits), atol=1e-5)


@pytest.mark.parametrize("index_dtype", [torch.uint16, torch.int32])
def test_float16_logprobs_and_narrow_indices_match_float32_int64(index_dtype):
    batch = _batch(3, 2)
    ref = batch.teacher_logprobs(2.0)
    batch.topk_logprobs = batch.topk_logprobs.half()
    batch.topk_indices = batch.topk_indices.to(index_dtype)
    narrow = batch.teacher_logprobs(2.0)
    assert narrow.dtype == torch.float32
    assert torch.allclose(narrow.exp(), ref.exp(), atol=2e-3)
    for term in (ForwardKLTerm(2.0), JSDTerm(0.3, 2.0)):
        wide = _batch(3, 2)
        assert term(batch).item() == pytest.approx(term(wide).item(), rel=2e-3, abs=1e-4)


def test_jsd_symmetric_at_half_zero_when_equal_and_its_beta_limits():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(1, 3, 5, generator=g, dtype=torch.float64), torch.randn(1, 3, 5, generator=g, dtype=torch.float64)
    lp_a, lp_b = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    assert generalized_jsd(a, lp_b, beta=0.5).item() == pytest.approx(generalized_jsd(b, lp_a, beta=0.5).item())
    assert generalized_jsd(a, lp_b, beta=0.2).item() != pytest.approx(generalized_jsd(b, lp_a, beta=0.2).item())
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert generalized_jsd(a, torch.log_softmax(a / 2, -1), None, 2.0, beta).item() == pytest.approx(0, abs=1e-9)
    fwd, rev = forward_kl(a, lp_b, None, 2.0).item(), reverse_kl(a, lp_b, None, 2.0).item()
    # the ends, as TRL: beta = 0 is KL(teacher || student), beta = 1 is KL(student || teacher)
    assert generalized_jsd(a, lp_b, None, 2.0, 0.0).item() == fwd
    assert generalized_jsd(a, lp_b, None, 2.0, 1.0).item() == rev
    assert fwd != pytest.approx(rev, rel=1e-3)
    # and the mixture's limits up to scale: JSD/beta -> forward KL, JSD/(1 - beta) -> reverse KL
    eps = 1e-5
    assert generalized_jsd(a, lp_b, None, 2.0, eps).item() / eps == pytest.approx(fwd, rel=1e-3)
    assert generalized_jsd(a, lp_b, None, 2.0, 1 - eps).item() / eps == pytest.approx(rev, rel=1e-3)


def test_weighted_loss_of_forward_kl_and_next_token_on_token_inputs():
    batch = _batch(5, 3)
    loss = WeightedLoss({"kd": (1.0, ForwardKLTerm(2.0)), "ce": (0.5, NextTokenTerm())})
    total, values = loss(batch)
    assert set(values) == {"kd", "ce"}
    kd = forward_kl(batch.student_logits, batch.teacher_logprobs(2.0), batch.mask, 2.0).item()
    ce = next_token_ce(batch.student_logits, batch.labels, batch.mask).item()
    assert values["kd"] == pytest.approx(kd) and values["ce"] == pytest.approx(ce)
    assert total.item() == pytest.approx(kd + 0.5 * ce)


def test_bad_inputs_are_reported():
    z = torch.zeros(1, 2, 4)
    with pytest.raises(DataError, match="forward_kl"):
        forward_kl(z, torch.zeros(1, 2, 5))
    with pytest.raises(DataError, match="mask"):
        reverse_kl(z, torch.zeros(1, 2, 4), torch.ones(2, 1))
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(z, torch.zeros(1, 2, 4), None, 0.0)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(z, torch.zeros(1, 2, 4), beta=1.5)
    with pytest.raises(DataError, match="topk"):
        teacher_token_logprobs(topk_logprobs=torch.zeros(1, 2, 2), topk_indices=torch.zeros(1, 2, 3), vocab_size=4)
    with pytest.raises(DataError, match="topk_indices"):
        teacher_token_logprobs(topk_logprobs=torch.zeros(1, 2, 1), topk_indices=torch.full((1, 2, 1), 7), vocab_size=4)
    with pytest.raises(ValueError, match="teacher"):
        ForwardKLTerm(1.0)(TokenLossInputs(student_logits=z, labels=torch.zeros(1, 2, dtype=torch.int64)))
