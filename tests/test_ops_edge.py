"""Edge cases decided like PyTorch: empty means and var with n - ddof <= 0 give nan (also in backward), ties of
maximum/minimum split the gradient, pow's gradients at base 0 and for a negative base, every op has a rule."""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

import autograd as ag
from autograd import Function
from autograd.ops import activation, einsum, elementwise, index, movement, pointwise, reduce, shape


def test_mean_over_an_empty_axis_is_nan_in_forward_and_backward():
    x = ag.Tensor(np.ones((2, 0)), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy "mean of empty slice" warning either
        y = x.mean(axis=1)
        np.testing.assert_array_equal(y.numpy(), [np.nan, np.nan])
        y.sum().backward()
    assert x.grad.shape == (2, 0)
    assert np.isnan(ag.Tensor(np.ones(0)).mean().item())
    assert ag.Tensor(np.ones((2, 0))).sum(axis=1).numpy().tolist() == [0.0, 0.0]


@pytest.mark.parametrize("n,ddof", [(1, 1), (2, 2), (1, 3)])
def test_var_with_no_degrees_of_freedom_divides_by_zero_like_pytorch(n, ddof):
    x = ag.Tensor(np.arange(1.0, n + 1), requires_grad=True)
    y = x.var(ddof=ddof)
    y.backward()
    if n == 1:  # 0 / 0
        assert np.isnan(y.item()) and np.isnan(x.grad.numpy()).all()
    else:  # a positive sum of squares / 0
        assert y.item() == np.inf
        np.testing.assert_array_equal(x.grad.numpy(), [-np.inf, np.inf])


def test_max_and_min_reductions_of_empty_are_clear_errors():
    with pytest.raises(ValueError, match=r"max: cannot reduce an empty tensor \(shape \(0,\)\)"):
        ag.Tensor(np.ones(0)).max()


def test_maximum_minimum_split_ties_like_the_reductions():
    x = ag.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = ag.Tensor(np.array([2.0, 2.0, 2.0]), requires_grad=True)
    (x.maximum(y) + x.minimum(y) * 10.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [10.0, 5.5, 1.0])
    np.testing.assert_allclose(y.grad.numpy(), [1.0, 5.5, 10.0])
    z = ag.Tensor(np.array([2.0, 2.0]), requires_grad=True)
    z.max().backward()
    np.testing.assert_allclose(z.grad.numpy(), [0.5, 0.5])


def test_pow_gradients_at_base_zero_like_pytorch():
    x = ag.Tensor(np.array([0.0, 0.0, 0.0]), requires_grad=True)
    y = ag.Tensor(np.array([0.0, 2.0, -1.0]), requires_grad=True)
    with np.errstate(divide="ignore"):
        (x ** y).sum().backward()
    # d/dx: y x^(y-1) is 0 at y = 0 (not 0 * inf), 0 at y = 2, -inf... PyTorch: -1 * 0^-2 = -inf
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, -np.inf])
    # d/dy: x^y log x is 0 where x = 0 and y >= 0; for y < 0, inf * -inf = -inf
    np.testing.assert_array_equal(y.grad.numpy(), [0.0, 0.0, -np.inf])
    s = ag.Tensor(np.array([0.0]), requires_grad=True)
    (s ** 2.0 + s ** 1.0 + s ** 0.0).sum().backward()
    np.testing.assert_array_equal(s.grad.numpy(), [1.0])


def test_pow_exponent_gradient_of_a_negative_base_is_nan():
    x = ag.Tensor(np.array([-2.0]))
    y = ag.Tensor(np.array([2.0]), requires_grad=True)
    with np.errstate(invalid="ignore"):
        out = x ** y
        out.sum().backward()
    assert out.item() == 4.0 and np.isnan(y.grad.item())


MODULES = [activation, einsum, elementwise, index, movement, pointwise, reduce, shape]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_op_has_a_rule_for_the_step_through(module):
    ops = [c for _, c in inspect.getmembers(module, inspect.isclass)
           if issubclass(c, Function) and c.__module__ == module.__name__ and not c.__name__.startswith("_")]
    assert ops
    for op in ops:
        assert isinstance(getattr(op, "rule", None), str) and op.rule, op.__name__


def test_float16_mean_does_not_overflow_its_sum():
    x = ag.Tensor(np.full(64, 60000.0, dtype=np.float16))
    assert x.mean().dtype == np.float16 and x.mean().item() == 60000.0
    assert np.isnan(ag.Tensor(np.ones(0)).var().item())
