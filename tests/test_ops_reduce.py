"""Reductions (sum, mean, max, min, var, logsumexp) with axis/keepdims, and matmul with batch broadcasting:
values against NumPy, gradients against central differences, float64."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import autograd as ag
from strategies import arrays, broadcastable_pair, shapes
from test_ops_support import check_forward, check_op


@st.composite
def shape_and_axis(draw, min_dims: int = 1):
    """A shape and an axis argument for it: None, an int (maybe negative) or a tuple of distinct axes."""
    shape = draw(shapes(min_dims=min_dims))
    nd = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-nd, nd - 1))
    else:
        axis = tuple(draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True)))
    return shape, axis


def np_logsumexp(x, axis=None, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis if axis is not None else tuple(range(x.ndim)))


REDUCTIONS = {
    "sum": (lambda x, **k: x.sum(**k), np.sum, False),
    "mean": (lambda x, **k: x.mean(**k), np.mean, False),
    "max": (lambda x, **k: x.max(**k), np.max, True),
    "min": (lambda x, **k: x.min(**k), np.min, True),
    "var": (lambda x, **k: x.var(**k), np.var, False),
    "logsumexp": (lambda x, **k: x.logsumexp(**k), np_logsumexp, False),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@given(data=st.data(), keepdims=st.booleans())
@settings(deadline=None)
def test_reduction(name, data, keepdims):
    ag_fn, np_fn, needs_unique = REDUCTIONS[name]
    shape, axis = data.draw(shape_and_axis())
    x = data.draw(arrays(shape, unique=needs_unique))
    check_op(lambda t: ag_fn(t, axis=axis, keepdims=keepdims),
             lambda a: np_fn(a, axis=axis, keepdims=keepdims), x)


@given(data=st.data())
@settings(deadline=None)
def test_var_ddof1(data):
    shape, axis = data.draw(shape_and_axis())
    axes = range(len(shape)) if axis is None else ([axis] if isinstance(axis, int) else axis)
    assume(int(np.prod([shape[a] for a in axes])) > 1)
    x = data.draw(arrays(shape))
    check_op(lambda t: t.var(axis=axis, ddof=1), lambda a: np.var(a, axis=axis, ddof=1), x)


def test_max_ties_split_the_gradient():
    x = ag.Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [0.5, 0, 0.5]])


def test_logsumexp_is_stable_for_large_values():
    x = np.array([[1000.0, 1000.0], [-1000.0, -1001.0]])
    t = ag.Tensor(x, requires_grad=True)
    out = t.logsumexp(axis=1)
    np.testing.assert_allclose(out.numpy(), [1000 + np.log(2), -1000 + np.log1p(np.exp(-1))])
    out.sum().backward()
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(x.shape, t.grad.shape)
    np.testing.assert_allclose(t.grad.numpy(), e / e.sum(axis=1, keepdims=True))


def test_reduction_bad_axis_names_it():
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        ag.Tensor(np.ones((2, 2))).sum(axis=3)


# ------------------------------------------------------------------------------------------------ matmul
@given(data=st.data())
@settings(deadline=None)
def test_matmul_batch_broadcasting(data):
    ba, bb = data.draw(broadcastable_pair(min_dims=0, max_dims=2, max_side=3))
    n, k, m = (data.draw(st.integers(1, 4)) for _ in range(3))
    x = data.draw(arrays(ba + (n, k)))
    y = data.draw(arrays(bb + (k, m)))
    check_op(lambda a, b: a @ b, np.matmul, x, y)


@pytest.mark.parametrize("sa,sb", [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((4, 2, 3), (3,)),
                                   ((3,), (4, 3, 2))])
def test_matmul_vectors(sa, sb):
    rng = np.random.default_rng(0)
    check_op(lambda a, b: a @ b, np.matmul, rng.standard_normal(sa), rng.standard_normal(sb))


def test_matmul_function_and_rmatmul():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 2))
    check_forward(lambda x, y: ag.matmul(x, y), np.matmul, a, b)
    check_forward(lambda y: a @ y, lambda y: a @ y, b)


def test_matmul_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 2\)"):
        ag.Tensor(np.ones((2, 3))) @ ag.Tensor(np.ones((4, 2)))
