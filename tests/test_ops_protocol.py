"""The Python protocol of Tensor, decided like PyTorch: in-place operators, truth value, number conversions,
elementwise ==, abs/round/%/// and friends, .data assignment, and errors that name the op and the user's shapes."""
from __future__ import annotations

import math

import numpy as np
import pytest

import autograd as ag


def test_micrograd_sgd_line_keeps_data_an_array():
    p = ag.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (p * p).sum().backward()
    p.data -= 0.1 * p.grad
    assert type(p.data) is np.ndarray
    np.testing.assert_allclose(p.data, [0.8, 1.6])
    p.data = ag.Tensor(np.zeros(2))  # a Tensor assigned to .data is unwrapped
    assert type(p.data) is np.ndarray
    with pytest.raises(TypeError, match="Tensor.data must be a NumPy or CuPy array"):
        p.data = [1.0, 2.0]


def test_inplace_on_a_leaf_that_requires_grad_raises_like_pytorch():
    x = ag.Tensor(np.ones(3), requires_grad=True)
    for op in ("+=", "-=", "*=", "/="):
        with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
            exec(f"x {op} 1", {"x": x})


def test_inplace_under_no_grad_updates_the_parameter_in_place():
    w = ag.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (w * 3.0).sum().backward()
    buffer = w.data
    with ag.no_grad():
        w -= 0.5 * w.grad
    assert w.is_leaf and w.requires_grad and w.data is buffer  # PyTorch's `with no_grad(): w -= lr * w.grad`
    np.testing.assert_allclose(w.data, [-0.5, 0.5])


def test_inplace_on_plain_tensors_writes_into_them_and_keeps_dtype():
    x = ag.Tensor(np.array([1, 2, 3]))
    alias = x.data
    x += 2
    x *= 2
    assert x.dtype == np.int64 and x.data is alias
    np.testing.assert_array_equal(alias, [6, 8, 10])
    with pytest.raises(TypeError, match="cannot be stored in x of dtype int64"):
        x += 0.5  # PyTorch: result type Float can't be cast to Long
    with pytest.raises(ValueError, match="in-place op cannot change a tensor's shape"):
        y = ag.Tensor(np.ones(3))
        y += np.ones((2, 3))


def test_inplace_on_a_graph_node_rebinds_and_keeps_gradients_right():
    x = ag.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x * 2.0
    y += x  # y = 3x
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 3.0])


def test_truth_value_like_pytorch():
    assert bool(ag.tensor([0.0])) is False and bool(ag.tensor(0.0)) is False
    assert bool(ag.tensor([[2.0]])) is True
    with pytest.raises(RuntimeError, match=r"bool\(\) of a tensor with 2 elements .* is ambiguous"):
        bool(ag.tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="0 elements"):
        bool(ag.Tensor(np.ones(0)))


def test_number_conversions():
    assert float(ag.tensor([2.5])) == 2.5 and int(ag.tensor(3.7)) == 3
    assert [10, 20, 30][ag.tensor(1)] == 20 and list(range(ag.tensor(3))) == [0, 1, 2]
    with pytest.raises(TypeError, match="only integer tensors"):
        [1, 2][ag.tensor(1.0)]
    with pytest.raises(RuntimeError, match="float"):
        float(ag.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="len\\(\\) of a 0-d tensor"):
        len(ag.tensor(1.0))
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        iter(ag.tensor(1.0))
    assert [t.item() for t in ag.tensor([1.0, 2.0])] == [1.0, 2.0]
    np.testing.assert_array_equal(np.asarray(ag.tensor([1, 2])), [1, 2])


def test_comparisons_are_elementwise():
    eq = ag.tensor(3.0) == 3.0
    assert isinstance(eq, ag.Tensor) and eq.dtype == bool and bool(eq)
    np.testing.assert_array_equal((ag.tensor([1, 2]) != ag.tensor([1, 3])).numpy(), [False, True])
    t = ag.tensor([1.0])
    assert {t: 1}[t] == 1  # identity hashing still serves dicts and sets
    assert 2.0 in ag.tensor([1.0, 2.0]) and 5.0 not in ag.tensor([1.0, 2.0])


