"""F.scaled_dot_product_attention: gradchecks, equality with the composed version, the causal property, the
KV-cache alignment (Tq < Tk), attention dropout, the nn_kernels contract, and errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
from autograd.ops import nn_kernels as K
from strategies import arrays


def T(a, grad=True):
    return ag.Tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def attention_ref(q, k, v, causal=True, scale=None):
    """softmax(q k^T * scale + mask) v from primitive ops only."""
    tq, tk, d = q.shape[2], k.shape[2], q.shape[3]
    s = (q @ k.swapaxes(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(d))
    if causal:
        s = ag.where(ag.Tensor(np.triu(np.ones((tq, tk), bool), k=1 + tk - tq)), -np.inf, s)
    s = s - ag.Tensor(s.data.max(axis=-1, keepdims=True))
    e = s.exp()
    return (e / e.sum(axis=-1, keepdims=True)) @ v


@st.composite
def qkv(draw, same_t=False):
    B, H, D = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    tk = draw(st.integers(1, 4))
    tq = tk if same_t else draw(st.integers(1, tk))
    return (draw(arrays((B, H, tq, D))), draw(arrays((B, H, tk, D))), draw(arrays((B, H, tk, D))))


@given(qkv(), st.booleans())
def test_attention_matches_composed_and_gradchecks(inputs, causal):
    q, k, v = inputs
    xs1 = [T(a) for a in inputs]
    xs2 = [T(a) for a in inputs]
    y1 = F.scaled_dot_product_attention(*xs1, causal=causal)
    y2 = attention_ref(*xs2, causal=causal)
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), atol=1e-12)
    g = np.random.default_rng(0).standard_normal(y1.shape)
    y1.backward(ag.Tensor(g))
    y2.backward(ag.Tensor(g))
    for a, b in zip(xs1, xs2):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-10)
    assert ag.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal), [q, k, v])
    assert ag.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal, scale=0.7), [q, k, v])


@given(qkv(same_t=True), st.data())
def test_causal_outputs_ignore_later_keys_and_values(inputs, data):
    q, k, v = inputs
    t = data.draw(st.integers(0, q.shape[2] - 1))
    k2, v2 = k.copy(), v.copy()
    k2[:, :, t + 1:] += 5.0
    v2[:, :, t + 1:] -= 3.0
    o1 = F.scaled_dot_product_attention(T(q, False), T(k, False), T(v, False)).numpy()
    o2 = F.scaled_dot_product_attention(T(q, False), T(k2, False), T(v2, False)).numpy()
    np.testing.assert_allclose(o1[:, :, : t + 1], o2[:, :, : t + 1], atol=1e-12)


def test_kv_cache_alignment():
    """Queries for the last Tq positions over Tk keys equal the last Tq rows of full causal attention."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    full = F.scaled_dot_product_attention(T(q, False), T(k, False), T(v, False)).numpy()
    for tq in (1, 2, 5):
        part = F.scaled_dot_product_attention(T(q[:, :, -tq:], False), T(k, False), T(v, False)).numpy()
        np.testing.assert_allclose(part, full[:, :, -tq:], atol=1e-12)
    # the first query sees only the first key, so its output is v[0]
    np.testing.assert_allclose(full[:, :, 0], v[:, :, 0], atol=1e-12)


def test_attention_float32_and_lse_contract():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3))
    o, lse = K.attention_forward(q, k, v, True, 1 / math.sqrt(8))
    assert o.shape == (1, 2, 4, 8) and o.dtype == np.float32 and lse.shape == (1, 2, 4) and lse.dtype == np.float32
    s = q.astype(np.float64) @ k.astype(np.float64).swapaxes(-1, -2) / math.sqrt(8)
    s[..., np.triu(np.ones((4, 4), bool), 1)] = -np.inf
    ref_lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5)
    ref = attention_ref(*(T(a, False) for a in (q, k, v))).numpy()
    np.testing.assert_allclose(o, ref, atol=1e-5)


