"""sin, cos, log2, log10, floor, ceil, round, sign, isnan/isinf/isfinite, logaddexp, lerp, remainder,
floor_divide: values against NumPy and gradients against central differences (float64, hypothesis shapes,
binary ops over broadcasting pairs)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import autograd as ag
from strategies import arrays, broadcastable_pair, positive_arrays, shapes
from test_ops_support import check_op

SMOOTH = {
    "sin": (lambda t: t.sin(), np.sin, False),
    "cos": (lambda t: t.cos(), np.cos, False),
    "log2": (lambda t: t.log2(), np.log2, True),
    "log10": (lambda t: t.log10(), np.log10, True),
}


@pytest.mark.parametrize("name", sorted(SMOOTH))
@given(data=st.data())
@settings(deadline=None)
def test_smooth_unary(name, data):
    ag_fn, np_fn, positive = SMOOTH[name]
    shape = data.draw(shapes())
    x = data.draw(positive_arrays(shape) if positive else arrays(shape, low=-4, high=4))
    check_op(ag_fn, np_fn, x, gradgrad=True)


STEPS = {"floor": (lambda t: t.floor(), np.floor), "ceil": (lambda t: t.ceil(), np.ceil),
         "round": (lambda t: t.round(), np.round), "sign": (lambda t: t.sign(), np.sign),
         "round2": (lambda t: t.round(2), lambda a: np.round(a, 2))}


@pytest.mark.parametrize("name", sorted(STEPS))
@given(data=st.data())
@settings(deadline=None)
def test_piecewise_constant_ops_have_zero_gradient(name, data):
    ag_fn, np_fn = STEPS[name]
    x = data.draw(arrays(data.draw(shapes()), low=-3, high=3))
    x = np.where(np.abs(x - np.round(x * 2) / 2) < 0.01, x + 0.02, x)  # away from the jumps (and exact halves)
    check_op(ag_fn, np_fn, x)
    t = ag.Tensor(x, requires_grad=True)
    ag_fn(t).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), np.zeros_like(x))


def test_predicates():
    a = np.array([1.0, np.nan, np.inf, -np.inf, 0.0])
    x = ag.Tensor(a)
    for name in ("isnan", "isinf", "isfinite"):
        np.testing.assert_array_equal(getattr(x, name)().numpy(), getattr(np, name)(a))
        np.testing.assert_array_equal(getattr(ag, name)(x).numpy(), getattr(np, name)(a))
        assert getattr(x, name)().dtype == bool


@given(data=st.data())
@settings(deadline=None)
def test_logaddexp_broadcasting(data):
    sx, sy = data.draw(broadcastable_pair())
    x, y = data.draw(arrays(sx, low=-5, high=5)), data.draw(arrays(sy, low=-5, high=5))
    check_op(lambda a, b: a.logaddexp(b), np.logaddexp, x, y, gradgrad=True)


def test_logaddexp_is_stable():
    x = ag.Tensor(np.array([1000.0, -1000.0]), requires_grad=True)
    out = x.logaddexp(ag.Tensor(np.array([1000.0, -1000.0])))
    np.testing.assert_allclose(out.numpy(), [1000 + np.log(2), -1000 + np.log(2)])
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.5, 0.5])


@given(data=st.data())
@settings(deadline=None)
def test_lerp_broadcasting(data):
    sx, sy = data.draw(broadcastable_pair())
    x, y = data.draw(arrays(sx)), data.draw(arrays(sy))
    w = data.draw(arrays(data.draw(st.sampled_from([(), sy[-1:] if sy else ()]))))
    check_op(lambda a, b, c: ag.lerp(a, b, c), lambda a, b, c: a + c * (b - a), x, y, w)
    check_op(lambda a, b: a.lerp(b, 0.25), lambda a, b: a + 0.25 * (b - a), x, y)


@given(data=st.data())
@settings(deadline=None)
def test_remainder_and_floor_divide_broadcasting(data):
    sx, sy = data.draw(broadcastable_pair())
    x = data.draw(arrays(sx, low=-5, high=5))
    y = data.draw(arrays(sy, low=0.5, high=2.0)) * data.draw(st.sampled_from([1.0, -1.0]))
    q = np.broadcast_arrays(x, y)
    frac = (q[0] / q[1]) % 1.0
    assume(frac.size == 0 or (np.minimum(frac, 1 - frac).min() > 1e-3))  # away from the jumps of floor(x / y)
    check_op(lambda a, b: a % b, np.remainder, x, y)
    check_op(lambda a, b: a // b, np.floor_divide, x, y)
