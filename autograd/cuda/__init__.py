"""CUDA kernels behind the fused ops (CuPy), each registered by name in ``registry.py``.

    from autograd.cuda import get_kernel, set_tf32, tf32_enabled
    k = get_kernel("layer_norm_forward")     # a callable, or None when CuPy / a GPU is missing
    y, mean, rstd = k(x, w, b, 1e-5)         # x a cupy array

Names and signatures are the contract in ``docs/KERNELS.md``; the modules below register them explicitly
(``register("gelu_forward", gelu_forward)`` at the end of each file). Importing them does not import CuPy: their
CUDA code is compiled (NVRTC) on first use.

Switches (environment variables, read at first use):
- ``TINYGRAD_LLM_TF32=0``: float32 matrix products in full float32 instead of TF32 (TF32 is the default on GPUs of
  compute capability >= 8.0); the same as ``set_tf32(False)``.
- ``TINYGRAD_LLM_CUDA_KERNELS=0``: ``get_kernel`` returns None for every name, so the fused ops' own array code runs
  on CuPy (to compare, or to rule the kernels out when hunting a bug).
- ``TINYGRAD_LLM_FLASH=0``: attention uses the GEMM + fused-softmax version instead of the flash kernel.
"""
from __future__ import annotations

from . import adamw, attention, elementwise, matmul, norms, philox, softmax  # noqa: F401  (each registers its kernels)
from .graph import CUDAGraph, GraphCaptureError, graph, is_capturing
from .matmul import set_tf32, tf32_enabled
from .registry import available, get_kernel, kernel_for, kernel_names, register

__all__ = ["get_kernel", "kernel_for", "register", "set_tf32", "tf32_enabled", "available", "KERNEL_NAMES",
           "CUDAGraph", "GraphCaptureError", "graph", "is_capturing"]

KERNEL_NAMES = kernel_names()
