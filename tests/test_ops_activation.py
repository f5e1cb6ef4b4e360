"""leaky_relu, elu, softplus, logsigmoid, mish, hardswish: values against NumPy formulas of PyTorch's definitions,
gradients (and second derivatives) against central differences, float64."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
from strategies import arrays, shapes
from test_ops_support import away_from, check_op


def np_softplus(x, beta=1.0, threshold=20.0):
    return np.where(beta * x > threshold, x, np.log1p(np.exp(beta * x)) / beta)


ACTIVATIONS = {
    # name: (autograd fn, numpy fn, kinks to stay away from)
    "leaky_relu": (lambda t: F.leaky_relu(t), lambda a: np.where(a > 0, a, 0.01 * a), [0.0]),
    "leaky_relu_0.2": (lambda t: F.leaky_relu(t, 0.2), lambda a: np.where(a > 0, a, 0.2 * a), [0.0]),
    "elu": (lambda t: F.elu(t), lambda a: np.where(a > 0, a, np.expm1(a)), [0.0]),
    "elu_2": (lambda t: F.elu(t, alpha=2.0), lambda a: np.where(a > 0, a, 2.0 * np.expm1(a)), [0.0]),
    "softplus": (lambda t: F.softplus(t), np_softplus, []),
    "softplus_beta": (lambda t: F.softplus(t, beta=2.0, threshold=3.0), lambda a: np_softplus(a, 2.0, 3.0), [1.5]),
    "logsigmoid": (lambda t: F.logsigmoid(t), lambda a: -np.log1p(np.exp(-a)), []),
    "mish": (lambda t: F.mish(t), lambda a: a * np.tanh(np.log1p(np.exp(a))), []),
    "hardswish": (lambda t: F.hardswish(t), lambda a: a * np.clip(a + 3, 0, 6) / 6, [-3.0, 3.0]),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@given(data=st.data())
@settings(deadline=None)
def test_activation(name, data):
    ag_fn, np_fn, kinks = ACTIVATIONS[name]
    x = away_from(data.draw(arrays(data.draw(shapes()), low=-5, high=5)), kinks, gap=0.05)
    check_op(ag_fn, np_fn, x, gradgrad=True)


def test_kinks_take_pytorchs_side():
    x = ag.Tensor(np.array([0.0, -3.0, 3.0]), requires_grad=True)
    (F.leaky_relu(x, 0.1)[0] + F.elu(x, 2.0)[0] + F.hardswish(x)[1:].sum()).backward()
    # leaky_relu'(0) = slope, elu'(0) = alpha; hardswish' = x/3 + 1/2 on [-3, 3] closed: -0.5 at -3, 1.5 at 3
    np.testing.assert_allclose(x.grad.numpy(), [0.1 + 2.0, -0.5, 1.5])


def test_stable_for_large_inputs():
    x = ag.Tensor(np.array([-800.0, 800.0]), requires_grad=True)
    out = F.logsigmoid(x) + F.softplus(x) + F.mish(x)
    assert np.all(np.isfinite(out.numpy()))
    out.sum().backward()
    assert np.all(np.isfinite(x.grad.numpy()))


def test_integer_input_gives_float32():
    assert F.elu(ag.tensor([1, -1])).dtype == np.float32 and F.softplus(ag.tensor([1, 2])).dtype == np.float32
