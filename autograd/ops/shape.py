"""Shape ops: reshape, transpose, broadcast, sum_to, getitem, concatenate, stack, split, astype, device copies."""
from __future__ import annotations

import math

import numpy as np

from .. import backend, dtypes
from ..function import Function
from ..tensor import Tensor
from .axes import normalize_axis, normalize_permutation, torch_keywords


def _normalize_shape(shape):
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(s) for s in shape)


class Reshape(Function):
    """y = x.reshape(shape); dy/dx reshapes the gradient back."""
    rule = "d reshape(x)/dx: reshape the gradient back to x's shape"
    params = ("shape",)
    def forward(self, x):
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} elements) "
                             f"into {self.shape}") from None

    def backward(self, gy):
        return reshape(gy, self.inputs[0].shape)


def reshape(x: Tensor, shape) -> Tensor:
    shape = _normalize_shape(shape)
    if shape == x.shape:
        return x
    return Reshape.apply(x, shape=shape)


class Transpose(Function):
    """y = x.transpose(axes); the gradient is transposed by the inverse permutation."""
    rule = 'd transpose(x)/dx: transpose the gradient by the inverse permutation'
    params = ("axes",)
    def forward(self, x):
        try:
            return x.transpose(self.axes)
        except ValueError:
            raise ValueError(f"transpose: axes {self.axes} do not fit a tensor of shape {x.shape}") from None

    def backward(self, gy):
        axes = self.axes if self.axes is not None else tuple(reversed(range(gy.ndim)))
        inverse = tuple(int(i) for i in np.argsort(axes))
        return Transpose.apply(gy, axes=inverse)


def transpose(x: Tensor, axes=None) -> Tensor:
    """Permute the axes (reverse them when ``axes`` is None), as NumPy's ``transpose``."""
    if axes is not None:
        axes = normalize_permutation("transpose", axes, x.shape)
    return Transpose.apply(x, axes=axes)


def swapaxes(x: Tensor, a: int, b: int) -> Tensor:
    """Exchange axes ``a`` and ``b`` (PyTorch's ``transpose(a, b)``)."""
    a, b = normalize_axis("swapaxes", a, x.shape), normalize_axis("swapaxes", b, x.shape)
    if x.ndim == 0:
        return x
    axes = list(range(x.ndim))
    axes[a], axes[b] = axes[b], axes[a]
    return transpose(x, axes)


class BroadcastTo(Function):
    """y = broadcast_to(x, shape); the gradient sums over the broadcast axes."""
    rule = 'd broadcast(x)/dx: sum the gradient over the broadcast axes'
    params = ("shape",)
    def forward(self, x):
        xp = backend.xp_of(x)
        try:
            return xp.broadcast_to(x, self.shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {self.shape}") from None

    def backward(self, gy):
        return sum_to(gy, self.inputs[0].shape)


def broadcast_to(x: Tensor, shape) -> Tensor:
    shape = _normalize_shape(shape)
    if shape == x.shape:
        return x
    return BroadcastTo.apply(x, shape=shape)


def _sum_to_array(a, shape):
    """Sum array ``a`` down to ``shape`` (the reverse of NumPy broadcasting)."""
    lead = a.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and a.shape[i + lead] != 1)
    if axes:
        a = a.sum(axis=axes, keepdims=True)
    if lead:
        a = a.reshape(shape)
    return a


class SumTo(Function):
    """y = the sum of x down to ``shape`` (undoes broadcasting); the gradient broadcasts back."""
    rule = "d sum_to(x)/dx: broadcast the gradient back to x's shape"
    params = ("shape",)
    def forward(self, x):
        return _sum_to_array(x, self.shape)

    def backward(self, gy):
        return broadcast_to(gy, self.inputs[0].shape)


def sum_to(x: Tensor, shape) -> Tensor:
    """Reduce a broadcast gradient to an input's shape (identity when the shapes already match); ``shape`` must
    broadcast to ``x.shape``, else a clear error."""
    shape = _normalize_shape(shape)
    if x.shape == shape:
        return x
    if len(shape) > x.ndim or any(s != 1 and s != t for s, t in zip(shape[::-1], x.shape[::-1])):
        raise ValueError(f"sum_to: shape {shape} does not broadcast to the tensor's shape {x.shape}, so the tensor "
                         "cannot be summed down to it")
    return SumTo.apply(x, shape=shape)