def test_attention_dropout_path():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)) for _ in range(3))
    run = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, dropout_p=0.5, rng=np.random.default_rng(9))
    o1 = run(T(q), T(k), T(v)).numpy()
    o2 = run(T(q), T(k), T(v)).numpy()
    np.testing.assert_array_equal(o1, o2)  # same seed, same mask
    assert not np.allclose(o1, F.scaled_dot_product_attention(T(q), T(k), T(v)).numpy())
    assert ag.gradcheck(run, [q, k, v])


def test_attention_double_backward_error_and_bad_inputs():
    x = T(np.random.default_rng(4).standard_normal((1, 1, 2, 2)))
    with pytest.raises(ag.BackwardError, match="Attention"):
        ag.grad(F.scaled_dot_product_attention(x, x, x).sum(), [x], create_graph=True)
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        F.scaled_dot_product_attention(ag.zeros((2, 3)), ag.zeros((2, 3)), ag.zeros((2, 3)))
    with pytest.raises(ValueError, match="shapes do not fit"):
        F.scaled_dot_product_attention(ag.zeros((1, 1, 2, 4)), ag.zeros((1, 1, 2, 3)), ag.zeros((1, 1, 2, 3)))
    with pytest.raises(ValueError, match="Tq <= Tk"):
        F.scaled_dot_product_attention(ag.zeros((1, 1, 3, 4)), ag.zeros((1, 1, 2, 4)), ag.zeros((1, 1, 2, 4)))
    with pytest.raises(ValueError, match="dropout_p"):
        F.scaled_dot_product_attention(x, x, x, dropout_p=1.0)


def test_kernels_dispatch_falls_back_to_generic():
    """Without a registered CUDA kernel (or for NumPy input) every kernel runs its generic code."""
    x = np.random.default_rng(5).standard_normal((2, 3))
    assert K.cuda_kernel("gelu_forward", x) is None
    np.testing.assert_array_equal(K.gelu_forward(x), K.gelu_forward.generic(x))
    ps, gs = [np.ones(3)], [np.full(3, 0.5)]
    ms, vs = [np.zeros(3)], [np.zeros(3)]
    K.adamw_step(ps, gs, ms, vs, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    np.testing.assert_allclose(ps[0], 1 - 0.1, rtol=1e-6)  # first Adam step moves by lr * sign(g)


def test_contract_kernels_match_saving_paths():
    """The kernel-contract functions (docs/KERNELS.md) (what a CUDA kernel must reproduce) agree with the generic saving paths the fused
    ops use on NumPy."""
    rng = np.random.default_rng(6)
    x, gy = rng.standard_normal((2, 3, 8)) * 3, rng.standard_normal((2, 3, 8))
    b = rng.standard_normal(8)
    y, h, s = K.gelu_forward_saving(x, b)
    np.testing.assert_allclose(K.bias_gelu_forward(x, b), y, atol=1e-12)
    gx, gb = K.bias_gelu_backward(x, b, gy)
    np.testing.assert_allclose(K.gelu_backward_saved(h, s, gy), gx, atol=1e-12)
    np.testing.assert_allclose(gb, gx.sum(axis=(0, 1)), atol=1e-12)
    np.testing.assert_allclose(K.gelu_backward(x + b, gy), gx, atol=1e-12)
    q, k, v, do = (rng.standard_normal((1, 2, 3, 4)) for _ in range(4))
    k, v = np.concatenate([k, k], axis=2), np.concatenate([v, v * 2], axis=2)  # Tk = 6 > Tq = 3
    for causal in (True, False):
        o, lse = K.attention_forward(q, k, v, causal, 0.5)
        o2, lse2, p = K.attention_probs_forward(q, k, v, causal, 0.5)
        np.testing.assert_allclose(o, o2, atol=1e-12)
        grads = K.attention_backward(q, k, v, o, lse, do, causal, 0.5)
        for a, b_ in zip(grads, K.attention_probs_backward(q, k, v, o2, p, do, 0.5)):
            np.testing.assert_allclose(a, b_, atol=1e-12)
    logits, t = rng.standard_normal((5, 7)), np.array([1, -100, 6, 0, 3])
    loss_sum, lse, count = K.cross_entropy_forward(logits, t, -100)
    d = K.cross_entropy_backward(logits, t, lse, 0.5, -100)
    p = np.exp(logits - lse[:, None])
    ref = p.copy()
    ref[[0, 2, 3, 4], [1, 6, 0, 3]] -= 1
    ref[1] = 0
    np.testing.assert_allclose(d, 0.5 * ref, atol=1e-12)
    assert count == 4 and abs(loss_sum - (-np.log(p[[0, 2, 3, 4], [1, 6, 0, 3]])).sum()) < 1e-12


@pytest.mark.parametrize("has_w,has_b", [(True, True), (True, False), (False, True), (False, False)])
def test_layer_norm_contract_matches_saving_path(has_w, has_b):
    rng = np.random.default_rng(7)
    x, gy = rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 3, 6))
    w = rng.standard_normal(6) if has_w else None
    b = rng.standard_normal(6) if has_b else None
    y, mean, rstd = K.layer_norm_forward(x, w, b, 1e-5)
    y2, rstd2, xhat = K.layer_norm_forward_saving(x, w, b, 1e-5)
    np.testing.assert_allclose(y, y2, atol=1e-12)
    np.testing.assert_allclose(rstd.reshape(-1), rstd2, atol=1e-12)
    gx, gw, gb = K.layer_norm_backward(gy, x, w, mean, rstd)
    gx2, gw2, gb2 = K.layer_norm_backward_saved(gy, xhat, w, rstd2, has_b)
    np.testing.assert_allclose(gx, gx2, atol=1e-12)
    if has_w:
        np.testing.assert_allclose(gw, gw2, atol=1e-12)
    if has_b:
        np.testing.assert_allclose(gb, gb2, atol=1e-12)


