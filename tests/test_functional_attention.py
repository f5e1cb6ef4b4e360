"""F.scaled_dot_product_attention (PyTorch's signature): gradchecks, equality with a composition written here and
with the public composed reference (fused=False), the causal property, the KV-cache alignment (Tq < Tk), boolean
and additive masks, grouped-query heads, attention dropout, double backward, and errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
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
    y1 = F.scaled_dot_product_attention(*xs1, is_causal=causal)
    y2 = attention_ref(*xs2, causal=causal)
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), atol=1e-12)
    g = np.random.default_rng(0).standard_normal(y1.shape)
    y1.backward(ag.Tensor(g))
    y2.backward(ag.Tensor(g))
    for a, b in zip(xs1, xs2):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-10)
    assert ag.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal), [q, k, v])
    assert ag.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal, scale=0.7),
                        [q, k, v])


@given(qkv(same_t=True), st.data())
def test_causal_outputs_ignore_later_keys_and_values(inputs, data):
    q, k, v = inputs
    t = data.draw(st.integers(0, q.shape[2] - 1))
    k2, v2 = k.copy(), v.copy()
    k2[:, :, t + 1:] += 5.0
    v2[:, :, t + 1:] -= 3.0
    o1 = F.scaled_dot_product_attention(T(q, False), T(k, False), T(v, False), is_causal=True).numpy()
    o2 = F.scaled_dot_product_attention(T(q, False), T(k2, False), T(v2, False), is_causal=True).numpy()
    np.testing.assert_allclose(o1[:, :, : t + 1], o2[:, :, : t + 1], atol=1e-12)


def test_kv_cache_alignment():
    """Queries for the last Tq positions over Tk keys equal the last Tq rows of full causal attention."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    full = F.scaled_dot_product_attention(T(q, False), T(k, False), T(v, False), is_causal=True).numpy()
    for tq in (1, 2, 5):
        part = F.scaled_dot_product_attention(T(q[:, :, -tq:], False), T(k, False), T(v, False),
                                              is_causal=True).numpy()
        np.testing.assert_allclose(part, full[:, :, -tq:], atol=1e-12)
    # the first query sees only the first key, so its output is v[0]
    np.testing.assert_allclose(full[:, :, 0], v[:, :, 0], atol=1e-12)


def test_default_is_not_causal_and_float32_stays_float32():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3))
    o = F.scaled_dot_product_attention(*(T(a, False).astype(np.float32) for a in (q, k, v)))
    assert o.dtype == np.float32 and o.shape == (1, 2, 4, 8)
    ref = attention_ref(*(T(a, False) for a in (q, k, v)), causal=False).numpy()
    np.testing.assert_allclose(o.numpy(), ref, atol=1e-5)
    causal = F.scaled_dot_product_attention(*(T(a, False) for a in (q, k, v)), is_causal=True).numpy()
    assert not np.allclose(causal, ref)


@given(qkv(), st.data())
def test_boolean_and_additive_masks_match_the_composed_reference(inputs, data):
    """A boolean mask (True = may attend) and the additive mask with -inf where it is False give the same output and
    gradients, equal to the composed reference; every row keeps its first key so no row is fully masked."""
    q, k, v = inputs
    tq, tk = q.shape[2], k.shape[2]
    shape = data.draw(st.sampled_from([(tq, tk), (1, 1, tq, tk), (q.shape[0], 1, tq, tk)]))
    allowed = np.random.default_rng(data.draw(st.integers(0, 99))).random(shape) < 0.6
    allowed[..., 0] = True
    additive = np.where(allowed, 0.0, -np.inf)
    outs = []
    for mask, fused in ((allowed, True), (additive, True), (allowed, False), (ag.Tensor(additive), True)):
        xs = [T(a) for a in inputs]
        y = F.scaled_dot_product_attention(*xs, attn_mask=mask, fused=fused)
        (y * ag.Tensor(np.cos(np.arange(y.size)).reshape(y.shape))).sum().backward()
        outs.append([y.numpy()] + [x.grad.numpy() for x in xs])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_allclose(a, b, atol=1e-10)
    assert ag.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=allowed), [q, k, v])


def test_float_mask_with_grad_and_causal_plus_mask():
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)) for _ in range(3))
    bias = rng.standard_normal((3, 3)) * 0.5
    assert ag.gradcheck(lambda a, b, c, m: F.scaled_dot_product_attention(a, b, c, attn_mask=m), [q, k, v, bias])
    both = F.scaled_dot_product_attention(T(q), T(k), T(v), attn_mask=bias, is_causal=True).numpy()
    tri = np.where(np.triu(np.ones((3, 3), bool), 1), -np.inf, bias)
    np.testing.assert_allclose(both, F.scaled_dot_product_attention(T(q), T(k), T(v), attn_mask=tri).numpy(),
                               atol=1e-12)


def test_grouped_query_heads():
    """enable_gqa: 4 query heads over 2 k/v heads equal explicit repetition of each k/v head twice."""
    rng = np.random.default_rng(12)
    q, k, v = rng.standard_normal((2, 4, 3, 5)), rng.standard_normal((2, 2, 3, 5)), rng.standard_normal((2, 2, 3, 5))
    o = F.scaled_dot_product_attention(T(q), T(k), T(v), is_causal=True, enable_gqa=True).numpy()
    rep = lambda a: np.repeat(a, 2, axis=1)
    ref = F.scaled_dot_product_attention(T(q), T(rep(k)), T(rep(v)), is_causal=True).numpy()
    np.testing.assert_allclose(o, ref, atol=1e-12)
    assert ag.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, enable_gqa=True), [q, k, v])
    with pytest.raises(ValueError, match="enable_gqa"):
        F.scaled_dot_product_attention(T(q), T(k), T(v))


def test_attention_dropout_path():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)) for _ in range(3))
    run = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, dropout_p=0.5, is_causal=True,
                                                         rng=np.random.default_rng(9))
    o1 = run(T(q), T(k), T(v)).numpy()
    o2 = run(T(q), T(k), T(v)).numpy()
    np.testing.assert_array_equal(o1, o2)  # same seed, same mask
    assert not np.allclose(o1, F.scaled_dot_product_attention(T(q), T(k), T(v), is_causal=True).numpy())
    assert ag.gradcheck(run, [q, k, v])


def test_attention_double_backward_and_bad_inputs():
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((1, 2, 3, 2)) for _ in range(3))
    assert ag.gradgradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True), [q, k, v])
    x = T(q)
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        F.scaled_dot_product_attention(ag.zeros((2, 3)), ag.zeros((2, 3)), ag.zeros((2, 3)))
    with pytest.raises(ValueError, match="shapes do not fit"):
        F.scaled_dot_product_attention(ag.zeros((1, 1, 2, 4)), ag.zeros((1, 1, 2, 3)), ag.zeros((1, 1, 2, 3)))
    with pytest.raises(ValueError, match="Tq <= Tk"):
        F.scaled_dot_product_attention(ag.zeros((1, 1, 3, 4)), ag.zeros((1, 1, 2, 4)), ag.zeros((1, 1, 2, 4)),
                                       is_causal=True)
    with pytest.raises(ValueError, match="dropout_p"):
        F.scaled_dot_product_attention(x, x, x, dropout_p=1.0)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(4, 4\) does not broadcast"):
        F.scaled_dot_product_attention(x, x, x, attn_mask=np.ones((4, 4), bool))
    with pytest.raises(TypeError, match="attn_mask must be boolean or float"):
        F.scaled_dot_product_attention(x, x, x, attn_mask=np.ones((3, 3), np.int64))
