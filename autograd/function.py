"""Function: one differentiable operation, forward on arrays and backward on Tensors.

A subclass writes ``forward(self, *arrays)`` with the array module of its inputs (numpy or cupy, the same code for
both) and ``backward(self, *grad_outputs)`` that receives and returns Tensors built from differentiable ops. The
engine runs backward under ``no_grad`` unless ``create_graph=True``, so every op whose backward is written in ops is
differentiable twice for free. ``Fn.apply(*inputs, **params)`` builds ``Fn(**params)``, runs forward and, when a
graph is being recorded, links the outputs to it; the op's parameters are declared in its ``params`` tuple.

What a Function keeps alive: its input Tensors (to walk the graph), what forward stored on ``self`` for backward,
and its outputs' arrays only when the class sets ``save_outputs = True``. All of it is released after backward unless
``retain_graph=True``.
"""
from __future__ import annotations

import numpy as np

from . import backend, dtypes
from .grad_mode import _GradMode


class Function:
    """Base class of every op. See the module docstring for the contract."""

    #: forward's outputs are needed in backward (exp, tanh, sigmoid ...): they are kept as arrays and given back by
    #: ``self.output(i)`` as Tensors that stand for the output node, so double backward still flows through them.
    save_outputs = False
    #: ``False`` for an op whose backward is array code only (no Tensor-op form, no composed reference to
    #: differentiate): a double backward through it is then a clear error naming the op.
    differentiable_twice = True

    #: the names of the op's parameters: the keyword arguments of ``apply`` (``Sum.apply(x, axis=1)``), set on the
    #: instance as attributes. A class attribute of the same name is the default; without one the parameter must
    #: be given. An unknown or missing parameter is a TypeError naming the op.
    params: tuple[str, ...] = ()

    # instance attributes set by apply(): inputs, _out_meta, _out_arrays, _released, _needs_input_grad
    def __init__(self, **params):
        cls = type(self)
        unknown = [k for k in params if k not in cls.params]
        if unknown:
            takes = ", ".join(cls.params) if cls.params else "no parameters"
            raise TypeError(f"{cls.__name__}: unknown parameter(s) {', '.join(unknown)} (it takes {takes})")
        for k in cls.params:
            if k in params:
                setattr(self, k, params[k])
            elif not hasattr(cls, k):
                raise TypeError(f"{cls.__name__}: missing parameter {k!r} (it takes {', '.join(cls.params)})")

    def forward(self, *arrays):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward is not written")

    def backward(self, *grad_outputs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.backward is not written")

    # ------------------------------------------------------------------ graph building
    @classmethod
    def apply(cls, *inputs, **params):
        """Run the op on ``inputs`` (Tensors; Python scalars and arrays are wrapped) and return its output Tensor(s)."""
        fn = cls(**params)
        tensors = _as_tensors(inputs, cls.__name__)
        arrays = [t.data for t in tensors]
        if _check_same_device(arrays, cls.__name__) >= 0:
            with backend.device_scope(arrays[0]):  # CuPy runs kernels on the current GPU only
                out = fn.forward(*arrays)
        else:
            out = fn.forward(*arrays)
        if isinstance(out, np.generic):  # NumPy gives scalars for 0-d results (x.sum()): keep .data an ndarray
            out = np.asarray(out)
        multi = isinstance(out, tuple)
        outs = out if multi else (out,)

        record = _GradMode.enabled and any(t.requires_grad for t in tensors)
        if record:
            fn.inputs = tensors
            fn._needs_input_grad = tuple(t.requires_grad for t in tensors)
            fn._out_meta = tuple((o.shape, o.dtype) for o in outs)
            fn._out_arrays = outs if cls.save_outputs else None
            fn._released = False
            results = tuple(Tensor._from_op(o, fn, i) for i, o in enumerate(outs))
        else:
            results = tuple(Tensor(o) for o in outs)
        return results if multi else results[0]

    # ------------------------------------------------------------------ what backward uses
    @property
    def needs_input_grad(self) -> tuple[bool, ...]:
        """Which inputs want a gradient; backward may return None for the others and skip their work."""
        return self._needs_input_grad

    def output(self, i: int = 0) -> "Tensor":
        """The i-th output as a Tensor attached to this node (needs ``save_outputs = True``)."""
        return Tensor._from_op(self._out_arrays[i], self, i)

    def release(self) -> None:
        """Drop everything kept for backward; a later backward through this node raises a clear error."""
        self.__dict__.clear()
        self._released = True

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{self.name}>"


def _as_tensors(inputs, op_name):
    """Wrap non-Tensor inputs as Tensors. A Python scalar becomes a 0-d array of the dtype the op computes in
    (``dtypes.result_type``: ``int_tensor + 1`` stays integer, ``int_tensor + 0.5`` is float32) on the device of
    the Tensor inputs; arrays and lists become Tensors of their own dtype."""
    out, scalars = [], []
    for x in inputs:
        if isinstance(x, Tensor):
            out.append(x)
        elif x is None:
            raise TypeError(f"{op_name}: got None where a Tensor was expected")
        elif dtypes.is_scalar(x):
            scalars.append(len(out))
            out.append(x)
        else:
            try:
                out.append(Tensor(x))
            except TypeError as e:
                raise TypeError(f"{op_name}: {e}") from None
    if scalars:
        like = next((t for t in out if isinstance(t, Tensor)), None)
        if like is None:
            for i in scalars:
                out[i] = Tensor(out[i])
        else:
            dtype = dtypes.result_type(*out)
            xp = backend.xp_of(like.data)
            with backend.device_scope(like.data):
                for i in scalars:
                    out[i] = Tensor(xp.asarray(out[i], dtype=dtype))
    return out


def _check_same_device(arrays, op_name) -> int:
    """The GPU index all inputs live on (-1: CPU); a clear error when they are on different devices."""
    first = None
    for a in arrays:
        d = -1 if type(a) is np.ndarray else backend.gpu_index(a)
        if first is None:
            first = d
        elif d != first:
            devices = ", ".join(backend.device_of(x) for x in arrays)
            raise RuntimeError(
                f"{op_name}: inputs are on different devices ({devices}); move them to one device with .to(device)"
            )
    return -1 if first is None else first


from .tensor import Tensor  # noqa: E402  (Tensor's methods call ops, which subclass Function)
