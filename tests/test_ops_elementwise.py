"""Elementwise ops: values against NumPy and gradients against central differences, over random shapes
(binary ops over broadcasting pairs), in float64."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
from autograd.ops import elementwise as E
from strategies import arrays, broadcastable_pair, positive_arrays, shapes
from test_ops_support import away_from, check_op, np_erf, np_gelu, np_sigmoid

BINARY = {
    "add": (lambda x, y: x + y, np.add),
    "sub": (lambda x, y: x - y, np.subtract),
    "mul": (lambda x, y: x * y, np.multiply),
    "maximum": (lambda x, y: E.Maximum.apply(x, y), np.maximum),
    "minimum": (lambda x, y: E.Minimum.apply(x, y), np.minimum),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
@settings(deadline=None)
def test_binary_broadcasting(name, data):
    sx, sy = data.draw(broadcastable_pair())
    x = data.draw(arrays(sx))
    y = data.draw(arrays(sy))
    if name in ("maximum", "minimum"):  # away from ties, where the gradient switches sides
        diff = np.abs(x - y)
        assume(diff.size == 0 or diff.min() > 1e-3)
    ag_fn, np_fn = BINARY[name]
    check_op(ag_fn, np_fn, x, y)


@given(data=st.data())
@settings(deadline=None)
def test_div_broadcasting(data):
    sx, sy = data.draw(broadcastable_pair())
    x = data.draw(arrays(sx))
    y = data.draw(arrays(sy, away_from_zero=0.5))
    check_op(lambda a, b: a / b, np.divide, x, y)


@given(data=st.data())
@settings(deadline=None)
def test_pow_tensor_exponent(data):
    sx, sy = data.draw(broadcastable_pair())
    x = data.draw(positive_arrays(sx))
    y = data.draw(arrays(sy))
    check_op(lambda a, b: a ** b, np.power, x, y)


@pytest.mark.parametrize("c", [0, 1, 2, 3, -1, 0.5, 2.5, -1.5])
@given(data=st.data())
@settings(deadline=None)
def test_pow_scalar_exponent(c, data):
    shape = data.draw(shapes())
    x = data.draw(positive_arrays(shape) if not float(c).is_integer() else arrays(shape, away_from_zero=0.3))
    check_op(lambda a: a ** c, lambda a: a ** c, x)


def test_rpow_and_reflected_operators():
    x = np.array([0.5, 1.0, 2.0])
    check_op(lambda a: 2.0 ** a, lambda a: 2.0 ** a, x)
    check_op(lambda a: 3.0 - a, lambda a: 3.0 - a, x)
    check_op(lambda a: 3.0 / a, lambda a: 3.0 / a, x)
    check_op(lambda a: 3.0 * a + 1.0, lambda a: 3.0 * a + 1.0, x)


UNARY = {
    # name: (autograd fn, numpy fn, kwargs for the value strategy)
    "neg": (lambda x: -x, np.negative, {}),
    "exp": (lambda x: x.exp(), np.exp, {}),
    "log": (lambda x: x.log(), np.log, {"positive": True}),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, {"positive": True}),
    "tanh": (lambda x: x.tanh(), np.tanh, {}),
    "sigmoid": (lambda x: x.sigmoid(), np_sigmoid, {}),
    "relu": (lambda x: x.relu(), lambda x: np.maximum(x, 0), {"away_from_zero": 0.05}),
    "abs": (lambda x: x.abs(), np.abs, {"away_from_zero": 0.05}),
    "gelu_tanh": (lambda x: F.gelu(x), lambda x: np_gelu(x, "tanh"), {}),
    "gelu_exact": (lambda x: E.Gelu.apply(x), lambda x: np_gelu(x, "none"), {}),
    "silu": (lambda x: E.Silu.apply(x), lambda x: x * np_sigmoid(x), {}),
    "erf": (lambda x: E.Erf.apply(x), np_erf, {}),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
@settings(deadline=None)
def test_unary(name, data):
    ag_fn, np_fn, opts = UNARY[name]
    shape = data.draw(shapes())
    if opts.get("positive"):
        x = data.draw(positive_arrays(shape))
    else:
        x = data.draw(arrays(shape, away_from_zero=opts.get("away_from_zero", 0.0)))
    check_op(ag_fn, np_fn, x, rtol=1e-9)


@pytest.mark.parametrize("low,high", [(-0.5, 0.7), (None, 0.3), (-0.2, None)])
@given(data=st.data())
@settings(deadline=None)
def test_clip(low, high, data):
    x = data.draw(arrays(data.draw(shapes())))
    x = away_from(x, [b for b in (low, high) if b is not None])
    check_op(lambda a: a.clip(low, high), lambda a: np.clip(a, low, high), x)


@given(data=st.data())
@settings(deadline=None)
def test_where_broadcasting(data):
    sx, sy = data.draw(broadcastable_pair())
    x = data.draw(arrays(sx))
    y = data.draw(arrays(sy))
    seed = data.draw(st.integers(0, 2**16))
    cond = np.random.default_rng(seed).random(np.broadcast_shapes(sx, sy)) < 0.5
    check_op(lambda a, b: ag.where(cond, a, b), lambda a, b: np.where(cond, a, b), x, y)


def test_where_with_scalar_branch_and_tensor_cond():
    x = np.array([[-1.0, 2.0], [3.0, -4.0]])
    cond = ag.Tensor(x > 0)
    check_op(lambda a: ag.where(cond, a, 0.0), lambda a: np.where(x > 0, a, 0.0), x)


def test_where_rejects_non_boolean_condition():
    with pytest.raises(TypeError, match="where: cond must be a boolean"):
        ag.where(np.array([1.0, 0.0]), ag.Tensor([1.0, 2.0]), 0.0)


def test_relu_and_abs_gradient_at_zero_is_zero():
    x = ag.Tensor(np.array([0.0, 0.0]), requires_grad=True)
    (x.relu().sum() + x.abs().sum()).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


def test_float32_stays_float32():
    x = ag.Tensor(np.array([0.5, 1.5], dtype=np.float32), requires_grad=True)
    y = (x * 2.0 + 1.0).tanh().exp().sigmoid() ** 2
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32
