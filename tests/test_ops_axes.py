"""Axis arguments: every axis-taking op rejects an axis out of range with one error naming the op, the axis and
the shape (never a silent wrap-around), and 0-d tensors accept axis 0 / -1 as in PyTorch."""
from __future__ import annotations

import numpy as np
import pytest

import autograd as ag
from autograd import functional as F
from autograd.ops.axes import AxisError

X = ag.Tensor(np.arange(6.0).reshape(2, 3))
IDX = ag.Tensor(np.zeros((2, 3), dtype=np.int64))

AXIS_OPS = {
    "sum": lambda a: X.sum(axis=a), "mean": lambda a: X.mean(axis=a), "max": lambda a: X.max(axis=a),
    "min": lambda a: X.min(axis=a), "var": lambda a: X.var(axis=a), "std": lambda a: X.std(axis=a),
    "prod": lambda a: X.prod(axis=a), "logsumexp": lambda a: X.logsumexp(axis=a),
    "cumsum": lambda a: X.cumsum(a), "argmax": lambda a: X.argmax(a), "argmin": lambda a: X.argmin(a),
    "any": lambda a: X.any(a), "all": lambda a: X.all(a), "sort": lambda a: X.sort(a),
    "argsort": lambda a: X.argsort(a), "topk": lambda a: X.topk(1, a), "squeeze": lambda a: X.squeeze(a),
    "unsqueeze": lambda a: X.unsqueeze(a + (1 if a > 0 else -1)), "transpose": lambda a: X.transpose((0, a)),
    "swapaxes": lambda a: X.swapaxes(0, a), "flatten": lambda a: X.flatten(0, a), "split": lambda a: X.split(1, a),
    "concatenate": lambda a: ag.concatenate([X, X], axis=a), "stack": lambda a: ag.stack([X, X], axis=a + (1 if a > 0 else -1)),
    "flip": lambda a: X.flip(a), "roll": lambda a: X.roll(1, a), "gather": lambda a: X.gather(a, IDX),
    "scatter": lambda a: X.scatter(a, IDX, 1.0), "scatter_add": lambda a: X.scatter_add(a, IDX, X),
    "softmax": lambda a: F.softmax(X, axis=a), "log_softmax": lambda a: F.log_softmax(X, axis=a),
}


@pytest.mark.parametrize("name", sorted(AXIS_OPS))
@pytest.mark.parametrize("axis", [2, -3, 77])
def test_out_of_range_axis_names_op_axis_and_shape(name, axis):
    with pytest.raises(AxisError, match=r"axis -?\d+ is out of range for a tensor of shape \((\d+, )*\d+\)") as e:
        AXIS_OPS[name](axis)
    assert str(e.value).startswith(name + ":")


@pytest.mark.parametrize("name", sorted(AXIS_OPS))
def test_valid_negative_axis_works(name):
    AXIS_OPS[name](-1)


def test_axis_errors_are_index_and_value_errors():
    with pytest.raises(IndexError):
        X.sum(axis=5)
    with pytest.raises(ValueError):
        X.sum(axis=5)
    with pytest.raises(TypeError, match="sum: axis must be an int, got 1.5"):
        X.sum(axis=1.5)
    with pytest.raises(ValueError, match="names an axis twice"):
        X.sum(axis=(1, -1))
    with pytest.raises(ValueError, match="not a permutation"):
        X.transpose((1, 1))


def test_the_reported_cases():
    with pytest.raises(AxisError, match="squeeze: axis 2"):
        ag.ones(1, 3).squeeze(2)
    with pytest.raises(AxisError, match="unsqueeze: axis 10"):
        ag.ones(2, 3).unsqueeze(10)
    with pytest.raises(AxisError, match="transpose: axis 5"):
        ag.ones(2, 3).transpose((0, 5))
    with pytest.raises(AxisError, match=r"stack: axis 77 is out of range for a tensor of shape \(2,\)"):
        ag.stack([ag.ones(2)], axis=77)
    with pytest.raises(ValueError, match=r"stack: all inputs need one shape, got \[\(2,\), \(3,\)\]"):
        ag.stack([ag.ones(2), ag.ones(3)])


def test_zero_dim_tensors_take_axis_0_and_minus_1_like_pytorch():
    s = ag.Tensor(np.float64(3.0), requires_grad=True)
    assert s.squeeze().shape == () and s.squeeze(0).shape == () and s.squeeze(-1).shape == ()
    assert s.unsqueeze(0).shape == (1,) and s.unsqueeze(-1).shape == (1,)
    assert s.flatten().shape == (1,)
    for axis in (0, -1, None):
        assert s.sum(axis).item() == 3.0 and s.mean(axis).item() == 3.0 and s.max(axis).item() == 3.0
    assert F.softmax(s, axis=-1).item() == 1.0 and F.log_softmax(s, axis=0).item() == 0.0
    assert s.cumsum(0).item() == 3.0 and s.argmax(0).item() == 0
    (s.sum(0) * 2.0 + F.softmax(s, -1)).backward()
    assert s.grad.item() == 2.0
    with pytest.raises(AxisError, match=r"sum: axis 1 is out of range for a tensor of shape \(\)"):
        s.sum(1)
    with pytest.raises(AxisError, match="softmax: axis 1"):
        F.softmax(s, axis=1)


def test_pytorch_keyword_names_work_beside_numpys():
    x = ag.Tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.sum(dim=1, keepdim=True).numpy(), x.data.sum(1, keepdims=True))
    np.testing.assert_array_equal(x.std(dim=1, correction=1).numpy(), x.data.std(1, ddof=1))
    assert x.flatten(start_dim=0, end_dim=1).shape == (6,) and x.unsqueeze(dim=0).shape == (1, 2, 3)
    assert ag.stack([x, x], dim=1).shape == (2, 2, 3) and ag.concat([x, x], dim=-1).shape == (2, 6)
    assert F.softmax(x, dim=0).shape == (2, 3) and x.flip(dims=(0,)).shape == (2, 3)
    assert x.argmax(dim=1).tolist() == [2, 2] and x.topk(1, dim=0)[1].tolist() == [[1, 1, 1]]
    with pytest.raises(TypeError, match="sum: got both axis= and dim="):
        x.sum(axis=0, dim=1)
