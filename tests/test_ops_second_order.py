"""Second-order gradients of the primitive ops (create_graph=True): gradgradcheck of every op, closed-form second
derivatives of tanh and x**3, and a Hessian-vector product of a small MLP against finite differences of gradients."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
from autograd.ops import elementwise as E
from strategies import arrays, broadcastable_pair
from test_ops_support import away_from, gradgradcheck

rng = np.random.default_rng(1234)
A = rng.uniform(-1.5, 1.5, (2, 3))
B = rng.uniform(-1.5, 1.5, (3,))               # broadcasts against A
POS = rng.uniform(0.5, 2.0, (2, 3))
AWAY = away_from(A, [0.0], gap=0.1)           # away from the kinks of relu/abs
UNIQUE = A + np.arange(6).reshape(2, 3) * 0.05  # no ties for max/min
M1 = rng.standard_normal((2, 2, 3))
M2 = rng.standard_normal((3, 4))
COND = np.array([[True, False, True], [False, True, True]])

# name: (function of Tensors, inputs)
OPS = {
    # a linear op has a constant first derivative: squaring one input gives gradgradcheck a graph to check
    "add": (lambda x, y: x * x + y, [A, B]),
    "sub": (lambda x, y: x - y * y, [A, B]),
    "mul": (lambda x, y: x * y, [A, B]),
    "div": (lambda x, y: x / y, [A, POS[0]]),
    "neg": (lambda x: -(x * x), [A]),
    "pow_tensor": (lambda x, y: x ** y, [POS, B]),
    "pow_scalar_3": (lambda x: x ** 3, [A]),
    "pow_scalar_2": (lambda x: x ** 2, [A]),
    "pow_scalar_half": (lambda x: x ** 0.5, [POS]),
    "pow_scalar_neg": (lambda x: x ** -2, [POS]),
    "exp": (lambda x: x.exp(), [A]),
    "log": (lambda x: x.log(), [POS]),
    "sqrt": (lambda x: x.sqrt(), [POS]),
    "tanh": (lambda x: x.tanh(), [A]),
    "sigmoid": (lambda x: x.sigmoid(), [A]),
    "relu": (lambda x: x.relu() * x, [AWAY]),
    "abs": (lambda x: x.abs() * x, [AWAY]),
    "gelu_tanh": (lambda x: F.gelu(x), [A]),
    "gelu_exact": (lambda x: E.Gelu.apply(x), [A]),
    "silu": (lambda x: E.Silu.apply(x), [A]),
    "maximum": (lambda x, y: E.Maximum.apply(x * x, y), [UNIQUE, B]),
    "minimum": (lambda x, y: E.Minimum.apply(x * x, y), [UNIQUE, B]),
    "clip": (lambda x: x.clip(-0.5, 0.7) * x, [away_from(A, [-0.5, 0.7])]),
    "where": (lambda x, y: ag.where(COND, x * x, y * y), [A, B]),
    "sum": (lambda x: (x * x).sum(axis=1, keepdims=True), [A]),
    "mean": (lambda x: (x * x).mean(axis=0), [A]),
    "max": (lambda x: (x * x * x).max(axis=1), [UNIQUE]),
    "min": (lambda x: (x * x * x).min(), [UNIQUE]),
    "var": (lambda x: x.var(axis=1), [A]),
    "logsumexp": (lambda x: x.logsumexp(axis=-1), [A]),
    "reshape": (lambda x: (x * x).reshape(3, 2), [A]),
    "transpose": (lambda x: (x * x).transpose(1, 0), [A]),
    "swapaxes": (lambda x: (x * x).swapaxes(0, 2), [M1]),
    "broadcast_to": (lambda x: (x * x).broadcast_to((4, 3)), [B]),
    "squeeze_unsqueeze": (lambda x: (x * x).unsqueeze(1).squeeze(1), [A]),
    "getitem_slice": (lambda x: (x * x)[:, 1:], [A]),
    "getitem_repeats": (lambda x: (x * x)[np.array([1, 1, 0])], [A]),
    "getitem_mask": (lambda x: (x * x)[COND], [A]),
    "concatenate": (lambda x, y: ag.concatenate([x * x, y * y * y], axis=0), [A, A * 0.5]),
    "stack": (lambda x, y: ag.stack([x * x, y * x], axis=1), [A, A * 0.5]),
    "split": (lambda x: ag.split(x * x, [1], axis=1)[1] * ag.split(x, [1], axis=1)[1], [A]),
    "matmul_batch": (lambda x, y: x @ y, [M1, M2]),
    "matmul_square": (lambda x: x @ x.T, [A]),
    "astype": (lambda x: (x * x).astype(np.float64), [A]),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_gradgradcheck_primitive(name):
    fn, inputs = OPS[name]
    assert gradgradcheck(fn, [np.array(i, dtype=np.float64) for i in inputs])


@given(data=st.data())
@settings(deadline=None, max_examples=8)
def test_gradgradcheck_mul_div_broadcasting(data):
    sx, sy = data.draw(broadcastable_pair(max_dims=2, max_side=3))
    x = data.draw(arrays(sx))
    y = data.draw(arrays(sy, away_from_zero=0.5))
    assert gradgradcheck(lambda a, b: a * a / b, [x, y])


def test_second_derivative_of_tanh():
    x = ag.Tensor(np.linspace(-2, 2, 9), requires_grad=True)
    (g,) = ag.grad(x.tanh().sum(), x, create_graph=True)
    (gg,) = ag.grad(g.sum(), x)
    t = np.tanh(x.numpy())
    np.testing.assert_allclose(g.numpy(), 1 - t ** 2, rtol=1e-12)
    np.testing.assert_allclose(gg.numpy(), -2 * t * (1 - t ** 2), rtol=1e-10, atol=1e-14)


def test_second_and_third_derivative_of_cube():
    x = ag.Tensor(np.array([-1.5, -0.2, 0.0, 0.7, 2.0]), requires_grad=True)
    (g,) = ag.grad((x ** 3).sum(), x, create_graph=True)
    (gg,) = ag.grad(g.sum(), x, create_graph=True)
    (ggg,) = ag.grad(gg.sum(), x)
    np.testing.assert_allclose(g.numpy(), 3 * x.numpy() ** 2)
    np.testing.assert_allclose(gg.numpy(), 6 * x.numpy())
    np.testing.assert_allclose(ggg.numpy(), np.full(5, 6.0))


def test_second_derivative_through_backward_create_graph():
    x = ag.Tensor(np.array([0.3, -1.1]), requires_grad=True)
    (x ** 3).sum().backward(create_graph=True)
    first = x.grad
    assert first.requires_grad
    x.zero_grad()
    first.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 6 * np.array([0.3, -1.1]))


def test_backward_create_graph_keeps_the_graph_for_double_backward():
    # regression: backward(create_graph=True) freed the forward graph (retain_graph defaulted to False), so the
    # gradient it built, which runs through tanh's saved output, could not be differentiated
    x = ag.Tensor(np.array([0.3, -1.1]), requires_grad=True)
    x.tanh().sum().backward(create_graph=True)
    g = x.grad
    x.zero_grad()
    g.sum().backward()
    t = np.tanh([0.3, -1.1])
    np.testing.assert_allclose(x.grad.numpy(), -2 * t * (1 - t ** 2))


def _mlp_loss(params, x, y):
    W1, b1, W2, b2 = params
    h = (x @ W1 + b1).tanh()
    return ((h @ W2 + b2 - y) ** 2).mean()


def test_hessian_vector_product_of_small_mlp_matches_finite_differences():
    r = np.random.default_rng(7)
    x, y = ag.Tensor(r.standard_normal((5, 3))), ag.Tensor(r.standard_normal((5, 2)))
    values = [r.standard_normal((3, 4)) * 0.7, r.standard_normal(4) * 0.1, r.standard_normal((4, 2)) * 0.7,
              r.standard_normal(2) * 0.1]
    v = [r.standard_normal(p.shape) for p in values]

    params = [ag.Tensor(p.copy(), requires_grad=True) for p in values]
    grads = ag.grad(_mlp_loss(params, x, y), params, create_graph=True)
    dot = sum(((g * ag.Tensor(vi)).sum() for g, vi in zip(grads, v)), ag.Tensor(0.0, dtype=np.float64))
    hvp = [h.numpy() for h in ag.grad(dot, params)]

    def gradient_at(shift):
        ps = [ag.Tensor(p + shift * vi, requires_grad=True) for p, vi in zip(values, v)]
        return [g.numpy() for g in ag.grad(_mlp_loss(ps, x, y), ps)]

    eps = 1e-5
    plus, minus = gradient_at(eps), gradient_at(-eps)
    for h, gp, gm in zip(hvp, plus, minus):
        np.testing.assert_allclose(h, (gp - gm) / (2 * eps), rtol=1e-6, atol=1e-8)
