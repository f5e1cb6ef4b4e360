"""Fused ops of autograd.functional (activations, softmax family, cross-entropy, norms, embedding, dropout,
masked_fill, linear): gradchecks in float64 on hypothesis shapes, equality with the composed primitive-op versions,
double backward where supported, and bad-input messages. Attention is in test_functional_attention.py."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
from autograd.ops.fused.layer_norm import layer_norm_reference
from autograd.ops.fused.rms_norm import rms_norm_reference
from strategies import arrays, shapes


def T(a, grad=True):
    return ag.Tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def assert_same(fused, composed, inputs, atol=1e-10):
    """Values and gradients (for a random upstream gradient) of two functions agree."""
    xs1 = [T(a) for a in inputs]
    xs2 = [T(a) for a in inputs]
    y1, y2 = fused(*xs1), composed(*xs2)
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), atol=atol, rtol=1e-8)
    g = np.random.default_rng(0).standard_normal(y1.shape)
    y1.backward(ag.Tensor(g))
    y2.backward(ag.Tensor(g))
    for a, b in zip(xs1, xs2):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=atol, rtol=1e-7)


# ---------------------------------------------------------------------------------------- composed references
def softmax_ref(x, axis=-1):
    e = (x - ag.Tensor(x.data.max(axis=axis, keepdims=True))).exp()
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_ref(x, axis=-1):
    return x - x.logsumexp(axis=axis, keepdims=True)


def cross_entropy_ref(logits, targets, ignore_index=-100):
    V = logits.shape[-1]
    lsm = log_softmax_ref(logits.reshape(-1, V))
    t = np.asarray(targets).reshape(-1)
    valid = t != ignore_index
    picked = lsm[np.arange(t.size), np.where(valid, t, 0)]
    return -(picked * ag.Tensor(valid.astype(np.float64))).sum() / max(int(valid.sum()), 1)


layer_norm_ref = layer_norm_reference   # the public composed references (F.layer_norm(..., fused=False))
rms_norm_ref = rms_norm_reference


# ---------------------------------------------------------------------------------------- activations
@given(st.data())
def test_gelu_fused_matches_primitive_and_gradchecks(data):
    x = data.draw(arrays(data.draw(shapes(1, 3)), low=-3, high=3))
    assert_same(F.gelu, lambda t: F.gelu(t, fused=False), [x])
    assert ag.gradcheck(F.gelu, [x])
    assert ag.gradgradcheck(F.gelu, [x])
    assert ag.gradcheck(lambda t: F.gelu(t, approximate="none"), [x])


@given(st.data())
def test_bias_gelu(data):
    shape = data.draw(shapes(1, 3))
    x = data.draw(arrays(shape))
    b = data.draw(arrays(shape[-1:]))
    assert_same(F.bias_gelu, lambda t, c: F.gelu(t + c, fused=False), [x, b])
    assert ag.gradcheck(F.bias_gelu, [x, b])
    assert ag.gradgradcheck(F.bias_gelu, [x, b])


def test_simple_activations():
    x = np.array([-1.5, -0.2, 0.3, 2.0])
    for f in (F.relu, F.silu, F.sigmoid, F.tanh):
        assert ag.gradcheck(f, [x])
    np.testing.assert_allclose(F.relu(T(x)).numpy(), np.maximum(x, 0))
    np.testing.assert_allclose(F.silu(T(x)).numpy(), x / (1 + np.exp(-x)))


# ---------------------------------------------------------------------------------------- softmax family
@given(st.data())
def test_softmax_and_log_softmax(data):
    shape = data.draw(shapes(1, 3))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(arrays(shape, low=-4, high=4))
    for fused, ref in ((F.softmax, softmax_ref), (F.log_softmax, log_softmax_ref)):
        assert_same(lambda t: fused(t, axis=axis), lambda t: ref(t, axis=axis), [x])
        assert ag.gradcheck(lambda t: fused(t, axis=axis), [x])
        assert ag.gradgradcheck(lambda t: fused(t, axis=axis), [x])


def test_softmax_stable_and_float16_statistics():
    x = np.array([[1000.0, 1001.0, 999.0], [-1e4, 0.0, 1e4]])
    y = F.softmax(T(x, grad=False)).numpy()
    assert np.all(np.isfinite(y)) and np.allclose(y.sum(-1), 1)
    assert np.all(np.isfinite(F.log_softmax(T(x, grad=False)).numpy()))
    h = ag.Tensor(np.full((2, 4096), 3.0, dtype=np.float16))  # sum of exp in float16 would lose precision
    np.testing.assert_allclose(F.softmax(h).numpy().astype(np.float64), 1 / 4096, rtol=1e-2)
    assert F.softmax(h).dtype == np.float16


# ---------------------------------------------------------------------------------------- cross-entropy
@given(st.data())
def test_cross_entropy_matches_composed(data):
    lead = data.draw(st.sampled_from([(3,), (2, 3), (1, 4)]))
    V = data.draw(st.integers(2, 5))
    logits = data.draw(arrays(lead + (V,), low=-3, high=3))
    seed = data.draw(st.integers(0, 1000))
    rng = np.random.default_rng(seed)
    t = rng.integers(0, V, size=lead)
    t[rng.random(lead) < 0.3] = -100
    if (t == -100).all():
        t.flat[0] = 0
    assert_same(lambda z: F.cross_entropy(z, t), lambda z: cross_entropy_ref(z, t), [logits])
    assert ag.gradcheck(lambda z: F.cross_entropy(z, t), [logits])
    assert ag.gradcheck(lambda z: F.cross_entropy(z, t, reduction="sum"), [logits])
    assert ag.gradcheck(lambda z: F.cross_entropy(z, t, reduction="none"), [logits])
    assert ag.gradgradcheck(lambda z: F.cross_entropy(z, t), [logits])
    assert ag.gradgradcheck(lambda z: F.cross_entropy(z, t, reduction="none"), [logits])


def test_cross_entropy_ignore_index_and_reductions():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 6))
    t = np.array([1, -1, 5, -1])
    z = T(logits)
    loss = F.cross_entropy(z, t, ignore_index=-1)
    loss.backward()
    ref = -np.mean([logits[0] [1] - np.log(np.exp(logits[0]).sum()), logits[2][5] - np.log(np.exp(logits[2]).sum())])
    assert abs(loss.item() - ref) < 1e-12
    assert np.all(z.grad.numpy()[[1, 3]] == 0)  # ignored rows get no gradient
    s = F.cross_entropy(T(logits), t, ignore_index=-1, reduction="sum").item()
    assert abs(s - 2 * ref) < 1e-12
    per = F.cross_entropy(T(logits), t, ignore_index=-1, reduction="none").numpy()
    assert per.shape == (4,) and per[1] == 0 and abs(per.sum() - s) < 1e-12


def test_cross_entropy_all_ignored_is_zero_with_zero_grad():
    z = T(np.ones((2, 3)))
    loss = F.cross_entropy(z, np.array([-100, -100]))
    loss.backward()
    assert loss.item() == 0.0 and np.all(z.grad.numpy() == 0)


def test_cross_entropy_3d_and_float32():
    rng = np.random.default_rng(2)
    logits = ag.Tensor(rng.standard_normal((2, 3, 7)).astype(np.float32), requires_grad=True)
    t = ag.Tensor(rng.integers(0, 7, (2, 3)))
    loss = F.cross_entropy(logits, t)
    assert loss.dtype == np.float32 and loss.shape == ()
    loss.backward()
    assert logits.grad.shape == (2, 3, 7) and logits.grad.dtype == np.float32
    ref = cross_entropy_ref(T(logits.numpy()), t.numpy()).item()
    assert abs(loss.item() - ref) < 1e-5


def test_cross_entropy_bad_inputs():
    z = T(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="integer"):
        F.cross_entropy(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        F.cross_entropy(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"target 3 is out of range \[0, 3\)"):
        F.cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="out of range"):
        F.cross_entropy(z, np.array([-5, 0]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(z, np.array([0, 1]), reduction="avg")


# ---------------------------------------------------------------------------------------- norms
@given(st.data())
def test_layer_norm(data):
    shape = data.draw(shapes(1, 3, max_side=5).filter(lambda s: s[-1] >= 2))
    x = data.draw(arrays(shape))
    w = data.draw(arrays(shape[-1:]))
    b = data.draw(arrays(shape[-1:]))
    assert_same(F.layer_norm, layer_norm_ref, [x, w, b], atol=1e-9)
    assert_same(lambda t: F.layer_norm(t), lambda t: layer_norm_ref(t), [x], atol=1e-9)
    assert_same(lambda t, c: F.layer_norm(t, c), lambda t, c: layer_norm_ref(t, c), [x, w], atol=1e-9)
    assert ag.gradcheck(F.layer_norm, [x, w, b])
    assert ag.gradcheck(lambda t, c: F.layer_norm(t, bias=c), [x, b])


@given(st.data())
def test_rms_norm(data):
    shape = data.draw(shapes(1, 3, max_side=5))
    x = data.draw(arrays(shape, away_from_zero=0.1))
    w = data.draw(arrays(shape[-1:]))
    assert_same(F.rms_norm, rms_norm_ref, [x, w], atol=1e-9)
    assert_same(F.rms_norm, rms_norm_ref, [x], atol=1e-9)
    assert ag.gradcheck(F.rms_norm, [x, w])


def test_norms_float16_stats_and_errors():
    x16 = ag.Tensor((np.random.default_rng(3).standard_normal((2, 64)) * 300 + 1000).astype(np.float16))
    y = F.layer_norm(x16).numpy().astype(np.float64)
    assert F.layer_norm(x16).dtype == np.float16 and np.all(np.isfinite(y))
    assert abs(y.mean()) < 1e-2 and abs(y.std() - 1) < 1e-2
    assert np.all(np.isfinite(F.rms_norm(x16).numpy()))
    with pytest.raises(ValueError, match=r"weight must have shape \(64,\)"):
        F.layer_norm(x16, ag.ones((3,)))
    with pytest.raises(ValueError, match=r"weight must have shape"):
        F.rms_norm(x16, ag.ones((3,)))


def test_norms_are_differentiable_twice():
    """Under create_graph the fused norms differentiate their composed references: gradgradcheck passes."""
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3)), rng.standard_normal(3), rng.standard_normal(3)
    assert ag.gradgradcheck(lambda a, c, d: F.layer_norm(a, c, d), [x, w, b])
    assert ag.gradgradcheck(lambda a, c: F.rms_norm(a, c), [x, w])


# ---------------------------------------------------------------------------------------- embedding
@given(st.data())
def test_embedding(data):
    V, C = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    w = data.draw(arrays((V, C)))
    ids = np.asarray(data.draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=6)))
    ids = ids.reshape(1, -1) if data.draw(st.booleans()) else ids
    assert_same(lambda t: F.embedding(ids, t), lambda t: t[ids], [w])
    assert ag.gradcheck(lambda t: F.embedding(ids, t), [w])
    assert ag.gradgradcheck(lambda t: F.embedding(ids, t) * F.embedding(ids, t), [w])


def test_embedding_repeated_ids_add_up_and_errors():
    w = T(np.arange(12.0).reshape(4, 3))
    ids = np.array([[1, 1, 3], [1, 0, 3]])
    y = F.embedding(ag.Tensor(ids), w)
    assert y.shape == (2, 3, 3)
    np.testing.assert_array_equal(y.numpy()[0, 2], [9, 10, 11])
    y.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy()[:, 0], [1, 3, 0, 2])
    with pytest.raises(IndexError, match=r"id 4 is out of range \[0, 4\)"):
        F.embedding(np.array([0, 4]), w)
    with pytest.raises(IndexError, match=r"id -1 is out of range"):
        F.embedding(np.array([-1]), w)
    with pytest.raises(TypeError, match="embedding: ids .* integer.*float"):
        F.embedding(np.array([0.0, 1.0]), w)


# ---------------------------------------------------------------------------------------- dropout
def test_dropout_reproducible_and_statistics():
    x = ag.ones((200, 100), requires_grad=True)
    y1 = F.dropout(x, 0.3, rng=np.random.default_rng(7))
    y2 = F.dropout(x, 0.3, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    kept = y1.numpy() != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y1.numpy()[kept], 1 / 0.7, rtol=1e-6)
    assert abs(y1.numpy().mean() - 1.0) < 0.05  # inverted scaling keeps the mean
    y1.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), y1.numpy())  # the saved mask is the gradient
    assert F.dropout(x, 0.3, training=False) is x and F.dropout(x, 0.0) is x
    assert np.all(F.dropout(x, 1.0).numpy() == 0)
    with pytest.raises(ValueError, match="dropout: p"):
        F.dropout(x, 1.5)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        F.dropout(x, 0.5, rng=3)


def test_dropout_gradcheck():
    x = np.random.default_rng(5).standard_normal((3, 4))
    assert ag.gradcheck(lambda t: F.dropout(t, 0.5, rng=np.random.default_rng(0)), [x])
    assert ag.gradgradcheck(lambda t: F.dropout(t * t, 0.5, rng=np.random.default_rng(0)), [x])


# ---------------------------------------------------------------------------------------- masked_fill, linear
@given(st.data())
def test_masked_fill(data):
    shape = data.draw(shapes(1, 3))
    x = data.draw(arrays(shape))
    mshape = tuple(1 if data.draw(st.booleans()) else s for s in shape)[data.draw(st.integers(0, len(shape))):]
    mask = np.random.default_rng(data.draw(st.integers(0, 99))).random(mshape) < 0.5
    y = F.masked_fill(T(x, grad=False), mask, -7.0).numpy()
    np.testing.assert_array_equal(y, np.where(mask, -7.0, x))
    assert ag.gradcheck(lambda t: F.masked_fill(t, mask, 0.5), [x])


def test_masked_fill_errors():
    x = T(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="boolean"):
        F.masked_fill(x, np.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match=r"\(4,\).*\(2, 3\)"):
        F.masked_fill(x, np.zeros(4, dtype=bool), 1.0)


@given(st.data())
def test_linear(data):
    lead = data.draw(shapes(0, 2))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x = data.draw(arrays(lead + (n_in,)))
    w = data.draw(arrays((n_out, n_in)))
    b = data.draw(arrays((n_out,)))
    assert_same(F.linear, lambda t, u, c: t @ u.T + c, [x, w, b])
    assert_same(F.linear, lambda t, u: t @ u.T, [x, w])
    assert ag.gradcheck(F.linear, [x, w, b])
    assert ag.gradgradcheck(F.linear, [x, w, b])


def test_linear_errors():
    with pytest.raises(ValueError, match=r"linear: x of shape \(2, 3\) does not fit weight of shape \(4, 5\)"):
        F.linear(ag.zeros((2, 3)), ag.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        F.linear(ag.zeros((2, 5)), ag.zeros((4, 5)), ag.zeros((3,)))
