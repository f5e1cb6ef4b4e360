"""The Python protocol of Tensor, decided like PyTorch's: len and iteration, truth value and number conversions
(one element), NumPy conversion, ``in``, in-place operators, elementwise comparisons and the logical operators.
A mixin of ``Tensor`` (``autograd/tensor.py``), which holds the data and the arithmetic."""
from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from . import dtypes
from .grad_mode import _GradMode

if TYPE_CHECKING:
    from .tensor import Tensor


class TensorProtocol:
    """Python's operator protocol for ``Tensor``; see the module docstring."""

    __slots__ = ()

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self)))

    def _one_value(self, what: str):
        if self.data.size != 1:
            raise RuntimeError(f"{what} of a tensor with {self.size} elements (shape {self.shape}) is ambiguous: "
                               "it needs exactly one element (use .any(), .all() or .item() on one element)")
        return self.data.reshape(()).item()

    def __bool__(self) -> bool: return bool(self._one_value("bool()"))
    def __float__(self) -> float: return float(self._one_value("float()"))
    def __int__(self) -> int: return int(self._one_value("int()"))

    def __index__(self) -> int:
        if self.dtype.kind not in "iub":
            raise TypeError(f"only integer tensors of one element can be used as an index, got dtype {self.dtype}")
        return int(self._one_value("index"))

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __contains__(self, value) -> bool:
        return bool((self.data == (value.data if isinstance(value, TensorProtocol) else value)).any())


    # x += y: PyTorch's in-place semantics, see _inplace
    def __iadd__(self, other): return self._inplace(other, operator.add, "+=")
    def __isub__(self, other): return self._inplace(other, operator.sub, "-=")
    def __imul__(self, other): return self._inplace(other, operator.mul, "*=")
    def __itruediv__(self, other): return self._inplace(other, operator.truediv, "/=")
    def __ipow__(self, other): return self._inplace(other, operator.pow, "**=")

    def _inplace(self, other, op, symbol: str) -> "Tensor":
        """``x op= y``. When no graph is recorded (nothing requires grad, or under ``no_grad``: an optimizer's
        ``w -= lr * w.grad``) the result is written into x's own array, which keeps its shape and dtype. While a
        graph is recorded, a leaf that requires grad raises (as in PyTorch: changing it would make its gradient
        meaningless), and any other tensor is rebound to the new graph node (no aliasing, unlike PyTorch)."""
        recording = _GradMode.enabled and (self.requires_grad or (isinstance(other, TensorProtocol) and other.requires_grad))
        if recording:
            if self.is_leaf and self.requires_grad:
                raise RuntimeError(f"x {symbol} ...: x is a leaf tensor that requires grad (shape {self.shape}) and "
                                   "cannot be changed in place while a graph is recorded; update parameters under "
                                   "`with ag.no_grad():`, or write `x = x + ...` for a new tensor")
            return op(self, other)
        result = op(self, other).data
        if result.shape != self.shape:
            raise ValueError(f"x {symbol} y: the result has shape {result.shape} but x has shape {self.shape}; an "
                             "in-place op cannot change a tensor's shape")
        if dtypes.category(result.dtype) > dtypes.category(self.dtype):
            raise TypeError(f"x {symbol} y: the result is {result.dtype}, which cannot be stored in x of dtype "
                            f"{self.dtype} in place")
        self.data[...] = result
        _amp().refresh_shadows(self)     # a parameter's low-precision copies follow its new values
        return self

    # comparisons and logic give boolean (or integer) tensors and record no graph
    def _compare(self, other, op):
        other = other.data if isinstance(other, TensorProtocol) else other
        return type(self)(op(self.data, other))

    def __lt__(self, other): return self._compare(other, lambda a, b: a < b)
    def __le__(self, other): return self._compare(other, lambda a, b: a <= b)
    def __gt__(self, other): return self._compare(other, lambda a, b: a > b)
    def __ge__(self, other): return self._compare(other, lambda a, b: a >= b)
    def __eq__(self, other): return self._compare(other, lambda a, b: a == b)
    def __ne__(self, other): return self._compare(other, lambda a, b: a != b)
    def eq(self, other) -> "Tensor": return self == other
    def ne(self, other) -> "Tensor": return self != other
    __hash__ = object.__hash__  # tensors are graph nodes: identity decides membership in sets and dicts

    def _logic(self, other, op, symbol: str):
        other_float = dtypes.is_float(other.dtype) if isinstance(other, TensorProtocol) else isinstance(other, float)
        if other_float or dtypes.is_float(self.dtype):
            raise TypeError(f"{symbol} needs boolean or integer tensors, got dtype {self.dtype}"
                            + (f" and {other.dtype}" if isinstance(other, TensorProtocol) else ""))
        return self._compare(other, op)

    def __and__(self, other): return self._logic(other, lambda a, b: a & b, "&")
    def __or__(self, other): return self._logic(other, lambda a, b: a | b, "|")
    def __xor__(self, other): return self._logic(other, lambda a, b: a ^ b, "^")
    __rand__, __ror__, __rxor__ = __and__, __or__, __xor__
    def __invert__(self): return self._logic(0, lambda a, _: ~a, "~")


def _amp():
    from . import amp   # amp imports the CUDA kernels, which come after Tensor
    return amp