@torch_keywords
def squeeze(x: Tensor, axis=None) -> Tensor:
    """Remove axes of size 1: all of them, or the given ones (an axis whose size is not 1 is kept, as PyTorch)."""
    if axis is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    axes = {normalize_axis("squeeze", a, x.shape) for a in axes}
    if x.ndim == 0:
        return x
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in axes or s != 1))


@torch_keywords
def unsqueeze(x: Tensor, axis: int) -> Tensor:
    """Insert an axis of size 1 at ``axis`` (in [-ndim - 1, ndim])."""
    axis = normalize_axis("unsqueeze", axis, x.shape, extra=1)
    shape = list(x.shape)
    shape.insert(axis, 1)
    return reshape(x, tuple(shape))


@torch_keywords
def flatten(x: Tensor, start_axis: int = 0, end_axis: int = -1) -> Tensor:
    """Merge axes ``start_axis`` .. ``end_axis`` (inclusive) into one, as PyTorch's ``flatten``; 0-d gives (1,)."""
    if x.ndim == 0:
        normalize_axis("flatten", start_axis, x.shape), normalize_axis("flatten", end_axis, x.shape)
        return reshape(x, (1,))
    start, end = normalize_axis("flatten", start_axis, x.shape), normalize_axis("flatten", end_axis, x.shape)
    if start > end:
        raise ValueError(f"flatten: start axis {start_axis} comes after end axis {end_axis} (shape {x.shape})")
    return reshape(x, x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:])


# ---------------------------------------------------------------------------------------------------- indexing
def _is_basic_index(index) -> bool:
    """True when ``index`` is only ints, slices, None and Ellipsis: no element is picked twice."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice, np.integer)) for p in parts)


def _normalize_index(index, shape):
    """Turn Tensors inside an index into arrays and reject float index arrays with a clear message."""
    parts = index if isinstance(index, tuple) else (index,)
    out = []
    for p in parts:
        if isinstance(p, Tensor):
            p = p.data
        if isinstance(p, list):
            p = np.asarray(p)
        if hasattr(p, "dtype") and hasattr(p, "ndim"):
            if p.dtype.kind not in "iub":
                raise IndexError(f"getitem: index arrays must be integer or boolean, got dtype {p.dtype} "
                                 f"(indexing a tensor of shape {shape})")
        elif isinstance(p, float):
            raise IndexError(f"getitem: index {p!r} is a float; use an int (tensor shape {shape})")
        out.append(p)
    return tuple(out) if isinstance(index, tuple) else out[0]


class GetItem(Function):
    """y = x[index] (slices, integer arrays, boolean masks); the gradient is scattered back, repeats added."""
    rule = 'd x[i]/dx: scatter the gradient into zeros at i (repeated indices add)'
    params = ("index",)
    def forward(self, x):
        try:
            return x[self.index]
        except IndexError as e:
            raise IndexError(f"getitem: index {self.index!r} does not fit a tensor of shape {x.shape}: {e}") from None

    def backward(self, gy):
        x = self.inputs[0]
        return ScatterAdd.apply(gy, index=self.index, shape=x.shape, basic=_is_basic_index(self.index))


class ScatterAdd(Function):
    """y = zeros(shape); y[index] += x (repeated indices add up). The backward of GetItem, and vice versa."""
    rule = 'd scatter_add(g)/dg: gather the gradient at the index'
    params = ("index", "shape", "basic")
    def forward(self, g):
        xp = backend.xp_of(g)
        out = xp.zeros(self.shape, dtype=g.dtype)
        if self.basic:
            out[self.index] = g
        else:  # unbuffered: repeated indices add up (NumPy's and CuPy's ufunc.at)
            xp.add.at(out, self.index, g)
        return out

    def backward(self, gy):
        return GetItem.apply(gy, index=self.index)


def getitem(x: Tensor, index) -> Tensor:
    return GetItem.apply(x, index=_normalize_index(index, x.shape))


class SetItem(Function):
    """y = a copy of x with y[index] = v (v broadcast to the indexed shape); dx = g with zeros at the index,
    dv = g[index] summed to v's shape."""
    rule = "d setitem(x, v)/dx = 1 outside the index, d/dv = the gradient at the index"
    params = ("index",)

    def forward(self, x, v):
        out = x.copy()
        try:
            out[self.index] = v
        except (IndexError, ValueError) as e:
            raise type(e)(f"setitem: cannot write a value of shape {v.shape} at {self.index!r} of a tensor of shape "
                          f"{x.shape}: {e}") from None
        return out

    def backward(self, gy):
        x, v = self.inputs
        gx = gv = None
        if self.needs_input_grad[0]:
            keep = backend.xp_of(gy.data).ones(gy.shape, dtype=gy.dtype)
            keep[self.index] = 0
            gx = gy * Tensor(keep)
        if self.needs_input_grad[1]:
            picked = GetItem.apply(gy, index=self.index)
            gv = sum_to(picked, v.shape) if picked.shape != v.shape else picked
        return gx, gv


