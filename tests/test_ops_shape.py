"""Shape ops: reshape, transpose/permute, swapaxes, broadcast_to/expand, squeeze, unsqueeze, getitem (slices,
integer arrays with repeats, boolean masks), concatenate, stack, split, astype. Values against NumPy, gradients
against central differences, float64."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from strategies import arrays, broadcastable_pair, shapes
from test_ops_support import check_op


@given(data=st.data())
@settings(deadline=None)
def test_reshape(data):
    shape = data.draw(shapes())
    x = data.draw(arrays(shape))
    target = data.draw(st.sampled_from([(-1,), tuple(reversed(shape)), (1,) + shape + (1,), (x.size, 1)]))
    check_op(lambda t: t.reshape(target), lambda a: a.reshape(target), x)
    check_op(lambda t: t.reshape(*target), lambda a: a.reshape(target), x, grad=False)
    check_op(lambda t: t.view(target).flatten(), lambda a: a.reshape(-1), x, grad=False)


@given(data=st.data())
@settings(deadline=None)
def test_transpose_permute_swapaxes(data):
    shape = data.draw(shapes(min_dims=1, max_dims=4, max_side=3))
    x = data.draw(arrays(shape))
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    check_op(lambda t: t.transpose(perm), lambda a: a.transpose(perm), x)
    check_op(lambda t: t.permute(*perm), lambda a: a.transpose(perm), x, grad=False)
    check_op(lambda t: t.T, lambda a: a.T, x)
    a, b = data.draw(st.integers(0, len(shape) - 1)), data.draw(st.integers(-len(shape), -1))
    check_op(lambda t: t.swapaxes(a, b), lambda arr: np.swapaxes(arr, a, b), x)


@given(data=st.data())
@settings(deadline=None)
def test_broadcast_to_and_expand(data):
    s1, s2 = data.draw(broadcastable_pair())
    small, big = (s1, s2) if np.broadcast_shapes(s1, s2) == s2 else (s2, s1)
    if np.broadcast_shapes(small, big) != big:
        return  # neither side broadcasts to the other (ones on both sides): nothing to test with this pair
    x = data.draw(arrays(small))
    check_op(lambda t: t.broadcast_to(big), lambda a: np.broadcast_to(a, big), x)
    check_op(lambda t: t.expand(*big) if big else t.expand(big), lambda a: np.broadcast_to(a, big), x, grad=False)
    check_op(lambda t: ag.broadcast_to(t, big), lambda a: np.broadcast_to(a, big), x, grad=False)


@given(data=st.data())
@settings(deadline=None)
def test_squeeze_unsqueeze(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3))
    pos = data.draw(st.integers(-len(shape) - 1, len(shape)))
    x = data.draw(arrays(shape))
    check_op(lambda t: t.unsqueeze(pos), lambda a: np.expand_dims(a, pos), x)
    with_one = np.expand_dims(x, pos)
    check_op(lambda t: t.squeeze(pos), lambda a: np.squeeze(a, pos), with_one)
    check_op(lambda t: t.squeeze(), lambda a: np.squeeze(a), with_one)


def test_squeeze_of_non_unit_axis_keeps_it_like_pytorch():
    x = ag.Tensor(np.ones((2, 1)))
    assert x.squeeze(0).shape == (2, 1)
    assert x.squeeze((0, 1)).shape == (2,)


# ------------------------------------------------------------------------------------------------ getitem
INDEXES = [
    (1,),
    (slice(None, None, 2),),
    (slice(1, None), -1),
    (Ellipsis, 0),
    (None, slice(0, 2)),
    (np.array([0, 2, 2, 0]),),                   # repeated rows: their gradients add up
    (slice(None), np.array([[1, 1], [0, 2]])),    # 2-D integer index with repeats
    (np.array([0, 1, 1]), np.array([2, 2, 0])),   # paired integer arrays
    ([2, 0, 0],),                                 # a list index
]


@pytest.mark.parametrize("index", INDEXES, ids=[str(i) for i in range(len(INDEXES))])
def test_getitem(index):
    x = np.random.default_rng(0).standard_normal((3, 3, 2))
    check_op(lambda t: t[index], lambda a: a[index], x)


def test_getitem_repeated_indices_scatter_add():
    x = ag.Tensor(np.arange(4.0), requires_grad=True)
    x[np.array([1, 1, 1, 3])].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 3.0, 0.0, 1.0])


@given(data=st.data())
@settings(deadline=None)
def test_getitem_boolean_mask(data):
    shape = data.draw(shapes(min_dims=1))
    x = data.draw(arrays(shape))
    seed = data.draw(st.integers(0, 2**16))
    mask = np.random.default_rng(seed).random(shape) < 0.5
    check_op(lambda t: t[mask], lambda a: a[mask], x)
    check_op(lambda t: t[ag.Tensor(mask)], lambda a: a[mask], x, grad=False)
    row_mask = mask.reshape(shape[0], -1)[:, 0]
    check_op(lambda t: t[row_mask], lambda a: a[row_mask], x)


def test_getitem_with_integer_tensor_index():
    x = np.arange(6.0).reshape(3, 2)
    idx = ag.Tensor(np.array([2, 0, 2]))
    check_op(lambda t: t[idx], lambda a: a[[2, 0, 2]], x)


def test_getitem_float_index_array_is_a_clear_error():
    x = ag.Tensor(np.ones((3, 2)))
    with pytest.raises(IndexError, match="integer or boolean, got dtype float64"):
        x[np.array([0.0, 1.0])]
    with pytest.raises(IndexError, match="is a float"):
        x[1.0]


def test_getitem_out_of_range_names_the_shape():
    with pytest.raises(IndexError, match=r"shape \(3, 2\)"):
        ag.Tensor(np.ones((3, 2)))[5]


# ------------------------------------------------------------------------------------------------ joining
@given(data=st.data())
@settings(deadline=None)
def test_concatenate_stack_split(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    parts = []
    for s in sizes:
        sh = list(shape)
        sh[axis] = s
        parts.append(data.draw(arrays(tuple(sh))))
    check_op(lambda *ts: ag.concatenate(ts, axis=axis), lambda *a: np.concatenate(a, axis=axis), *parts)

    same = [data.draw(arrays(shape)) for _ in sizes]
    check_op(lambda *ts: ag.stack(ts, axis=axis), lambda *a: np.stack(a, axis=axis), *same)
    check_op(lambda *ts: ag.stack(ts, axis=-1), lambda *a: np.stack(a, axis=-1), *same, grad=False)

    joined = np.concatenate(parts, axis=axis)
    points = list(np.cumsum(sizes)[:-1])
    # every piece of the split is used (weighted differently, so a swapped gradient would show)
    check_op(lambda t: ag.concatenate([p * (i + 1.0) for i, p in enumerate(ag.split(t, points, axis=axis))],
                                      axis=axis),
             lambda a: np.concatenate([p * (i + 1.0) for i, p in enumerate(np.split(a, points, axis=axis))],
                                      axis=axis), joined)


def test_split_unused_pieces_get_zero_gradient():
    x = ag.Tensor(np.arange(6.0), requires_grad=True)
    a, b, c = x.split(3)
    (b * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 2, 2, 0, 0])


def test_joining_errors_name_shapes():
    with pytest.raises(ValueError, match=r"concatenate: shapes \[\(2, 3\), \(2, 4\)\]"):
        ag.concatenate([ag.Tensor(np.ones((2, 3))), ag.Tensor(np.ones((2, 4)))], axis=0)
    with pytest.raises(ValueError, match="stack: all inputs need one shape"):
        ag.stack([ag.Tensor(np.ones(2)), ag.Tensor(np.ones(3))])
    with pytest.raises(ValueError, match="split: axis 0 of shape"):
        ag.split(ag.Tensor(np.ones(5)), 2)
    with pytest.raises(ValueError, match=r"reshape: cannot reshape a tensor of shape \(2, 3\)"):
        ag.Tensor(np.ones((2, 3))).reshape(4)
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast shape \(2,\) to \(3,\)"):
        ag.Tensor(np.ones(2)).broadcast_to((3,))


# ------------------------------------------------------------------------------------------------ astype
def test_astype_round_trip_gradient_dtype():
    x = ag.Tensor(np.array([0.5, -1.25, 2.0]), requires_grad=True)
    y = x.astype(np.float32)
    assert y.dtype == np.float32
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy(), rtol=1e-6)


def test_astype_gradcheck_within_float64():
    x = np.array([[0.5, -1.25], [2.0, 0.1]])
    check_op(lambda t: (t.astype(np.float64) * 3.0), lambda a: a * 3.0, x)


def test_astype_to_integer_records_no_graph():
    x = ag.Tensor(np.array([1.7, -2.2]), requires_grad=True)
    y = x.astype(np.int64)
    assert y.dtype == np.int64 and not y.requires_grad and y.creator is None
    np.testing.assert_array_equal(y.numpy(), [1, -2])
