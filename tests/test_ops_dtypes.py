"""Type promotion against PyTorch's documented rules (torch.result_type): the promotion table of PyTorch's
c10/core/ScalarType.cpp for pairs of tensors, the three operand groups (dimensioned tensors, 0-d tensors, Python
scalars), and the examples of PyTorch's "Type promotion" documentation. Then every binary op's output dtype and
values follow the rule."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import dtypes

NAMES = ["u1", "i1", "i2", "i4", "i8", "f2", "f4", "f8", "b1"]
DT = dict(zip(NAMES, map(np.dtype, ["uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64",
                                    "bool"])))
# PyTorch's promoteTypes table, these nine types (rows and columns in the order of NAMES)
TABLE = """
u1 i2 i2 i4 i8 f2 f4 f8 u1
i2 i1 i2 i4 i8 f2 f4 f8 i1
i2 i2 i2 i4 i8 f2 f4 f8 i2
i4 i4 i4 i4 i8 f2 f4 f8 i4
i8 i8 i8 i8 i8 f2 f4 f8 i8
f2 f2 f2 f2 f2 f2 f4 f8 f2
f4 f4 f4 f4 f4 f4 f4 f8 f4
f8 f8 f8 f8 f8 f8 f8 f8 f8
u1 i1 i2 i4 i8 f2 f4 f8 b1
"""
PROMOTE = {(a, b): DT[c] for a, row in zip(NAMES, TABLE.split("\n")[1:]) for b, c in zip(NAMES, row.split())}
CATEGORY = {"b1": 0, "u1": 1, "i1": 1, "i2": 1, "i4": 1, "i8": 1, "f2": 2, "f4": 2, "f8": 2}
SCALAR_DTYPE = {bool: "b1", int: "i8", float: "f4"}  # a Python scalar stands for bool, int64, the default float


def expected(operands):
    """torch.result_type from its documentation: the highest group holding the highest category decides."""
    groups = {0: [], 1: [], 2: []}  # 0 dimensioned tensors, 1 zero-dim tensors, 2 scalars
    for kind, name in operands:
        groups[kind].append(name)

    def fold(names):
        out = None
        for n in names:
            out = n if out is None else next(k for k, v in DT.items() if v == PROMOTE[(out, n)])
        return out

    result = None
    for g in (2, 1, 0):  # combine_categories(dim, combine_categories(zero, scalars))
        higher = fold(groups[g])
        if higher is None:
            continue
        if result is None or CATEGORY[higher] >= CATEGORY[result]:
            result = higher
    return DT[result]


def make(kind, name):
    if kind == 2:
        return {"b1": True, "i8": 3, "f4": 1.5}[name]
    value = np.ones((2, 3) if kind == 0 else (), dtype=DT[name]) * (1 if name == "b1" else 3)
    return ag.Tensor(value.astype(DT[name]))


operand = st.one_of(st.tuples(st.sampled_from([0, 1]), st.sampled_from(NAMES)),
                    st.tuples(st.just(2), st.sampled_from(["b1", "i8", "f4"])))


@pytest.mark.parametrize("a", NAMES)
@pytest.mark.parametrize("b", NAMES)
def test_promote_types_is_pytorchs_table(a, b):
    assert dtypes.promote_types(DT[a], DT[b]) == PROMOTE[(a, b)]
    assert expected([(0, a), (0, b)]) == PROMOTE[(a, b)]


@given(ops=st.lists(operand, min_size=1, max_size=3))
@settings(deadline=None, max_examples=200)
def test_result_type_follows_the_documented_rule(ops):
    values = [make(k, n) for k, n in ops]
    assert dtypes.result_type(*values) == expected(ops)


@given(x=operand.filter(lambda o: o[0] < 2), y=operand)
@settings(deadline=None, max_examples=100)
def test_binary_ops_compute_in_the_promoted_dtype(x, y):
    a, b = make(*x), make(*y)
    want = expected([x, y])
    ops = {"add": (lambda p, q: p + q, np.add), "mul": (lambda p, q: p * q, np.multiply),
           "sub": (lambda p, q: p - q, np.subtract), "maximum": (ag.Tensor.maximum, np.maximum)}
    for name, (op, np_op) in ops.items():
        if name == "sub" and want == np.bool_:
            continue  # subtracting booleans is an error, as in PyTorch and NumPy
        out = op(a, b)
        assert out.dtype == want, (name, x, y, out.dtype, want)
        ref = np_op(np.asarray(a.data, dtype=want), np.asarray(b.data if isinstance(b, ag.Tensor) else b, dtype=want))
        np.testing.assert_array_equal(out.numpy(), ref)
    # true division always gives a float
    div = a / b
    assert div.dtype == (want if want.kind == "f" else np.float32)


def test_pytorch_documentation_examples():
    int_t, long_t = ag.Tensor(np.ones(1, np.int32)), ag.Tensor(np.ones(1, np.int64))
    uint_t, bool_t = ag.Tensor(np.ones(1, np.uint8)), ag.Tensor(np.ones(1, bool))
    float_t, double_t = ag.Tensor(np.ones(1, np.float32)), ag.Tensor(np.ones(1, np.float64))
    long_zerodim = ag.Tensor(np.array(1, np.int64))
    assert (ag.tensor(5) + 5).dtype == np.int64
    assert (int_t + 5).dtype == np.int32
    assert (int_t + long_zerodim).dtype == np.int32
    assert (long_t + int_t).dtype == np.int64
    assert (bool_t + long_t).dtype == np.int64
    assert (bool_t + uint_t).dtype == np.uint8
    assert (float_t + double_t).dtype == np.float64
    assert (bool_t + int_t).dtype == np.int32
    assert (long_t + float_t).dtype == np.float32
    assert (int_t + 5.5).dtype == np.float32
    assert (float_t * ag.Tensor(np.float64(2.0))).dtype == np.float32  # a 0-d float64 does not widen float32


def test_the_reported_cases():
    assert (ag.Tensor(np.arange(3)) + 1).dtype == np.int64
    assert (ag.Tensor(np.arange(3, dtype=np.int32)) * 2).dtype == np.int32
    assert ag.where(ag.Tensor(np.array([True, False])), 4, 2).dtype == np.int64
    assert ag.where(ag.Tensor(np.array([True, False])), 4, 2.5).dtype == np.float32
    x = ag.Tensor(np.arange(10.0))
    idx = ag.Tensor(np.array([0, 1, 3]))
    np.testing.assert_array_equal(x[idx * 2].numpy(), [0.0, 2.0, 6.0])
    assert (ag.Tensor(np.ones(2, np.float32)) + ag.Tensor(np.ones(2, np.int32))).dtype == np.float32
    assert (ag.Tensor(np.ones(2, np.float16)) + ag.Tensor(np.ones(2, np.float32))).dtype == np.float32
    assert (ag.Tensor(np.ones(2, np.int64)) + ag.Tensor(np.ones(2, np.float16))).dtype == np.float16
    assert (ag.Tensor(np.ones(2, np.float16)) * 3.0).dtype == np.float16


FLOAT_FNS = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
             "log2": np.log2, "log10": np.log10, "sigmoid": lambda a: 1 / (1 + np.exp(-a)), "mean": np.mean,
             "var": np.var, "std": np.std, "logsumexp": lambda a: np.log(np.exp(a).sum())}


@pytest.mark.parametrize("fn", sorted(FLOAT_FNS))
def test_float_functions_of_integer_tensors_are_float32(fn):
    x = np.array([1, 2, 4])
    out = getattr(ag.Tensor(x), fn)()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), FLOAT_FNS[fn](x.astype(np.float64)), rtol=1e-6)


def test_integer_results_stay_integer():
    x = ag.Tensor(np.array([1, 2, 4], dtype=np.int32))
    assert (x ** 2).dtype == np.int32 and (x ** 0.5).dtype == np.float32
    assert abs(x).dtype == np.int32 and (-x).dtype == np.int32
    assert x.sum().dtype == np.int64 and ag.Tensor(np.array([True, True])).sum().dtype == np.int64
    assert x.floor().dtype == np.int32 and x.round().dtype == np.int32
    assert (x // 2).dtype == np.int32 and (x % 3).dtype == np.int32
    assert x.cumsum(0).dtype == np.int64


def test_gradient_has_each_inputs_dtype():
    w = ag.Tensor(np.ones(3, np.float32), requires_grad=True)
    s = ag.Tensor(np.float64(2.0), requires_grad=True)
    (w * s).sum().backward()
    assert w.grad.dtype == np.float32 and s.grad.dtype == np.float64
    np.testing.assert_allclose(s.grad.numpy(), 3.0)


def test_unsupported_dtype_is_a_clear_error():
    with pytest.raises(TypeError, match="complex128 is not supported"):
        dtypes.result_type(np.ones(2, np.complex128), 1.0)


def test_joining_promotes_like_the_binary_ops():
    f = ag.Tensor(np.ones(2, np.float32), requires_grad=True)
    i = ag.Tensor(np.arange(2))
    assert ag.concatenate([f, i]).dtype == np.float32 and ag.stack([i, f]).dtype == np.float32
    d = ag.Tensor(np.ones(2, np.float64), requires_grad=True)
    out = ag.stack([f, d])
    assert out.dtype == np.float64
    out.sum().backward()
    assert f.grad.dtype == np.float32 and d.grad.dtype == np.float64


@pytest.mark.parametrize("a,b,expect", [(np.int64, np.float32, np.float32), (np.int32, np.float64, np.float64),
                                        (np.float16, np.float32, np.float32), (np.float32, np.float64, np.float64),
                                        (np.int32, np.int64, np.int64)])
def test_matmul_promotes_like_the_binary_ops(a, b, expect):
    x = ag.tensor(np.arange(6).reshape(2, 3).astype(a))
    y = ag.tensor(np.ones((3, 2), dtype=b), requires_grad=np.dtype(b).kind == "f")
    z = x @ y
    assert z.dtype == expect == (x[:, :2] * y[:2]).dtype
    np.testing.assert_array_equal(z.data, x.data.astype(np.float64) @ y.data.astype(np.float64))
    if y.requires_grad:
        z.sum().backward()
        assert y.grad.dtype == y.dtype
