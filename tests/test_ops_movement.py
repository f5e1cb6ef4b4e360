"""flip, roll, tile/repeat, pad, tril, triu, einsum, cumsum, prod, std, any, all, argmax, argmin: values against
NumPy, gradients against central differences, float64, hypothesis shapes (einsum with broadcasting ellipses)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
from strategies import arrays, broadcastable_pair, shapes
from test_ops_support import check_op


@st.composite
def shape_axis(draw, min_dims=1):
    shape = draw(shapes(min_dims=min_dims))
    return shape, draw(st.integers(-len(shape), len(shape) - 1))


@given(sa=shape_axis(), data=st.data())
@settings(deadline=None)
def test_flip_and_roll(sa, data):
    shape, axis = sa
    x = data.draw(arrays(shape))
    shift = data.draw(st.integers(-5, 5))
    check_op(lambda t: t.flip(axis), lambda a: np.flip(a, axis), x)
    check_op(lambda t: ag.flip(t, (0, axis) if axis % len(shape) else 0), None, x)
    check_op(lambda t: t.roll(shift, axis), lambda a: np.roll(a, shift, axis), x)
    check_op(lambda t: t.roll(shift), lambda a: np.roll(a, shift), x)


@given(data=st.data())
@settings(deadline=None)
def test_tile_and_repeat(data):
    shape = data.draw(shapes())
    reps = tuple(data.draw(st.lists(st.integers(1, 3), min_size=0, max_size=len(shape) + 1)))
    x = data.draw(arrays(shape))
    check_op(lambda t: t.tile(reps), lambda a: np.tile(a, reps), x)
    full = (1,) * max(len(shape) - len(reps), 0) + reps
    check_op(lambda t: t.repeat(*full), lambda a: np.tile(a, full), x)


@given(data=st.data())
@settings(deadline=None)
def test_pad(data):
    shape = data.draw(shapes(min_dims=1))
    n = data.draw(st.integers(1, len(shape)))
    pad = tuple(data.draw(st.lists(st.integers(0, 2), min_size=2 * n, max_size=2 * n)))
    x = data.draw(arrays(shape))
    widths = [(0, 0)] * (len(shape) - n) + [(pad[2 * i], pad[2 * i + 1]) for i in range(n)][::-1]
    check_op(lambda t: F.pad(t, pad, value=1.5), lambda a: np.pad(a, widths, constant_values=1.5), x)


def test_pad_errors():
    with pytest.raises(ValueError, match="pad: needs"):
        F.pad(ag.ones(2), (1, 1, 1, 1))
    with pytest.raises(NotImplementedError, match="mode='constant'"):
        F.pad(ag.ones(2), (1, 1), mode="reflect")


@pytest.mark.parametrize("k", [-1, 0, 2])
@given(data=st.data())
@settings(deadline=None)
def test_tril_triu(k, data):
    x = data.draw(arrays(data.draw(shapes(min_dims=2))))
    check_op(lambda t: t.tril(k), lambda a: np.tril(a, k), x)
    check_op(lambda t: ag.triu(t, k), lambda a: np.triu(a, k), x)
    with pytest.raises(ValueError, match=r"tril: needs a tensor with at least 2 axes, got shape \(3,\)"):
        ag.ones(3).tril()


EQUATIONS = [
    ("ij,jk->ik", [(2, 3), (3, 4)]), ("bij,bjk->bik", [(2, 2, 3), (2, 3, 2)]), ("i,i->", [(3,), (3,)]),
    ("i,j->ij", [(2,), (3,)]), ("ij->j", [(2, 3)]), ("ij->ji", [(2, 3)]), ("ij", [(2, 3)]), ("ij,jk", [(2, 3), (3, 2)]),
    ("ijk,k->ij", [(2, 2, 3), (3,)]), ("ij,ij->i", [(2, 3), (2, 3)]), ("ij->", [(2, 3)]),
    ("...ij,...jk->...ik", [(2, 1, 2, 3), (4, 3, 2)]), ("...i,i->...", [(2, 3, 4), (4,)]),
    ("b h i d, b h j d -> b h i j", [(1, 2, 3, 2), (1, 2, 4, 2)]),
    ("ii->i", [(3, 3)]), ("ii->", [(3, 3)]), ("iij,j->i", [(2, 2, 3), (3,)]), ("ij,jj->i", [(2, 3), (3, 3)]),
    ("iii", [(2, 2, 2)]),
]


@pytest.mark.parametrize("equation,shapes_", EQUATIONS)
def test_einsum(equation, shapes_):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s) for s in shapes_]
    check_op(lambda *ts: ag.einsum(equation, *ts), lambda *a: np.einsum(equation.replace(" ", ""), *a), *xs,
             gradgrad=True)


@given(data=st.data())
@settings(deadline=None)
def test_einsum_batch_broadcasting(data):
    sa, sb = data.draw(broadcastable_pair(max_dims=2, max_side=3))
    x, y = data.draw(arrays(sa + (2, 3))), data.draw(arrays(sb + (3, 2)))
    check_op(lambda a, b: ag.einsum("...ij,...jk->...ik", a, b), np.matmul, x, y)


def test_einsum_errors():
    with pytest.raises(ValueError, match="einsum: the equation 'ij,jk' names 2 operands, got 1"):
        ag.einsum("ij,jk", ag.ones(2, 3))
    np.testing.assert_array_equal(ag.einsum("ii->i", ag.Tensor(np.eye(2))).numpy(), [1.0, 1.0])


@given(sa=shape_axis(), data=st.data())
@settings(deadline=None)
def test_cumsum(sa, data):
    shape, axis = sa
    check_op(lambda t: t.cumsum(axis), lambda a: np.cumsum(a, axis), data.draw(arrays(shape)), gradgrad=True)


@given(data=st.data(), keepdims=st.booleans())
@settings(deadline=None)
def test_prod(data, keepdims):
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.sampled_from([None, -1, tuple(range(len(shape)))[:1]]))
    x = data.draw(arrays(shape, low=0.5, high=1.5)) * np.where(data.draw(arrays(shape)) > 0, 1, -1)
    check_op(lambda t: t.prod(axis, keepdims), lambda a: np.prod(a, axis=axis, keepdims=keepdims), x)


def test_prod_gradient_is_exact_at_zeros():
    x = ag.Tensor(np.array([[0.0, 2.0, 3.0], [0.0, 0.0, 5.0]]), requires_grad=True)
    x.prod(axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[6.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert ag.gradcheck(lambda t: t.prod(), [np.array([0.0, 2.0, 3.0])])


@pytest.mark.parametrize("ddof", [0, 1])
@given(sa=shape_axis(), data=st.data())
@settings(deadline=None)
def test_std(ddof, sa, data):
    shape, axis = sa
    x = data.draw(arrays(shape, unique=True))
    if shape[axis] < 2:  # one element: the variance is 0 and sqrt's derivative there infinite (nan, as PyTorch)
        return
    check_op(lambda t: t.std(axis, ddof=ddof), lambda a: np.std(a, axis=axis, ddof=ddof), x)
    check_op(lambda t: ag.std(t, None, True, ddof), lambda a: np.std(a, keepdims=True, ddof=ddof), x)


@given(sa=shape_axis(), data=st.data(), keepdims=st.booleans())
@settings(deadline=None)
def test_any_all_argmax_argmin(sa, data, keepdims):
    shape, axis = sa
    x = data.draw(arrays(shape, unique=True))
    b = x > 0
    for name in ("any", "all"):
        np.testing.assert_array_equal(getattr(ag.Tensor(b), name)(axis, keepdims).numpy(),
                                      getattr(np, name)(b, axis=axis, keepdims=keepdims))
        np.testing.assert_array_equal(getattr(ag, name)(ag.Tensor(b)).numpy(), getattr(np, name)(b))
    for name in ("argmax", "argmin"):
        out = getattr(ag.Tensor(x), name)(axis, keepdims)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out.numpy(), getattr(np, name)(x, axis=axis, keepdims=keepdims))
        np.testing.assert_array_equal(getattr(ag, name)(ag.Tensor(x)).numpy(), getattr(np, name)(x))
