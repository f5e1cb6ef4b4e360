"""A FAKE, CPU-only stand-in for the slice of CuPy that tinygrad_llm.distributed.nccl uses (tests only).

Arrays are NumPy arrays of a subclass with ``.data.ptr`` and ``.device.id``; a non-default CUDA stream is a worker
thread that runs queued work in order, and an Event recorded on it is ``done`` once the worker passed it. The fake
NCCL (``cupy.cuda.nccl``) runs each collective on the stream's thread over a TCP connection, reading and writing
the arrays through their raw pointers, as real NCCL kernels do. A peer that died leaves the collective hanging,
like real NCCL. Never put this directory on sys.path outside tests/mpi_scripts/fake_nccl_check.py.
"""
import numpy as _np

from . import cuda  # noqa: F401

FAKE = True


class _Mem:
    def __init__(self, ptr):
        self.ptr = ptr


class _Dev:
    def __init__(self, i):
        self.id = i


class ndarray(_np.ndarray):
    @property
    def data(self):
        return _Mem(self.ctypes.data)

    @property
    def device(self):
        return _Dev(cuda._current_device[0])

    def get(self):
        return _np.array(self).view(_np.ndarray)


def _wrap(a):
    return a.view(ndarray) if isinstance(a, _np.ndarray) else a


def asarray(a, dtype=None, copy=None):
    return _np.array(a, dtype=dtype).view(ndarray)       # always a copy: the fake has no aliasing to keep


array = asarray


def empty(shape, dtype=float):
    return _np.empty(shape, dtype).view(ndarray)


def zeros(shape, dtype=float):
    return _np.zeros(shape, dtype).view(ndarray)


def ones(shape, dtype=float):
    return _np.ones(shape, dtype).view(ndarray)


def full(shape, value, dtype=None):
    return _np.full(shape, value, dtype).view(ndarray)


def arange(*args, dtype=None):
    return _np.arange(*args, dtype=dtype).view(ndarray)


def zeros_like(a):
    return _np.zeros_like(a).view(ndarray)


def get_array_module(*args):
    import sys
    return sys.modules[__name__]


def __getattr__(name):
    attr = getattr(_np, name)
    if callable(attr) and not isinstance(attr, type):
        def f(*a, **k):
            return _wrap(attr(*a, **k))
        return f
    return attr
