"""The table of CUDA kernels by name: each kernel module calls ``register(name, fn)`` for what it provides.

The fused ops ask ``kernel_for(name, array)``: the function registered under ``name`` when ``array`` is a CuPy array
and the kernels are usable, else None (then the op's own array code runs). Registration is explicit, so
``grep 'register("layer_norm_forward"'`` finds the kernel behind a name.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

_KERNELS: dict[str, Callable] = {}
_usable: bool | None = None


def register(name: str, fn: Callable) -> Callable:
    """Make ``fn`` the CUDA kernel called ``name`` (a second registration of one name is a programming error)."""
    if name in _KERNELS and _KERNELS[name] is not fn:
        raise ValueError(f"CUDA kernel {name!r} is registered twice")
    _KERNELS[name] = fn
    return fn


def available() -> bool:
    """True when CuPy imports and sees a GPU (and the kernels are not switched off by TINYGRAD_LLM_CUDA_KERNELS=0)."""
    global _usable
    if _usable is None:
        if os.environ.get("TINYGRAD_LLM_CUDA_KERNELS", "").strip().lower() in ("0", "false", "off", "no"):
            _usable = False
        else:
            from ..backend import cuda_available
            _usable = cuda_available()
    return _usable


def get_kernel(name: str) -> Callable | None:
    """The CUDA kernel registered under ``name``, or None (no CuPy/GPU, switched off, or unknown name)."""
    fn = _KERNELS.get(name)
    return fn if fn is not None and available() else None


def kernel_for(name: str, main) -> Callable | None:
    """``get_kernel(name)`` when ``main`` is a CuPy array, else None; costs one type check for a NumPy array."""
    if type(main) is np.ndarray:
        return None
    return get_kernel(name)


def kernel_names() -> tuple[str, ...]:
    return tuple(_KERNELS)
