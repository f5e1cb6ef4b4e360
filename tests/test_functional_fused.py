"""Every fused op against its public composed reference (``fused=False``), in float64 on hypothesis-drawn shapes
(odd sizes included): the same forward, the same gradients for a random upstream gradient, gradcheck, and
gradgradcheck (higher orders come from the reference). Also: declared parameters, the kernel registry's answer
for NumPy arrays, and the NumPy array code of the ops against their closed forms."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
from autograd.cuda import kernel_for
from autograd.ops.fused import attention, cross_entropy, gelu, heads, layer_norm, softmax
from autograd.ops.fused.base import FusedFunction
from autograd.ops.fused.layer_norm import LayerNorm
from strategies import arrays

side = st.integers(1, 5)


def _t(a):
    return ag.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def _rows(draw):
    return tuple(draw(st.lists(side, min_size=1, max_size=2)))


def _ids(draw, shape, v):
    return np.asarray(draw(st.lists(st.integers(0, v - 1), min_size=int(np.prod(shape)),
                                    max_size=int(np.prod(shape))))).reshape(shape)


CASES = {
    "gelu": (lambda d: [d(arrays(_rows(d) + (d(side),), -3, 3))], lambda x, fused: F.gelu(x, fused=fused)),
    "bias_gelu": (lambda d: (lambda c: [d(arrays(_rows(d) + (c,), -3, 3)), d(arrays((c,)))])(d(side)),
                  lambda x, b, fused: F.bias_gelu(x, b, fused=fused)),
    "softmax": (lambda d: [d(arrays(_rows(d) + (d(side),), -3, 3))], lambda x, fused: F.softmax(x, 0, fused=fused)),
    "log_softmax": (lambda d: [d(arrays(_rows(d) + (d(side),), -3, 3))],
                    lambda x, fused: F.log_softmax(x, -1, fused=fused)),
    "layer_norm": (lambda d: (lambda c: [d(arrays(_rows(d) + (c,))), d(arrays((c,))), d(arrays((c,)))])(d(
        st.integers(2, 6))), lambda x, w, b, fused: F.layer_norm(x, w, b, fused=fused)),
    "layer_norm_plain": (lambda d: [d(arrays(_rows(d) + (d(st.integers(2, 6)),)))],
                         lambda x, fused: F.layer_norm(x, fused=fused)),
    "rms_norm": (lambda d: (lambda c: [d(arrays(_rows(d) + (c,), away_from_zero=0.3)), d(arrays((c,)))])(d(side)),
                 lambda x, w, fused: F.rms_norm(x, w, fused=fused)),
    "linear": (lambda d: (lambda i, o: [d(arrays(_rows(d) + (i,))), d(arrays((o, i))), d(arrays((o,)))])(d(side),
                                                                                                       d(side)),
               lambda x, w, b, fused: F.linear(x, w, b, fused=fused)),
    "attention": (lambda d: (lambda b, h, tq, tk, dd: [d(arrays((b, h, tq, dd))), d(arrays((b, h, tk, dd))),
                                                       d(arrays((b, h, tk, dd)))])(
        d(st.integers(1, 2)), d(st.integers(1, 2)), 2, 3, d(st.integers(1, 3))),
                  lambda q, k, v, fused: F.scaled_dot_product_attention(q, k, v, is_causal=True, fused=fused)),
    "merge_heads": (lambda d: [d(arrays((d(st.integers(1, 2)), d(side), d(side), d(side))))],
                    lambda y, fused: F.merge_heads(y, fused=fused)),
    "split_heads": (lambda d: [d(arrays((d(st.integers(1, 2)), d(side), 4 * d(st.integers(1, 2)))))],
                    lambda x, fused: sum(((t * (i + 1)) ** 2).sum() for i, t in
                                         enumerate(F.split_heads(x, 2, 1, fused=fused)))),
}


def _cross_entropy_case(d):
    n, v = d(side), d(st.integers(2, 6))
    t = _ids(d, (n,), v)
    t[d(st.integers(0, n - 1))] = -100 if d(st.booleans()) else t[0]
    reduction = d(st.sampled_from(["mean", "sum", "none"]))
    return [d(arrays((n, v), -3, 3))], t, reduction


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_fused_op_matches_its_reference_and_gradchecks(name, data):
    make, fn = CASES[name]
    inputs = make(data.draw)
    ys, grads = [], []
    for fused in (True, False):
        xs = [_t(a) for a in inputs]
        y = fn(*xs, fused=fused)
        g = np.cos(np.arange(y.size) + 1.0).reshape(y.shape)
        y.backward(ag.Tensor(g))
        ys.append(y.numpy())
        grads.append([x.grad.numpy() for x in xs])
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-10, atol=1e-12, err_msg=name)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11, err_msg=name)
    assert ag.gradcheck(lambda *xs: fn(*xs, fused=True), inputs)


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=5)   # gradgradcheck is the slow one: a few shapes per op
@given(data=st.data())
def test_fused_op_is_differentiable_twice(name, data):
    make, fn = CASES[name]
    inputs = make(data.draw)
    assert ag.gradgradcheck(lambda *xs: fn(*xs, fused=True), inputs), name


@given(st.data())
def test_cross_entropy_matches_its_reference(data):
    (logits,), t, reduction = _cross_entropy_case(data.draw)
    outs = []
    for fused in (True, False):
        x = _t(logits)
        y = F.cross_entropy(x, t, reduction=reduction, fused=fused)
        y.backward(ag.Tensor(np.linspace(0.5, 1.5, y.size).reshape(y.shape)))
        outs.append((y.numpy(), x.grad.numpy()))
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert ag.gradcheck(lambda x: F.cross_entropy(x, t, reduction=reduction), [logits])
    assert ag.gradgradcheck(lambda x: F.cross_entropy(x, t, reduction=reduction), [logits])


@given(st.data())
def test_embedding_and_dropout_match_their_references(data):
    v, c = data.draw(side), data.draw(side)
    ids = _ids(data.draw, (data.draw(side), data.draw(side)), v)
    w0 = data.draw(arrays((v, c)))
    outs = []
    for fused in (True, False):
        w = _t(w0)
        y = F.embedding(ids, w, fused=fused)
        (y * y).sum().backward()
        outs.append((y.numpy(), w.grad.numpy()))
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert ag.gradgradcheck(lambda w: F.embedding(ids, w), [w0])
    run = lambda x: F.dropout(x, 0.4, rng=np.random.default_rng(1))
    assert ag.gradcheck(run, [w0]) and ag.gradgradcheck(run, [w0])


def test_operators_declare_their_parameters():
    """Unknown or missing parameters are a TypeError naming the op and what it takes."""
    x = ag.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(TypeError, match=r"LayerNorm: unknown parameter\(s\) epsilon \(it takes has_w, has_b, eps\)"):
        LayerNorm.apply(x, has_w=False, has_b=False, epsilon=1e-5)
    with pytest.raises(TypeError, match="LayerNorm: missing parameter 'eps'"):
        LayerNorm.apply(x, has_w=False, has_b=False)
    with pytest.raises(TypeError, match=r"MergeHeads: unknown parameter\(s\) axis \(it takes no parameters\)"):
        heads.MergeHeads.apply(x, axis=1)
    for op in (gelu.GeluTanh, gelu.BiasGelu, softmax.Softmax, softmax.LogSoftmax, cross_entropy.CrossEntropy,
               LayerNorm, attention.Attention):
        assert issubclass(op, FusedFunction) and op.rule.startswith("d")


def test_numpy_arrays_never_ask_for_a_cuda_kernel():
    assert kernel_for("layer_norm_forward", np.ones(3)) is None
    assert kernel_for("no_such_kernel", np.ones(3)) is None


def test_numpy_code_against_closed_forms():
    """The array code of the fused ops (what the CUDA kernels reproduce) against direct formulas."""
    rng = np.random.default_rng(6)
    h, gy = rng.standard_normal((3, 8)) * 3, rng.standard_normal((3, 8))
    y, s = gelu.gelu_forward(h)
    t = np.tanh(gelu.GELU_K * (h + gelu.GELU_C * h ** 3))
    np.testing.assert_allclose(y, 0.5 * h * (1 + t), atol=1e-12)
    d = 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * gelu.GELU_K * (1 + 3 * gelu.GELU_C * h * h)
    np.testing.assert_allclose(gelu.gelu_backward(h, s, gy), gy * d, atol=1e-12)
    logits, tg = rng.standard_normal((5, 7)), np.array([1, -100, 6, 0, 3])
    losses, count, e, inv = cross_entropy.cross_entropy_forward(logits, tg, -100)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    keep = [0, 2, 3, 4]
    assert count == 4 and losses[1] == 0
    np.testing.assert_allclose(losses[keep], -np.log(p[keep, tg[keep]]), atol=1e-12)
    ref = p.copy()
    ref[keep, tg[keep]] -= 1
    ref[1] = 0
    np.testing.assert_allclose(cross_entropy.cross_entropy_backward(e, inv, tg, 0.5, -100, logits.dtype), 0.5 * ref,
                               atol=1e-12)
    x = rng.standard_normal((4, 6))
    y, rstd, xhat = layer_norm.layer_norm_forward(x, None, None, 1e-5)
    np.testing.assert_allclose(y, (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5),
                               atol=1e-12)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)) for _ in range(3))
    o, probs = attention.attention_forward(q, k, v, True, 0.5)
    sc = q @ k.swapaxes(-1, -2) * 0.5 + np.where(np.triu(np.ones((3, 3), bool), 1), -np.inf, 0)
    ref_p = np.exp(sc - sc.max(-1, keepdims=True))
    ref_p /= ref_p.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, ref_p, atol=1e-12)
    np.testing.assert_allclose(o, ref_p @ v, atol=1e-12)


def test_float16_on_the_cpu_keeps_float32_statistics():
    """float16 inputs: float16 outputs, statistics (and the loss) in float32, close to the float64 reference."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 64)) * 3 + 100
    y = F.layer_norm(ag.Tensor(x.astype(np.float16))).numpy()
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, F.layer_norm(ag.Tensor(x), fused=False).numpy(), atol=2e-2)
    loss = F.cross_entropy(ag.Tensor(x.astype(np.float16)), np.arange(4))
    assert loss.dtype == np.float32
