"""Tensor: an ndarray (NumPy or CuPy) plus its gradient and the Function that made it."""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import backend, dtypes
from .ops import axes as _axes
from .tensor_protocol import TensorProtocol


def _to_array(data, dtype=None):
    """Turn user data into an ndarray. Python floats and float lists become float32; ints stay integer."""
    if dtype is not None:
        dtype = dtypes.as_dtype(dtype)
    if isinstance(data, np.ndarray) or backend.is_cupy_array(data):
        arr = data if dtype is None or data.dtype == dtype else data.astype(dtype)
    else:
        try:
            arr = np.asarray(data, dtype=dtype)
        except (TypeError, ValueError) as e:  # ragged nested lists, unparsable strings
            raise TypeError(f"cannot make a Tensor from {type(data).__name__}: {e}") from None
        if dtype is None and arr.dtype == np.float64 and not isinstance(data, np.generic):
            arr = arr.astype(backend.default_float_dtype())
    if arr.dtype.kind not in "biuf" and not dtypes.is_bfloat16(arr.dtype):
        raise TypeError(f"cannot make a Tensor from {type(data).__name__} of dtype {arr.dtype}: expected bool, integer "
                        "or float numbers (nested lists or an ndarray)")
    return arr


class Tensor(TensorProtocol):
    """A node of the graph: ``data`` (ndarray), ``grad`` (Tensor or None) and ``creator`` (the Function, or None).

    Leaves are Tensors made by the user (``creator is None``); with ``requires_grad=True`` their ``.grad`` collects
    gradients across backward calls until zeroed.
    """

    __slots__ = ("_data", "grad", "requires_grad", "creator", "out_index", "name", "_hooks", "__weakref__")
    __array_priority__ = 1000  # so ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str | None = None, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        arr = _to_array(data, dtype)
        if device is not None:
            arr = backend.to_device(arr, device)
        if requires_grad and not dtypes.is_float(arr.dtype):
            raise TypeError(f"only floating-point tensors can require grad, got dtype {arr.dtype}")
        self._data = arr
        self.grad: Tensor | None = None
        self.requires_grad = requires_grad
        self.creator = None
        self.out_index = 0
        self.name = name
        self._hooks = None

    @classmethod
    def _from_op(cls, data, creator, index: int) -> "Tensor":
        t = cls.__new__(cls)
        t._data = data
        t.grad = None
        t.requires_grad = True
        t.creator = creator
        t.out_index = index
        t.name = None
        t._hooks = None
        return t

    # ------------------------------------------------------------------ array facts
    @property
    def data(self):
        """The values: a NumPy or CuPy array (PyTorch's ``.data`` is a Tensor; here it is the array itself)."""
        return self._data

    @data.setter
    def data(self, value) -> None:
        # a Tensor assigned here is unwrapped, so micrograd's and DeZero's ``p.data -= lr * p.grad`` (which Python
        # runs as ``p.data = p.data - lr * p.grad``, a Tensor) keeps .data an array
        if isinstance(value, Tensor):
            value = value._data
        if not (isinstance(value, np.ndarray) or backend.is_cupy_array(value)):
            raise TypeError(f"Tensor.data must be a NumPy or CuPy array (or a Tensor), got {type(value).__name__}")
        self._data = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def size(self) -> int:
        return self._data.size

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self.creator is None

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (copied from the GPU when needed; no graph)."""
        return backend.to_numpy(self.data)

    def item(self):
        """The single value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def numel(self) -> int:
        return self.data.size

    def tolist(self):
        return self.numpy().tolist()

    def clone(self) -> "Tensor":
        """A differentiable copy with its own memory (PyTorch's ``clone``)."""
        return _sh.Copy.apply(self)

    def contiguous(self) -> "Tensor":
        """The tensor itself: reshapes of strided arrays copy when they must, so no call is needed here."""
        return self

    def detach(self) -> "Tensor":
        """The same data as a new leaf that does not require grad (shares memory)."""
        return Tensor(self.data)

    def to(self, device: str) -> "Tensor":
        """A differentiable copy on ``device`` ('cpu', 'cuda', 'cuda:N'); returns self when already there.
        A dtype instead (``x.to(np.float64)``, as PyTorch's ``.to(dtype)``) casts like ``astype``."""
        if not isinstance(device, str):
            return _sh.astype(self, device)
        if backend.device_of(self.data) == backend.canonical_device(device):
            return self
        from .ops.shape import ToDevice
        return ToDevice.apply(self, device=device)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self, index: int | None = None) -> "Tensor":
        return self.to("cuda" if index is None else f"cuda:{index}")

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and not dtypes.is_float(self.dtype):
            raise TypeError(f"only floating-point tensors can require grad, got dtype {self.dtype}")
        if not self.is_leaf and not flag:
            raise RuntimeError("requires_grad_(False) only applies to leaves; use .detach() for an op's output")
        self.requires_grad = flag
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # ------------------------------------------------------------------ autograd
    def backward(self, grad=None, retain_graph: bool | None = None, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``. ``grad`` is needed unless self has one element.

        ``retain_graph`` defaults to ``create_graph`` (as in PyTorch): the graph of the gradients built with
        ``create_graph=True`` runs through this graph's nodes, so freeing them would make those gradients useless.
        """
        from .backward import BackwardError, run_backward
        if not self.requires_grad:
            raise BackwardError(
                f"backward() of a tensor (shape {self.shape}) that does not require grad: no tensor it was computed "
                "from has requires_grad=True, or it was computed under no_grad(), so there is nothing to differentiate")
        if retain_graph is None:
            retain_graph = create_graph
        run_backward([self], [grad], retain_graph=retain_graph, create_graph=create_graph)

    def retain_grad(self) -> "Tensor":
        """Keep this intermediate's gradient in ``.grad`` after backward (a leaf keeps its gradient anyway)."""
        if self.creator is not None:
            import weakref
            self.creator.__dict__.setdefault("_retained", []).append((self.out_index, weakref.ref(self)))
        return self

    def register_post_accumulate_grad_hook(self, hook: Callable[["Tensor"], None]) -> Callable[[], None]:
        """Call ``hook(tensor)`` once this leaf's ``.grad`` holds its final value for the running backward.

        Returns a function that removes the hook. The data-parallel trainer uses this to all-reduce gradients
        while the rest of backward is still running.
        """
        if not self.is_leaf:
            raise RuntimeError("hooks can only be registered on leaf tensors")
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook) if self._hooks and hook in self._hooks else None

    # ------------------------------------------------------------------ operators
    def __add__(self, other): return _ew.Add.apply(self, other)
    def __radd__(self, other): return _ew.Add.apply(other, self)
    def __sub__(self, other): return _ew.Sub.apply(self, other)
    def __rsub__(self, other): return _ew.Sub.apply(other, self)
    def __mul__(self, other): return _ew.Mul.apply(self, other)
    def __rmul__(self, other): return _ew.Mul.apply(other, self)
    def __truediv__(self, other): return _ew.Div.apply(self, other)
    def __rtruediv__(self, other): return _ew.Div.apply(other, self)
    def __mod__(self, other): return _pw.Remainder.apply(self, other)
    def __rmod__(self, other): return _pw.Remainder.apply(other, self)
    def __floordiv__(self, other): return _pw.FloorDivide.apply(self, other)
    def __rfloordiv__(self, other): return _pw.FloorDivide.apply(other, self)
    def __neg__(self): return _ew.Neg.apply(self)
    def __pos__(self): return self
    def __abs__(self): return _ew.Abs.apply(self)
    def __round__(self, ndigits=None): return _pw.Round.apply(self, decimals=ndigits or 0)
    def __matmul__(self, other): return _la.matmul(self, other)
    def __rmatmul__(self, other): return _la.matmul(other, self)

    def __pow__(self, exponent):
        if isinstance(exponent, (int, float)):
            return _ew.PowScalar.apply(self, exponent=exponent)
        return _ew.Pow.apply(self, exponent)

    def __rpow__(self, base):
        return _ew.Pow.apply(base, self)

    def __getitem__(self, index):
        return _sh.getitem(self, index)

    def __setitem__(self, index, value):
        _sh.setitem(self, index, value)

    # ------------------------------------------------------------------ elementwise
    def exp(self): return _ew.Exp.apply(self)
    def log(self): return _ew.Log.apply(self)
    def sqrt(self): return _ew.Sqrt.apply(self)
    def tanh(self): return _ew.Tanh.apply(self)
    def sigmoid(self): return _ew.Sigmoid.apply(self)
    def relu(self): return _ew.Relu.apply(self)
    def abs(self): return _ew.Abs.apply(self)
    def clip(self, low=None, high=None): return _ew.Clip.apply(self, low=low, high=high)
    def clamp(self, min=None, max=None): return _ew.Clip.apply(self, low=min, high=max)  # noqa: A002 (PyTorch's)
    def softmax(self, axis: int = -1): return _functional().softmax(self, axis)
    def log_softmax(self, axis: int = -1): return _functional().log_softmax(self, axis)
    def masked_fill(self, mask, value: float): return _functional().masked_fill(self, mask, value)
    def maximum(self, other): return _ew.Maximum.apply(self, other)
    def minimum(self, other): return _ew.Minimum.apply(self, other)
    def pow(self, exponent): return self ** exponent
    def sin(self): return _pw.Sin.apply(self)
    def cos(self): return _pw.Cos.apply(self)
    def log2(self): return _pw.Log2.apply(self)
    def log10(self): return _pw.Log10.apply(self)
    def floor(self): return _pw.Floor.apply(self)
    def ceil(self): return _pw.Ceil.apply(self)
    def round(self, decimals: int = 0): return _pw.Round.apply(self, decimals=decimals)
    def sign(self): return _pw.Sign.apply(self)
    def isnan(self): return _pw.isnan(self)
    def isinf(self): return _pw.isinf(self)
    def isfinite(self): return _pw.isfinite(self)
    def logaddexp(self, other): return _pw.LogAddExp.apply(self, other)
    def lerp(self, end, weight): return _pw.lerp(self, end, weight)
    def remainder(self, other): return self % other
    def floor_divide(self, other): return self // other

    # ------------------------------------------------------------------ reductions
    def sum(self, axis=None, keepdims: bool = False): return _rd.Sum.apply(self, axis=axis, keepdims=keepdims)
    def mean(self, axis=None, keepdims: bool = False): return _rd.Mean.apply(self, axis=axis, keepdims=keepdims)
    def prod(self, axis=None, keepdims: bool = False): return _rd.Prod.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims: bool = False):
        """The largest value over ``axis`` (values only; see ``argmax``); ``x.max(other_tensor)`` is elementwise."""
        if isinstance(axis, Tensor):
            return _ew.Maximum.apply(self, axis)
        return _rd.Max.apply(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims: bool = False):
        """The smallest value over ``axis`` (values only; see ``argmin``); ``x.min(other_tensor)`` is elementwise."""
        if isinstance(axis, Tensor):
            return _ew.Minimum.apply(self, axis)
        return _rd.Min.apply(self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, keepdims: bool = False, ddof: int = 0):
        return _rd.Var.apply(self, axis=axis, keepdims=keepdims, ddof=ddof)

    def std(self, axis=None, keepdims: bool = False, ddof: int = 0): return _rd.std(self, axis, keepdims, ddof)

    def logsumexp(self, axis=None, keepdims: bool = False):
        return _rd.LogSumExp.apply(self, axis=axis, keepdims=keepdims)

    def cumsum(self, axis: int): return _rd.Cumsum.apply(self, axis=axis)
    def argmax(self, axis=None, keepdims: bool = False): return _rd.argmax(self, axis, keepdims)
    def argmin(self, axis=None, keepdims: bool = False): return _rd.argmin(self, axis, keepdims)
    def any(self, axis=None, keepdims: bool = False): return _rd.any_true(self, axis, keepdims)
    def all(self, axis=None, keepdims: bool = False): return _rd.all_true(self, axis, keepdims)
    def sort(self, axis: int = -1, descending: bool = False): return _so.sort(self, axis, descending)
    def argsort(self, axis: int = -1, descending: bool = False): return _so.argsort(self, axis, descending)
    def topk(self, k: int, axis: int = -1, largest: bool = True): return _so.topk(self, k, axis, largest)

    # ------------------------------------------------------------------ shape
    def reshape(self, *shape): return _sh.reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
    def view(self, *shape): return self.reshape(*shape)
    def flatten(self, start_axis: int = 0, end_axis: int = -1): return _sh.flatten(self, start_axis, end_axis)
    def transpose(self, *axes): return _sh.transpose(self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else (axes or None))
    def permute(self, *axes): return self.transpose(*axes)
    def swapaxes(self, a: int, b: int): return _sh.swapaxes(self, a, b)
    def broadcast_to(self, shape): return _sh.broadcast_to(self, tuple(shape))
    def expand(self, *shape):
        """broadcast_to, where -1 keeps an axis' size (PyTorch's ``expand``)."""
        shape = tuple(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
        lead = len(shape) - self.ndim
        return _sh.broadcast_to(self, tuple(self.shape[i - lead] if s == -1 and i >= lead else s
                                            for i, s in enumerate(shape)))

    def dim(self) -> int: return self.ndim

    def zero_(self) -> "Tensor":
        """Fill with zeros in place (``p.grad.zero_()``), under the rules of ``x[...] = v``."""
        self[...] = 0
        return self

    def fill_(self, value) -> "Tensor":
        self[...] = value
        return self
    def squeeze(self, axis=None): return _sh.squeeze(self, axis)
    def unsqueeze(self, axis: int): return _sh.unsqueeze(self, axis)
    def split(self, sections, axis: int = 0): return _sh.split(self, sections, axis)
    def astype(self, dtype): return _sh.astype(self, dtype)
    def flip(self, axis): return _mv.flip(self, axis)
    def roll(self, shifts, axis=None): return _mv.roll(self, shifts, axis)
    def tile(self, reps): return _mv.tile(self, reps)
    def repeat(self, *reps): return _mv.tile(self, reps[0] if len(reps) == 1 and not isinstance(reps[0], int) else reps)
    def tril(self, diagonal: int = 0): return _mv.tril(self, diagonal)
    def triu(self, diagonal: int = 0): return _mv.triu(self, diagonal)
    def gather(self, axis: int, index): return _ix.gather(self, axis, index)
    def scatter(self, axis: int, index, src): return _ix.scatter(self, axis, index, src)
    def scatter_add(self, axis: int, index, src): return _ix.scatter_add(self, axis, index, src)

    @property
    def T(self): return _sh.transpose(self, None)

    def matmul(self, other): return _la.matmul(self, other)

    # PyTorch's casts (defined last: inside the class body these names would shadow the builtins)
    def float(self): return _sh.astype(self, np.float32)
    def double(self): return _sh.astype(self, np.float64)
    def long(self): return _sh.astype(self, np.int64)

    # ------------------------------------------------------------------ printing
    def __repr__(self) -> str:
        extra = ""
        if self.creator is not None:
            extra = f", creator={self.creator.name}"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        if self.device != "cpu":
            extra += f", device='{self.device}'"
        body = np.array2string(self.numpy(), precision=4, separator=", ", threshold=20, edgeitems=2,
                               prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{extra})"


for _name in ("sum", "mean", "prod", "max", "min", "var", "std", "logsumexp", "cumsum", "argmax", "argmin", "any",
              "all", "sort", "argsort", "topk", "squeeze", "unsqueeze", "flatten", "split", "flip", "roll", "gather",
              "scatter", "scatter_add", "softmax", "log_softmax"):  # x.sum(dim=1, keepdim=True) as in PyTorch, beside NumPy's names
    setattr(Tensor, _name, _axes.torch_keywords(getattr(Tensor, _name)))


def _functional():
    from . import functional  # F imports Tensor: resolved at call time
    return functional


def tensor(data, dtype=None, device: str | None = None, requires_grad: bool = False) -> Tensor:
    """Make a leaf Tensor. Python floats and float lists become float32; an ndarray keeps its dtype."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def as_tensor(x) -> Tensor:
    """x itself when it is a Tensor, else a new leaf made from it (no copy of an ndarray)."""
    return x if isinstance(x, Tensor) else Tensor(x)



from .ops import elementwise as _ew  # noqa: E402  (ops subclass Function, which imports Tensor)
from .ops import index as _ix  # noqa: E402
from .ops import linalg as _la  # noqa: E402
from .ops import movement as _mv  # noqa: E402
from .ops import pointwise as _pw  # noqa: E402
from .ops import reduce as _rd  # noqa: E402
from .ops import shape as _sh  # noqa: E402
from .ops import sort as _so  # noqa: E402
