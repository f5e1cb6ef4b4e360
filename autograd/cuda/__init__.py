"""CUDA kernels behind the fused ops (CuPy): a lazy registry that ``autograd/ops/nn_kernels.py`` asks by name.

    from autograd.cuda import get_kernel, set_tf32, tf32_enabled
    k = get_kernel("layer_norm_forward")     # a callable, or None when CuPy / a GPU is missing
    y, mean, rstd = k(x, w, b, 1e-5)         # x a cupy array

Names and signatures are the contract in ``docs/KERNELS.md``: gelu_forward/backward, bias_gelu_forward/backward,
layer_norm_forward/backward, rms_norm_forward/backward, softmax_forward/backward, cross_entropy_forward/backward,
attention_forward/backward, matmul, adamw_step.

Nothing here imports CuPy at import time: the kernel modules are imported on the first ``get_kernel`` call and
compile their CUDA code (NVRTC) on first use.

Switches (environment variables, read at first use):
- ``TINYGRAD_LLM_TF32=0``: float32 matrix products in full float32 instead of TF32 (TF32 is the default on GPUs of
  compute capability >= 8.0); the same as ``set_tf32(False)``.
- ``TINYGRAD_LLM_CUDA_KERNELS=0``: ``get_kernel`` returns None for every name, so the xp-generic CuPy code runs
  (to compare, or to rule the kernels out when hunting a bug).
- ``TINYGRAD_LLM_FLASH=0``: attention uses the GEMM + fused-softmax version instead of the flash kernel.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable

from .matmul import set_tf32, tf32_enabled

__all__ = ["get_kernel", "set_tf32", "tf32_enabled", "available", "KERNEL_NAMES"]

# kernel name -> module (inside autograd.cuda) that defines a function of that name
_MODULE_OF = {
    "gelu_forward": "elementwise", "gelu_backward": "elementwise",
    "bias_gelu_forward": "elementwise", "bias_gelu_backward": "elementwise",
    "layer_norm_forward": "norms", "layer_norm_backward": "norms",
    "rms_norm_forward": "norms", "rms_norm_backward": "norms",
    "softmax_forward": "softmax", "softmax_backward": "softmax",
    "cross_entropy_forward": "softmax", "cross_entropy_backward": "softmax",
    "attention_forward": "attention", "attention_backward": "attention",
    "matmul": "matmul", "colsum": "matmul",
    "adamw_step": "adamw", "scale_and_check": "adamw",
}
KERNEL_NAMES = tuple(_MODULE_OF)

_registry: dict[str, Callable] = {}
_available: bool | None = None


def available() -> bool:
    """True when CuPy imports and sees a GPU (and the kernels are not switched off by TINYGRAD_LLM_CUDA_KERNELS=0)."""
    global _available
    if _available is None:
        if os.environ.get("TINYGRAD_LLM_CUDA_KERNELS", "").strip().lower() in ("0", "false", "off", "no"):
            _available = False
        else:
            from ..backend import cuda_available
            _available = cuda_available()
    return _available


def get_kernel(name: str) -> Callable | None:
    """The CUDA implementation registered under ``name``, or None (no CuPy/GPU, switched off, or unknown name)."""
    fn = _registry.get(name)
    if fn is not None:
        return fn
    mod = _MODULE_OF.get(name)
    if mod is None or not available():
        return None
    fn = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    _registry[name] = fn
    return fn
