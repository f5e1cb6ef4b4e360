"""gather, scatter, scatter_add, one_hot, sort, argsort, topk: values against NumPy (take_along_axis, explicit
loops for scatter, argsort), gradients against central differences, float64, hypothesis shapes."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
from strategies import arrays, shapes
from test_ops_support import check_op


@st.composite
def indexed(draw, unique_along_axis=False):
    """x, axis, index: index has x's axes, sizes <= x's elsewhere, positions along ``axis``."""
    shape = draw(shapes(min_dims=1, max_dims=3))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    ax = axis % len(shape)
    ishape = tuple(draw(st.integers(1, s)) if d != ax else draw(st.integers(1, 4)) for d, s in enumerate(shape))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if unique_along_axis:
        ishape = ishape[:ax] + (min(ishape[ax], shape[ax]),) + ishape[ax + 1:]
        index = np.stack([rng.permutation(shape[ax])[:ishape[ax]] for _ in range(int(np.prod(ishape)) // ishape[ax])])
        index = np.moveaxis(index.reshape(ishape[:ax] + ishape[ax + 1:] + (ishape[ax],)), -1, ax)
    else:
        index = rng.integers(0, shape[ax], size=ishape)
    return draw(arrays(shape)), axis, index


def np_scatter(x, axis, index, src, add):
    out = x.copy()
    for pos in itertools.product(*map(range, index.shape)):
        target = list(pos)
        target[axis % x.ndim] = index[pos]
        if add:
            out[tuple(target)] += src[pos]
        else:
            out[tuple(target)] = src[pos]
    return out


@given(problem=indexed())
@settings(deadline=None)
def test_gather(problem):
    x, axis, index = problem
    sub = x[tuple(slice(0, n) if d != axis % x.ndim else slice(None) for d, n in enumerate(index.shape))]
    check_op(lambda t: t.gather(axis, index), lambda a: np.take_along_axis(sub, index, axis), x, gradgrad=True)
    check_op(lambda t: ag.gather(t, axis, ag.Tensor(index)), None, x)


@given(problem=indexed(), data=st.data())
@settings(deadline=None)
def test_scatter_add(problem, data):
    x, axis, index = problem
    src = data.draw(arrays(index.shape))
    check_op(lambda t, s: t.scatter_add(axis, index, s), lambda a, s: np_scatter(a, axis, index, s, True), x, src)


@given(problem=indexed(unique_along_axis=True), data=st.data())
@settings(deadline=None)
def test_scatter(problem, data):
    x, axis, index = problem
    big = tuple(n + 1 for n in index.shape)  # src may be larger than index: its leading part is used
    src = data.draw(arrays(big))
    lead = src[tuple(slice(0, n) for n in index.shape)]
    check_op(lambda t, s: t.scatter(axis, index, s), lambda a, s: np_scatter(a, axis, index, lead, False), x, src)
    check_op(lambda t: ag.scatter(t, axis, index, 7.0), lambda a: np_scatter(a, axis, index, np.full(index.shape, 7.0),
                                                                             False), x)


def test_gather_errors():
    x = ag.Tensor(np.zeros((2, 3)))
    with pytest.raises(IndexError, match=r"gather: index 3 is out of range for axis 1 of size 3"):
        x.gather(1, np.array([[3], [0]]))
    with pytest.raises(ValueError, match="gather: index needs as many axes as the tensor"):
        x.gather(1, np.array([0, 1]))
    with pytest.raises(TypeError, match="gather: index must be an integer tensor"):
        x.gather(1, np.array([[0.0], [1.0]]))


def test_one_hot():
    ids = np.array([[0, 2], [1, 2]])
    out = F.one_hot(ag.Tensor(ids), 4)
    assert out.dtype == np.int64 and out.shape == (2, 2, 4)
    np.testing.assert_array_equal(out.numpy(), np.eye(4, dtype=np.int64)[ids])
    assert F.one_hot(np.array([0, 3])).shape == (2, 4)
    with pytest.raises(ValueError, match=r"one_hot: class ids must lie in \[0, 3\)"):
        F.one_hot(np.array([3]), 3)


@pytest.mark.parametrize("descending", [False, True])
@given(data=st.data())
@settings(deadline=None)
def test_sort_and_argsort(descending, data):
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(arrays(shape, unique=True))
    order = np.argsort(-x if descending else x, axis=axis, kind="stable")
    values, idx = ag.Tensor(x).sort(axis, descending=descending)
    np.testing.assert_array_equal(idx.numpy(), order)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(ag.Tensor(x).argsort(axis, descending).numpy(), order)
    check_op(lambda t: t.sort(axis, descending)[0], lambda a: np.take_along_axis(a, order, axis), x)


def test_sort_is_stable_both_ways():
    x = ag.Tensor(np.array([1.0, 0.0, 1.0, 0.0]))
    np.testing.assert_array_equal(x.argsort().numpy(), [1, 3, 0, 2])
    np.testing.assert_array_equal(x.argsort(descending=True).numpy(), [0, 2, 1, 3])


@pytest.mark.parametrize("largest", [True, False])
@given(data=st.data())
@settings(deadline=None)
def test_topk(largest, data):
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    k = data.draw(st.integers(0, shape[axis]))
    x = data.draw(arrays(shape, unique=True))
    order = np.take(np.argsort(-x if largest else x, axis=axis), np.arange(k), axis=axis)
    values, idx = ag.Tensor(x).topk(k, axis, largest=largest)
    np.testing.assert_array_equal(idx.numpy(), order)
    check_op(lambda t: t.topk(k, axis, largest)[0], lambda a: np.take_along_axis(a, order, axis), x)
    with pytest.raises(ValueError, match="topk: k=.* is out of range"):
        ag.Tensor(x).topk(shape[axis] + 1, axis)
