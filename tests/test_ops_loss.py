"""Losses against NumPy formulas of PyTorch's definitions (class axis last), and their gradients against central
differences: mse, l1, nll (class weights, ignore_index), binary cross-entropy (with logits, pos_weight), and
cross-entropy with label smoothing and probability targets (checked against the fused op where they overlap)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
from strategies import arrays, shapes
from test_ops_support import check_op


def np_log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_reduce(losses, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[reduction](losses)


@st.composite
def class_problem(draw, ignore=True):
    lead = draw(shapes(min_dims=1, max_dims=2, max_side=3))
    c = draw(st.integers(2, 4))
    logits = draw(arrays(lead + (c,), low=-3, high=3))
    seed = draw(st.integers(0, 2**16))
    t = np.random.default_rng(seed).integers(0, c, size=lead)
    if ignore and t.size > 1:
        t.reshape(-1)[0] = -100
    return logits, t


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(data=st.data())
@settings(deadline=None)
def test_mse_and_l1(reduction, data):
    shape = data.draw(shapes())
    x, y = data.draw(arrays(shape)), data.draw(arrays(shape))
    y = np.where(np.abs(x - y) < 0.05, y + 0.1, y)
    check_op(lambda a, b: F.mse_loss(a, b, reduction=reduction), lambda a, b: np_reduce((a - b) ** 2, reduction), x, y)
    check_op(lambda a, b: F.l1_loss(a, b, reduction=reduction), lambda a, b: np_reduce(np.abs(a - b), reduction), x, y)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@given(problem=class_problem())
@settings(deadline=None)
def test_nll_loss(reduction, weighted, problem):
    logits, t = problem
    c = logits.shape[-1]
    w = np.linspace(0.5, 2.0, c) if weighted else np.ones(c)
    lp = np_log_softmax(logits)

    def ref(a):
        valid = t != -100
        picked = np.take_along_axis(a, np.where(valid, t, 0)[..., None], -1)[..., 0]
        wt = w[np.where(valid, t, 0)] * valid
        losses = -picked * wt
        return losses.sum() / wt.sum() if reduction == "mean" else np_reduce(losses, reduction)

    check_op(lambda a: F.nll_loss(a, t, weight=w if weighted else None, reduction=reduction), ref, lp)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(data=st.data())
@settings(deadline=None)
def test_binary_cross_entropy(reduction, data):
    shape = data.draw(shapes())
    p = data.draw(arrays(shape, low=0.05, high=0.95))
    t = data.draw(arrays(shape, low=0.0, high=1.0))
    check_op(lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction),
             lambda a, b: np_reduce(-(b * np.log(a) + (1 - b) * np.log(1 - a)), reduction), p, t)


@pytest.mark.parametrize("pos_weight", [None, 3.0])
@given(data=st.data())
@settings(deadline=None)
def test_binary_cross_entropy_with_logits(pos_weight, data):
    shape = data.draw(shapes())
    x = data.draw(arrays(shape, low=-6, high=6))
    t = data.draw(arrays(shape, low=0.0, high=1.0))
    pw = 1.0 if pos_weight is None else pos_weight
    sig = 1 / (1 + np.exp(-x))
    ref = -(pw * t * np.log(sig) + (1 - t) * np.log(1 - sig)).mean()
    check_op(lambda a, b: F.binary_cross_entropy_with_logits(a, b, pos_weight=pos_weight), lambda a, b: ref, x, t,
             rtol=1e-8)


def test_binary_losses_are_finite_at_the_edges():
    p = ag.Tensor(np.array([0.0, 1.0]), requires_grad=True)
    loss = F.binary_cross_entropy(p, ag.Tensor(np.array([1.0, 0.0])))
    np.testing.assert_allclose(loss.numpy(), 100.0)  # each log clamped at -100, as PyTorch
    z = F.binary_cross_entropy_with_logits(ag.Tensor(np.array([-500.0, 500.0])), ag.Tensor(np.array([1.0, 0.0])))
    np.testing.assert_allclose(z.numpy(), 500.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(problem=class_problem())
@settings(deadline=None)
def test_cross_entropy_label_smoothing(smoothing, reduction, problem):
    logits, t = problem
    c = logits.shape[-1]

    def ref(a):
        lp = np_log_softmax(a)
        valid = t != -100
        nll = -np.take_along_axis(lp, np.where(valid, t, 0)[..., None], -1)[..., 0]
        per = ((1 - smoothing) * nll - smoothing * lp.sum(-1) / c) * valid
        return per.sum() / max(valid.sum(), 1) if reduction == "mean" else np_reduce(per, reduction)

    from autograd.ops.loss import cross_entropy_composed
    check_op(lambda a: cross_entropy_composed(a, t, reduction=reduction, label_smoothing=smoothing), ref, logits)
    if smoothing:
        check_op(lambda a: F.cross_entropy(a, t, reduction=reduction, label_smoothing=smoothing), ref, logits,
                 grad=False)
    else:  # the composed path agrees with the fused op
        fused = F.cross_entropy(ag.Tensor(logits), t, reduction=reduction)
        np.testing.assert_allclose(fused.numpy(), ref(logits), rtol=1e-10)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@given(data=st.data())
@settings(deadline=None)
def test_cross_entropy_probability_targets(smoothing, data):
    lead = data.draw(shapes(min_dims=1, max_dims=2, max_side=3))
    c = data.draw(st.integers(2, 4))
    logits = data.draw(arrays(lead + (c,), low=-3, high=3))
    raw = data.draw(arrays(lead + (c,), low=0.1, high=1.0))
    q = raw / raw.sum(-1, keepdims=True)

    def ref(a, b):
        qs = b * (1 - smoothing) + smoothing / c
        return (-(qs * np_log_softmax(a)).sum(-1)).mean()

    check_op(lambda a, b: F.cross_entropy(a, b, label_smoothing=smoothing), ref, logits, q)


def test_all_ignored_targets_give_zero_like_the_fused_op():
    x = ag.Tensor(np.zeros((2, 3)), requires_grad=True)
    t = np.array([-100, -100])
    loss = F.cross_entropy(x, t, label_smoothing=0.1)
    assert loss.item() == 0.0 == F.cross_entropy(x, t).item() == F.nll_loss(x, t).item()
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 0.0)


def test_loss_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"mse_loss: input of shape \(2,\) and target of shape \(3,\)"):
        F.mse_loss(ag.ones(2), ag.ones(3))
    with pytest.raises(ValueError, match=r"nll_loss: targets of shape \(3,\) do not match input of shape \(2, 4\)"):
        F.nll_loss(ag.ones(2, 4), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match=r"nll_loss: targets \(class indices\) must be an integer tensor"):
        F.nll_loss(ag.ones(2, 4), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        F.cross_entropy(ag.ones(2, 4), np.array([0, 1]), label_smoothing=1.5)