def test_number_operators_match_python_and_pytorch():
    a = np.array([-7.5, -3.0, 2.5, 7.0])
    x = ag.Tensor(a)
    np.testing.assert_array_equal(abs(x).numpy(), np.abs(a))
    np.testing.assert_array_equal((x % 3).numpy(), [math.fmod(v, 3) % 3 for v in a])  # sign of the divisor
    np.testing.assert_array_equal((x // 2).numpy(), [v // 2 for v in a])
    np.testing.assert_array_equal((7 % ag.Tensor(np.array([2.0, -2.0]))).numpy(), [1.0, -1.0])
    np.testing.assert_array_equal(round(ag.Tensor(np.array([0.5, 1.5, 2.5]))).numpy(), [0.0, 2.0, 2.0])
    np.testing.assert_array_equal(round(ag.Tensor(np.array([1.234])), 2).numpy(), [1.23])
    assert +x is x
    np.testing.assert_array_equal((-x).numpy(), -a)
    m = ag.Tensor(np.array([True, False]))
    np.testing.assert_array_equal((~m).numpy(), [False, True])
    np.testing.assert_array_equal((m & ag.Tensor(np.array([True, True]))).numpy(), [True, False])
    np.testing.assert_array_equal((m | False).numpy(), [True, False])
    with pytest.raises(TypeError, match="& needs boolean or integer tensors"):
        x & x


def test_remainder_gradients():
    x = ag.Tensor(np.array([7.5, -3.2]), requires_grad=True)
    y = ag.Tensor(np.array([2.0, 1.5]), requires_grad=True)
    (x % y).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 1.0])
    np.testing.assert_allclose(y.grad.numpy(), -np.floor(np.array([7.5, -3.2]) / np.array([2.0, 1.5])))
    assert ag.gradcheck(lambda a, b: a % b, [np.array([7.5, -3.2, 0.7]), np.array([2.0, 1.5, 0.3])])


def test_errors_name_the_op_and_the_users_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(4,\) and \(1, 2\)"):
        ag.ones(4) @ ag.ones(1, 2)
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(2,\)"):
        ag.ones(2, 3) @ ag.ones(2)
    with pytest.raises(ValueError, match=r"Add: shapes \(2,\) and \(3,\) cannot be broadcast"):
        ag.ones(2) + ag.ones(3)
    with pytest.raises(ValueError, match=r"reshape: cannot reshape a tensor of shape \(2, 3\)"):
        ag.ones(2, 3).reshape(4)
    with pytest.raises(ValueError, match=r"concatenate: shapes \[\(2, 3\), \(2, 4\)\] do not match"):
        ag.concatenate([ag.ones(2, 3), ag.ones(2, 4)], axis=0)
    with pytest.raises(TypeError, match="cannot make a Tensor from"):
        ag.tensor({"a": 1})
    with pytest.raises(ValueError, match="sum_to: shape \\(3, 1\\) does not broadcast to the tensor's shape"):
        ag.sum_to(ag.ones(2, 3), (3, 1))


def test_raw_numpy_errors_are_wrapped_with_the_op():
    with pytest.raises(TypeError, match="cannot make a Tensor from list: setting an array element"):
        ag.tensor([[1, 2], [3]])
    with pytest.raises(TypeError, match="cannot make a Tensor from str of dtype <U3"):
        ag.tensor("abc")
    with pytest.raises(TypeError, match=r"Sub: numpy boolean subtract.*\(operands bool \(1,\) and bool \(1,\)\)"):
        ag.tensor([True]) - ag.tensor([True])
    with pytest.raises(ValueError, match="pow: Integers to negative integer powers .* int64 tensor"):
        ag.tensor([2]) ** -1
    with pytest.raises(TypeError, match="astype: 'foo' is not a dtype"):
        ag.tensor([1.0]).astype("foo")
    with pytest.raises(TypeError, match="Add: cannot make a Tensor from str"):
        ag.tensor([1.0]) + "a"


def test_methods_as_functions_like_torch():
    from autograd.methods import NAMES
    x = ag.Tensor(np.array([[0.5, 2.0], [1.5, 3.0]]))
    np.testing.assert_allclose(ag.exp(x).numpy(), np.exp(x.data))
    np.testing.assert_allclose(ag.sum(x, 1).numpy(), x.data.sum(1))
    np.testing.assert_allclose(ag.exp([0.0, 1.0]).numpy(), np.exp([0.0, 1.0]), rtol=1e-6)
    np.testing.assert_array_equal(ag.max(x, ag.Tensor(np.full((2, 2), 1.0))).numpy(), np.maximum(x.data, 1.0))
    for name in NAMES:
        assert getattr(ag, name).__name__ == name and name in ag.__all__


