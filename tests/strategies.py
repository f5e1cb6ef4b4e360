"""Hypothesis strategies shared by the op, layer and model tests (minitorch's tensor_strategies, our way).

Shapes stay small (gradcheck perturbs every element); values stay finite and away from kinks where an op is not
differentiable (|x| near 0 for relu/abs, ties for max/min) so central differences are meaningful.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

small_dims = st.integers(min_value=1, max_value=4)


def shapes(min_dims: int = 0, max_dims: int = 3, max_side: int = 4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side)


@st.composite
def broadcastable_pair(draw, min_dims: int = 0, max_dims: int = 3, max_side: int = 4):
    """Two shapes that broadcast together (one may have fewer axes or ones where the other has sizes)."""
    base = draw(shapes(min_dims=min_dims, max_dims=max_dims, max_side=max_side))
    other = list(base)
    other = [1 if draw(st.booleans()) else s for s in other]
    drop = draw(st.integers(min_value=0, max_value=len(other)))
    other = other[drop:]
    if draw(st.booleans()):
        return base, tuple(other)
    return tuple(other), base


@st.composite
def arrays(draw, shape, low: float = -2.0, high: float = 2.0, away_from_zero: float = 0.0, unique: bool = False):
    """float64 arrays in [low, high]; |x| >= away_from_zero when given; distinct values when ``unique``."""
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.uniform(low, high, size=shape)
    if away_from_zero:
        x = np.where(np.abs(x) < away_from_zero, np.sign(x + 1e-12) * away_from_zero + x, x)
    if unique and x.size:
        # spread values so no two elements tie (max/min gradients are only defined without ties)
        order = rng.permutation(x.size).reshape(shape)
        x = x + order * 0.05
    return x


def positive_arrays(shape, low: float = 0.5, high: float = 2.0):
    return arrays(shape, low=low, high=high)