def setitem(x: Tensor, index, value) -> None:
    """``x[index] = value`` with PyTorch's rules (see ``Tensor._inplace``): written into x's array when no graph
    is recorded; while recording, x becomes the output of a SetItem node (an error for a leaf requiring grad)."""
    from ..grad_mode import _GradMode
    index = _normalize_index(index, x.shape)
    recording = _GradMode.enabled and (x.requires_grad or (isinstance(value, Tensor) and value.requires_grad))
    if not recording:
        v = value.data if isinstance(value, Tensor) else value
        try:
            x.data[index] = v
        except (IndexError, ValueError, TypeError) as e:
            raise type(e)(f"setitem: cannot write {type(v).__name__} at {index!r} of a tensor of shape {x.shape}: "
                          f"{e}") from None
        from .. import amp
        amp.refresh_shadows(x)          # a parameter's low-precision copies follow its new values
        return
    if x.is_leaf and x.requires_grad:
        raise RuntimeError(f"x[...] = v: x is a leaf tensor that requires grad (shape {x.shape}) and cannot be "
                           "changed in place while a graph is recorded; write under `with ag.no_grad():`")
    before = Tensor._from_op(x.data, x.creator, x.out_index) if x.creator is not None else Tensor(x.data)
    v = value if isinstance(value, Tensor) else Tensor(backend.xp_of(x.data).asarray(value, dtype=x.dtype))
    after = SetItem.apply(before, v.astype(x.dtype) if v.dtype != x.dtype else v, index=index)
    x._data, x.creator, x.out_index, x.requires_grad = after.data, after.creator, after.out_index, True


# ---------------------------------------------------------------------------------------------------- joining
def _promoted(xs):
    """The arrays in their promoted dtype (``dtypes.result_type``: int64 and float32 join as float32, as PyTorch)."""
    if all(x.dtype == xs[0].dtype for x in xs):
        return xs
    dtype = dtypes.result_type(*xs)
    return [x.astype(dtype, copy=False) for x in xs]


class Concatenate(Function):
    """y = concatenate(xs, axis); each input's gradient is its slice of gy."""
    rule = 'd concat(xs)/dx_k = the slice of the gradient where x_k sits'
    params = ("axis",)
    def forward(self, *xs):
        xp = backend.xp_of(*xs)
        xs = _promoted(xs)
        try:
            return xp.concatenate(xs, axis=self.axis)
        except ValueError:
            raise ValueError(f"concatenate: shapes {[x.shape for x in xs]} do not match outside axis "
                             f"{self.axis}") from None

    def backward(self, gy):
        axis = self.axis % gy.ndim
        grads, start = [], 0
        for x in self.inputs:
            stop = start + x.shape[axis]
            index = (slice(None),) * axis + (slice(start, stop),)
            grads.append(GetItem.apply(gy, index=index))
            start = stop
        return tuple(grads)


def _joined(op: str, xs) -> list:
    xs = list(xs)
    if not xs:
        raise ValueError(f"{op}: needs at least one tensor, got an empty sequence")
    return xs