def test_cross_entropy_contract_matches_saving_path():
    rng = np.random.default_rng(8)
    logits, t = rng.standard_normal((6, 5)) * 3, np.array([0, 4, -1, 2, -1, 1])
    loss_sum, lse, count = K.cross_entropy_forward(logits, t, -1)
    loss_sum2, count2, e, inv = K.cross_entropy_forward_saving(logits, t, -1)
    assert count == count2 == 4 and abs(loss_sum - loss_sum2) < 1e-12
    np.testing.assert_allclose(K.cross_entropy_backward(logits, t, lse, 0.25, -1),
                               K.cross_entropy_backward_saved(e, inv, t, 0.25, -1, logits.dtype), atol=1e-12)


def test_recompute_paths_when_nothing_is_saved(monkeypatch):
    """With the save limit at 0 the fused ops take the branch CuPy takes (recompute through the KERNEL_API
    functions): same values and gradients."""
    from autograd.ops import nn as nn_ops
    rng = np.random.default_rng(9)
    x, b = rng.standard_normal((2, 3, 5)), rng.standard_normal(5)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)) for _ in range(3))
    t = np.array([[0, 4, -100], [2, 1, 3]])
    cases = [
        (F.gelu, [x]), (F.bias_gelu, [x, b]), (F.layer_norm, [x, b, b]), (lambda a: F.layer_norm(a), [x]),
        (lambda a: F.cross_entropy(a, t), [x]), (F.scaled_dot_product_attention, [q, k, v]),
    ]
    saved = []
    for fn, arrays in cases:
        ts = [T(a) for a in arrays]
        y = fn(*ts)
        y.backward(ag.Tensor(np.ones(y.shape)))
        saved.append((y.numpy(), [a.grad.numpy() for a in ts]))
    monkeypatch.setattr(nn_ops, "SAVE_FOR_BACKWARD_LIMIT_BYTES", 0)
    for (fn, arrays), (y_ref, g_ref) in zip(cases, saved):
        ts = [T(a) for a in arrays]
        y = fn(*ts)
        y.backward(ag.Tensor(np.ones(y.shape)))
        np.testing.assert_allclose(y.numpy(), y_ref, atol=1e-12)
        for a, g in zip(ts, g_ref):
            np.testing.assert_allclose(a.grad.numpy(), g, atol=1e-12)
        assert ag.gradcheck(fn, arrays)
