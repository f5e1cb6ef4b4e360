"""NumPy/CuPy selection, devices and transfers.

The engine never branches per backend inside an op: it asks ``xp_of(array)`` for the array module of its inputs
(``numpy`` or ``cupy``) and calls the same functions on it. CuPy is imported lazily, the first time a CUDA device
is asked for or a CuPy array is seen, so a machine without it works.

Devices are strings: ``'cpu'``, ``'cuda'`` (the current GPU) or ``'cuda:N'``.
"""
from __future__ import annotations

import contextlib

import numpy as np

_cupy = None          # the cupy module once imported
_cupy_tried = False   # whether the import was attempted (it is attempted once)


def cupy_module():
    """Return the ``cupy`` module, or None when CuPy (or a GPU) is not available."""
    global _cupy, _cupy_tried
    if not _cupy_tried:
        _cupy_tried = True
        try:
            import cupy  # noqa: F401  (optional dependency)
            cupy.cuda.runtime.getDeviceCount()
            _cupy = cupy
        except Exception:  # ImportError, or CUDA driver errors on a machine without a GPU
            _cupy = None
    return _cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    cp = cupy_module()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def is_cupy_array(a) -> bool:
    """True for a ``cupy.ndarray``; CuPy is imported only when such an array is first seen."""
    if _cupy is None and (not type(a).__module__.startswith("cupy") or cupy_module() is None):
        return False
    return isinstance(a, _cupy.ndarray)


def xp_of(*arrays):
    """The array module (numpy or cupy) for these arrays: cupy if any of them lives on a GPU."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def device_of(a) -> str:
    """'cpu' for NumPy arrays (and scalars), 'cuda:N' for a CuPy array on GPU N."""
    if is_cupy_array(a):
        return f"cuda:{a.device.id}"
    return "cpu"


def parse_device(device) -> tuple[str, int | None]:
    """Normalise a device spec to ('cpu', None) or ('cuda', index). Accepts 'cpu', 'cuda', 'cuda:1', 'gpu'."""
    if device is None:
        return "cpu", None
    if not isinstance(device, str):
        raise TypeError(f"device must be a string like 'cpu' or 'cuda:0', got {device!r}")
    name = device.strip().lower()
    if name == "cpu":
        return "cpu", None
    if name in ("cuda", "gpu"):
        return "cuda", None
    if name.startswith("cuda:"):
        try:
            return "cuda", int(name[5:])
        except ValueError:
            pass
    raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def canonical_device(device) -> str:
    """'cpu' or 'cuda:N' with N filled in from CuPy's current device when omitted."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return "cpu"
    cp = _require_cupy(device)
    if index is None:
        index = cp.cuda.Device().id
    return f"cuda:{index}"


def get_xp(device):
    """The array module that holds arrays on ``device``."""
    kind, _ = parse_device(device)
    return np if kind == "cpu" else _require_cupy(device)


def _require_cupy(device):
    cp = cupy_module()
    if cp is None:
        raise RuntimeError(
            f"device {device!r} needs CuPy and an NVIDIA GPU, but CuPy could not be imported or sees no GPU; "
            "install the 'gpu' extra (pip install 'tinygrad-llm[gpu]') on a machine with CUDA, or use device='cpu'"
        )
    return cp


def to_device(a, device):
    """Copy array ``a`` to ``device`` (returns ``a`` itself when it is already there)."""
    kind, index = parse_device(device)
    if kind == "cpu":
        if is_cupy_array(a):
            return a.get()
        return np.asarray(a)
    cp = _require_cupy(device)
    if index is None:
        index = cp.cuda.Device().id
    if not isinstance(a, cp.ndarray):
        with cp.cuda.Device(index):
            return cp.asarray(a)
    src = a.device.id
    if src == index:
        return a
    # GPU to GPU. CuPy copies on the destination's current stream only, so order the copy against both GPUs'
    # streams with events (as PyTorch does): it must not read `a` before the source GPU finished writing it, and
    # the source must not reuse `a`'s memory before the copy has read it.
    with cp.cuda.Device(src):
        a = cp.ascontiguousarray(a)
        ready = cp.cuda.Event(disable_timing=True)
        ready.record(cp.cuda.get_current_stream())
    with cp.cuda.Device(index):
        cp.cuda.get_current_stream().wait_event(ready)
        out = cp.empty(a.shape, dtype=a.dtype)
        out.data.copy_from_device_async(a.data, a.nbytes)
        done = cp.cuda.Event(disable_timing=True)
        done.record(cp.cuda.get_current_stream())
    with cp.cuda.Device(src):
        cp.cuda.get_current_stream().wait_event(done)
    return out


def gpu_index(a) -> int:
    """The GPU index holding array ``a``, or -1 for a NumPy array (cheap: used on every op)."""
    if type(a) is np.ndarray or not is_cupy_array(a):
        return -1
    return a.device.id


def device_scope(a_or_device):
    """A context that makes the GPU of this array (or device string) CuPy's current device; a no-op on the CPU.

    CuPy launches kernels and allocates on the current device only, so ops on arrays of a second GPU (pipeline
    stages) must run inside this."""
    if isinstance(a_or_device, str):
        kind, index = parse_device(a_or_device)
        if kind == "cpu":
            return contextlib.nullcontext()
        cp = _require_cupy(a_or_device)
        return cp.cuda.Device(cp.cuda.Device().id if index is None else index)
    index = gpu_index(a_or_device)
    if index < 0 or index == _cupy.cuda.runtime.getDevice():
        return contextlib.nullcontext()
    return _cupy.cuda.Device(index)


def to_numpy(a) -> np.ndarray:
    """A NumPy copy (or view) of any array: CuPy arrays are copied to the host."""
    if is_cupy_array(a):
        return a.get()
    return np.asarray(a)


def acc_dtype(dtype):
    """The dtype sums and statistics accumulate in: float64 for float64, else float32 (float16 sums overflow)."""
    return np.float64 if dtype == np.float64 else np.float32


def default_float_dtype():
    """The dtype that Python floats and lists become."""
    return np.float32