@torch_keywords
def concatenate(xs, axis: int = 0) -> Tensor:
    """Join tensors of one shape (outside ``axis``) along an existing ``axis``."""
    xs = _joined("concatenate", xs)
    shapes = [getattr(x, "shape", np.shape(x)) for x in xs]
    if len(set(len(s) for s in shapes)) != 1 or not shapes[0]:
        raise ValueError(f"concatenate: needs tensors with the same number of axes (at least one), got shapes {shapes}")
    axis = normalize_axis("concatenate", axis, shapes[0])
    return Concatenate.apply(*xs, axis=axis)


class Stack(Function):
    """y = stack(xs, axis); each input's gradient is gy at its position along ``axis``."""
    rule = 'd stack(xs)/dx_k = the gradient at position k along the axis'
    params = ("axis",)
    def forward(self, *xs):
        xp = backend.xp_of(*xs)
        xs = _promoted(xs)
        try:
            return xp.stack(xs, axis=self.axis)
        except ValueError:
            raise ValueError(f"stack: all inputs need one shape, got {[x.shape for x in xs]}") from None

    def backward(self, gy):
        axis = self.axis % gy.ndim
        return tuple(GetItem.apply(gy, index=(slice(None),) * axis + (i,)) for i in range(len(self.inputs)))


@torch_keywords
def stack(xs, axis: int = 0) -> Tensor:
    """Join tensors of one shape along a new ``axis`` (in [-ndim - 1, ndim])."""
    xs = _joined("stack", xs)
    shapes = [getattr(x, "shape", np.shape(x)) for x in xs]
    axis = normalize_axis("stack", axis, shapes[0], extra=1)
    if len(set(shapes)) != 1:
        raise ValueError(f"stack: all inputs need one shape, got {shapes}")
    return Stack.apply(*xs, axis=axis)


class Split(Function):
    """ys = split(x, sections, axis) with NumPy's meaning of ``sections`` (a count, or split points)."""
    rule = "d split(x)/dx = concatenate the parts' gradients"
    params = ("sections", "axis")
    def forward(self, x):
        xp = backend.xp_of(x)
        try:
            return tuple(xp.split(x, self.sections, axis=self.axis))
        except ValueError:
            raise ValueError(f"split: axis {self.axis} of shape {x.shape} cannot be split into {self.sections} "
                             "equal parts") from None

    def backward(self, *gys):
        return concatenate(gys, axis=self.axis)


@torch_keywords
def split(x: Tensor, sections, axis: int = 0) -> tuple[Tensor, ...]:
    """NumPy's ``split``: ``sections`` is a count of equal parts or a list of split points along ``axis``."""
    if x.ndim == 0:
        raise ValueError("split: cannot split a 0-d tensor")
    axis = normalize_axis("split", axis, x.shape)
    out = Split.apply(x, sections=sections, axis=axis)
    return out if isinstance(out, tuple) else (out,)


# ---------------------------------------------------------------------------------------------------- casts, moves
class Copy(Function):
    """y = a copy of x in new memory; dy/dx = 1."""
    rule = "d copy(x)/dx = 1"

    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        return gy


class Astype(Function):
    """y = x.astype(dtype); the gradient is cast back to x's dtype."""
    rule = "d astype(x)/dx = 1  (gradient cast back to x's dtype)"
    params = ("dtype",)
    def forward(self, x):
        return x.astype(self.dtype)

    def backward(self, gy):
        return astype(gy, self.inputs[0].dtype)


def astype(x: Tensor, dtype) -> Tensor:
    """x cast to ``dtype``; differentiable to float dtypes, recording nothing to integer or bool ones."""
    try:
        dtype = dtypes.as_dtype(dtype)
    except TypeError as e:
        raise TypeError(f"astype: {dtype!r} is not a dtype ({e})") from None
    if x.dtype == dtype:
        return x
    if not dtypes.is_float(dtype) and x.requires_grad:
        from ..grad_mode import no_grad
        with no_grad():
            return Astype.apply(x, dtype=dtype)
    return Astype.apply(x, dtype=dtype)


class ToDevice(Function):
    """y = x copied to ``device``; the gradient is copied back (pipeline stages use this between GPUs)."""
    rule = "d to(x)/dx = 1  (gradient copied back to x's device)"
    params = ("device",)
    def forward(self, x):
        return backend.to_device(x, self.device)

    def backward(self, gy):
        return gy.to(self.inputs[0].device)