def test_pytorch_method_spellings():
    x = ag.Tensor(np.array([[-1.0, 2.0], [3.0, -4.0]]), requires_grad=True)
    np.testing.assert_array_equal(x.clamp(min=0).numpy(), np.clip(x.data, 0, None))
    np.testing.assert_array_equal(x.clamp(max=1.0).numpy(), np.clip(x.data, None, 1.0))
    e = np.exp(x.data - x.data.max(1, keepdims=True))
    np.testing.assert_allclose(x.softmax(dim=-1).numpy(), e / e.sum(1, keepdims=True))
    np.testing.assert_allclose(x.log_softmax(-1).exp().numpy(), e / e.sum(1, keepdims=True))
    np.testing.assert_array_equal(x.masked_fill(x.data < 0, 0.0).numpy(), np.maximum(x.data, 0))
    c = x.clone()
    assert c.data is not x.data and x.contiguous() is x
    (c * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2.0)
    assert ag.gradcheck(lambda t: t.clone() * t, [x.data])


@pytest.mark.parametrize("index,vshape", [((1,), (3,)), ((slice(None), 0), (2,)), ((slice(None), 0), ()),
                                          ((np.array([0, 1]), np.array([2, 0])), (2,)), ((Ellipsis, 1), (1,))])
def test_setitem_is_differentiable_on_graph_nodes(index, vshape):
    rng = np.random.default_rng(0)

    def fn(a, v):
        y = a * 1.0
        y[index] = v * 3.0
        return y * a

    assert ag.gradcheck(fn, [rng.standard_normal((2, 3)), rng.standard_normal(vshape)])


def test_setitem_like_pytorch():
    x = ag.zeros(2, 3)
    buffer = x.data
    x[0, 1] = 5.0
    x[1] = ag.Tensor(np.array([1.0, 2.0, 3.0]))
    x[x > 2.5] = -1.0  # a boolean mask
    assert x.data is buffer  # written in place: nothing requires grad
    np.testing.assert_array_equal(buffer, [[0, -1, 0], [1, 2, -1]])
    w = ag.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        w[0] = 2.0
    with ag.no_grad():
        w[0] = 2.0  # an update outside the graph, as in PyTorch
    assert w.is_leaf and w.data[0] == 2.0
    with pytest.raises(IndexError, match=r"setitem: cannot write .* of a tensor of shape \(2, 3\)"):
        x[5] = 1.0


def test_clip_of_integers_with_float_bounds_is_float32():
    assert ag.tensor([1, 5]).clip(0.5, 2.5).dtype == np.float32 and ag.tensor([1, 5]).clip(0, 2).dtype == np.int64


def test_where_shape_error_names_all_three_shapes():
    with pytest.raises(ValueError, match=r"where: cond, x and y of shapes \(3,\), \(2,\) and \(\) cannot be broadcast"):
        ag.where(ag.Tensor(np.ones(3, bool)), ag.ones(2), 0.0)


def test_more_pytorch_spellings():
    x = ag.Tensor(np.array([[1.0], [2.0]]))
    assert x.expand(-1, 3).shape == (2, 3) and x.expand(4, -1, 3).shape == (4, 2, 3)
    assert x.dim() == 2 and x.to(np.float32).dtype == np.float32 and ag.cat([x, x]).shape == (4, 1)
    g = ag.Tensor(np.ones(3))
    buffer = g.data
    assert g.zero_() is g and g.data is buffer and not g.data.any()
    np.testing.assert_array_equal(g.fill_(2.5).numpy(), 2.5)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        ag.Tensor(np.ones(2), requires_grad=True).zero_()


def test_division_by_zero_and_log_of_zero_are_quiet_like_pytorch():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ag.Tensor(np.array([1.0, 0.0, -1.0])) / 0.0
        assert out.numpy()[0] == np.inf and np.isnan(out.numpy()[1])
        assert ag.Tensor(np.array([0.0])).log().item() == -np.inf
        assert np.isnan(ag.Tensor(np.array([-1.0])).sqrt().item())
