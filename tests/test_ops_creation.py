"""Creation ops: zeros/ones/full (and the _like forms), arange, eye, and rand/randn/randint from the engine's
generator; dtypes follow PyTorch (Python floats -> float32, ints -> int64)."""
from __future__ import annotations

import numpy as np
import pytest

import autograd as ag


def test_shapes_as_varargs_or_a_tuple():
    assert ag.zeros(2, 3).shape == ag.zeros((2, 3)).shape == (2, 3) == ag.ones([2, 3]).shape
    assert ag.zeros(2).dtype == np.float32 and ag.ones(()).shape == ()
    with pytest.raises(ValueError, match="negative sizes"):
        ag.zeros(-1)


def test_full_infers_the_dtype_from_the_value():
    assert ag.full((2,), 3).dtype == np.int64 and ag.full((2,), 3.0).dtype == np.float32
    assert ag.full(2, True).dtype == bool and ag.full((2,), 3, dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(ag.full((2, 2), 7).numpy(), np.full((2, 2), 7))
    x = ag.Tensor(np.ones((2, 3), np.float64))
    for made, value in ((ag.full_like(x, 2.5), 2.5), (ag.zeros_like(x), 0.0), (ag.ones_like(x), 1.0)):
        assert made.shape == x.shape and made.dtype == np.float64
        np.testing.assert_array_equal(made.numpy(), value)
    assert ag.zeros_like(x, dtype=np.int32).dtype == np.int32
    assert ag.ones_like(x, requires_grad=True).requires_grad


@pytest.mark.parametrize("args,dtype", [((5,), np.int64), ((1, 7, 2), np.int64), ((0.0, 1.0, 0.25), np.float32),
                                        ((3, 0, -1), np.int64), ((0, 2.5), np.float32)])
def test_arange_matches_numpy_with_pytorchs_dtypes(args, dtype):
    out = ag.arange(*args)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), np.arange(*args))
    assert ag.arange(4, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="step must not be 0"):
        ag.arange(0, 3, 0)


def test_eye():
    np.testing.assert_array_equal(ag.eye(3).numpy(), np.eye(3))
    np.testing.assert_array_equal(ag.eye(2, 4, dtype=np.int64).numpy(), np.eye(2, 4, dtype=np.int64))


def test_random_tensors_are_seeded_by_manual_seed():
    ag.manual_seed(123)
    a = (ag.rand(3, 4).numpy(), ag.randn(2, 2).numpy(), ag.randint(5, size=(10,)).numpy())
    ag.manual_seed(123)
    b = (ag.rand((3, 4)).numpy(), ag.randn(2, 2).numpy(), ag.randint(0, 5, (10,)).numpy())
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].dtype == np.float32 and a[1].dtype == np.float32 and a[2].dtype == np.int64
    assert a[0].min() >= 0 and a[0].max() < 1 and a[2].min() >= 0 and a[2].max() < 5
    assert not np.array_equal(ag.rand(3, 4).numpy(), a[0])  # the generator moves on
    np.testing.assert_array_equal(ag.randn(3, seed=1).numpy(), ag.randn(3, seed=1).numpy())
    big = ag.randint(-3, 3, size=(2000,)).numpy()
    assert set(np.unique(big)) == {-3, -2, -1, 0, 1, 2}
    with pytest.raises(ValueError, match="randint: needs low < high"):
        ag.randint(3, 3)
    assert ag.randn(2, requires_grad=True).requires_grad
