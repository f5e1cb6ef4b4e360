"""cuBLAS matrix products for CuPy arrays: 2-D, batched (strided-batched GEMM), with TF32 / float16 / bfloat16 tensor
cores.

Why not ``cupy.matmul``: for more than two dimensions CuPy 14 upcasts float16 to float32 and ignores TF32.

Row-major trick: cuBLAS is column-major, and a row-major (M, N) matrix read column-major is its transpose, so
C = A @ B is computed as C^T = B^T A^T with no copy. A matrix whose last two axes are a swapped view of a contiguous
one (what ``swapaxes`` gives in attention and in MatMul's backward) is passed with the transpose flag, not copied.
Leading (batch) axes that can be described by one stride (stride 0 for a broadcast operand) go to
``cublasGemmStridedBatchedEx``; a batched A times a 2-D B with A contiguous is one big 2-D GEMM.

Compute types: float64 -> CUBLAS_COMPUTE_64F; float32 -> CUBLAS_COMPUTE_32F_FAST_TF32 when TF32 is enabled, else
CUBLAS_COMPUTE_32F; float16 or bfloat16 (CUDA_R_16BF) in and out -> CUBLAS_COMPUTE_32F (float32 accumulation on tensor
cores), or float32 out (``out_dtype``).

Every GEMM goes through ``cublas.py`` (our ctypes binding to CuPy's libcublas, with a preallocated workspace), so
these products can be recorded into a CUDA graph (``graph.py``); CuPy's own cuBLAS wrappers refuse stream capture.

TF32 switch: on by default on GPUs of compute capability >= 8.0 (Ampere, Hopper); ``set_tf32(False)`` or the
environment variable ``TINYGRAD_LLM_TF32=0`` (read at first use) turns it off, for full float32 products.
"""
from __future__ import annotations

import os

import numpy as np

from .. import dtypes as _dtypes
from . import cublas as _cb
from . import cublaslt as _cublaslt
from ._common import require_cupy
from .cublas import COMPUTE_32F as _COMPUTE_32F, COMPUTE_32F_FAST_TF32 as _COMPUTE_32F_FAST_TF32
from .cublas import COMPUTE_64F as _COMPUTE_64F, OP_N as _OP_N, OP_T as _OP_T
from .cublas import R_16BF as _R_16BF, R_16F as _R_16F, R_32F as _R_32F, R_64F as _R_64F
from .registry import register

_tf32: bool | None = None   # None: not decided yet (decided on first use from the device and the env var)


def set_tf32(enabled: bool) -> None:
    """Use TF32 tensor cores for float32 matrix products (True) or full float32 (False)."""
    global _tf32
    _tf32 = bool(enabled)


def tf32_enabled() -> bool:
    """Whether float32 products use TF32. Default: True on compute capability >= 8.0, unless TINYGRAD_LLM_TF32=0."""
    global _tf32
    if _tf32 is None:
        env = os.environ.get("TINYGRAD_LLM_TF32", "").strip().lower()
        if env in ("0", "false", "off", "no"):
            _tf32 = False
        else:
            try:
                cp = require_cupy()
                _tf32 = int(cp.cuda.Device().compute_capability) >= 80
            except Exception:
                _tf32 = False
    return _tf32


def _layout(x):
    """(op, ld) describing the last two axes of x for cuBLAS (see the module doc), or None when not possible.

    x (..., r, c) row-major with row stride ld >= c -> (OP_N, ld); a swapped view, column stride ld >= r -> (OP_T, ld).
    """
    e = x.itemsize
    r, c = x.shape[-2], x.shape[-1]
    s0, s1 = x.strides[-2], x.strides[-1]
    if (c == 1 or s1 == e) and (r == 1 or (s0 > 0 and s0 % e == 0 and s0 // e >= c)):
        return _OP_N, (s0 // e if r > 1 else c)
    if (r == 1 or s0 == e) and (c == 1 or (s1 > 0 and s1 % e == 0 and s1 // e >= r)):
        return _OP_T, (s1 // e if c > 1 else r)
    return None


def _batch_stride(x, nbatch_dims: int):
    """One element stride that walks all leading axes of x in order (0 when broadcast), or None."""
    dims = [(n, s) for n, s in zip(x.shape[:nbatch_dims], x.strides[:nbatch_dims]) if n != 1]
    if not dims:
        return 0
    for (n0, s0), (n1, s1) in zip(dims[:-1], dims[1:]):
        if s0 != s1 * n1:
            return None
    s = dims[-1][1]
    if s < 0 or s % x.itemsize:
        return None
    return s // x.itemsize


def _prepare(x, batch_shape):
    """Broadcast x to batch_shape + its matrix shape and describe it: (array, op, ld, batch_stride).

    Copies (C-contiguous) only when no single-stride description exists."""
    cp = require_cupy()
    nb = len(batch_shape)
    for attempt in range(3):
        xb = cp.broadcast_to(x, tuple(batch_shape) + x.shape[-2:]) if x.shape[:-2] != tuple(batch_shape) else x
        lay = _layout(xb)
        bs = _batch_stride(xb, nb) if lay is not None else None
        if lay is not None and bs is not None:
            return xb, lay[0], lay[1], bs
        # first fall back to a contiguous operand (broadcast later), then to a materialised broadcast
        x = cp.ascontiguousarray(x) if attempt == 0 else cp.ascontiguousarray(xb)
    raise RuntimeError(f"matmul: could not lay out operand of shape {x.shape}")  # unreachable


def _types(dtype):
    """(cuda data type, compute type, alpha/beta numpy dtype)."""
    if dtype == np.float32:
        return _R_32F, (_COMPUTE_32F_FAST_TF32 if tf32_enabled() else _COMPUTE_32F), np.float32
    if dtype == np.float64:
        return _R_64F, _COMPUTE_64F, np.float64
    return _R_OF[np.dtype(dtype)], _COMPUTE_32F, np.float32   # float16, bfloat16: float32 accumulation


def matmul_accumulate(a, b, out) -> None:
    """out += a @ b for 2-D CuPy arrays in one GEMM (beta = 1): a and b of one float dtype, out C-contiguous in that
    dtype or float32 (for 16-bit operands). Accumulating a weight gradient over chunks needs no temporary."""
    cp = require_cupy()
    M, K = a.shape
    N = b.shape[1]
    if b.shape[0] != K or out.shape != (M, N) or a.dtype != b.dtype or a.dtype not in _R_OF \
            or not out.flags.c_contiguous:
        raise ValueError(f"matmul_accumulate: a {a.shape} {a.dtype} @ b {b.shape} {b.dtype} into out {out.shape} "
                         f"{out.dtype} (need 2-D operands of one float dtype and a C-contiguous (M, N) out)")
    dt = _R_OF[a.dtype]
    if out.dtype == a.dtype:
        dc = dt
    elif out.dtype == np.float32 and a.dtype in _HALF:
        dc = _R_32F
    else:
        raise ValueError(f"matmul_accumulate: out dtype {out.dtype} for {a.dtype} operands")
    if M == 0 or N == 0 or K == 0:
        return
    la, lb = _layout(a), _layout(b)
    if la is None:
        a, la = cp.ascontiguousarray(a), (_OP_N, K)
    if lb is None:
        b, lb = cp.ascontiguousarray(b), (_OP_N, N)
    _, ct, st = _types(a.dtype)
    _cb.gemm_ex(lb[0], la[0], N, M, K, b.data.ptr, dt, lb[1], a.data.ptr, dt, la[1], out.data.ptr, dc, N, ct, st,
                accumulate=True)


def matmul(a, b, out=None, out_dtype=None):
    """a @ b for CuPy arrays (..., M, K) @ (..., K, N) -> (..., M, N), batch axes broadcast.

    float16/bfloat16/float32/float64 go through cuBLAS (TF32 for float32 when enabled); other dtypes and 1-D operands
    go to ``cupy.matmul``. Mixed float dtypes are promoted first. ``out_dtype=float32`` with float16 or bfloat16
    operands writes the float32 accumulator straight out (cuBLAS C type 32F: no 16-bit rounding, no separate cast)."""
    cp = require_cupy()
    if out is None and a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype and a.dtype in _R_OF:
        r = _matmul_2d(cp, a, b, out_dtype)     # the common case (Linear), with little Python per call
        if r is not None:
            return r
    if out_dtype is not None and np.dtype(out_dtype) != _dtypes.promote_types(a.dtype, b.dtype):
        if not (np.dtype(out_dtype) == np.float32 and a.dtype in _HALF and b.dtype == a.dtype
                and a.ndim >= 2 and b.ndim >= 2):
            return matmul(a, b).astype(out_dtype)
        return _matmul(a, b, out, np.dtype(np.float32))
    return _matmul(a, b, out, None)


_R_OF = {np.dtype(np.float16): _R_16F, np.dtype(np.float32): _R_32F, np.dtype(np.float64): _R_64F}
_HALF = {np.dtype(np.float16)}   # the 16-bit floats: float32 accumulation, and float32 output on request
if _dtypes.bfloat16 is not None:
    _R_OF[_dtypes.bfloat16] = _R_16BF
    _HALF.add(_dtypes.bfloat16)


def _matmul_2d(cp, a, b, out_dtype):
    """2-D a @ b of one float dtype straight to gemmEx; None when a layout or size needs the general path."""
    M, K = a.shape
    K2, N = b.shape
    if K != K2 or M == 0 or N == 0 or K == 0:
        return None
    la, lb = _layout(a), _layout(b)
    if la is None or lb is None:
        return None
    dt = _R_OF[a.dtype]
    if out_dtype is None or out_dtype == a.dtype:
        odt, dc = a.dtype, dt
    elif out_dtype == np.float32 and a.dtype in _HALF:
        odt, dc = np.dtype(np.float32), _R_32F
    else:
        return None
    _, ct, st = _types(a.dtype)
    out = cp.empty((M, N), odt)
    _cb.gemm_ex(lb[0], la[0], N, M, K, b.data.ptr, dt, lb[1], a.data.ptr, dt, la[1], out.data.ptr, dc, N, ct, st)
    return out


def _matmul(a, b, out, c_dtype):
    """matmul's body; c_dtype: float32 output for 16-bit float operands, or None (the operands' dtype)."""
    cp = require_cupy()
    if a.ndim < 2 or b.ndim < 2:
        return cp.matmul(a, b)
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not fit (need (..., M, K) @ (..., K, N))")
    dtype = _dtypes.promote_types(a.dtype, b.dtype)
    if dtype not in _R_OF:
        return cp.matmul(a, b)
    if a.dtype != dtype:
        a = a.astype(dtype)
    if b.dtype != dtype:
        b = b.astype(dtype)
    M, K = a.shape[-2:]
    N = b.shape[-1]
    batch_shape = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    nbatch = int(np.prod(batch_shape)) if batch_shape else 1
    if out is None:
        out = cp.empty(batch_shape + (M, N), c_dtype or dtype)
    if out.size == 0:
        return out
    if K == 0:
        out.fill(0)
        return out
    dt, ct, st = _types(dtype)
    dc = _R_32F if c_dtype is not None else dt

    # batched A times 2-D B, A row-major contiguous: one GEMM with M' = batch * M
    if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous:
        Mt = nbatch * M
        opb, ldb = _layout(b) or (None, None)
        if opb is None:
            b = cp.ascontiguousarray(b)
            opb, ldb = _OP_N, N
        _cb.gemm_ex(opb, _OP_N, N, Mt, K, b.data.ptr, dt, ldb, a.data.ptr, dt, K, out.data.ptr, dc, N, ct, st)
        return out

    a2, opa, lda, sa = _prepare(a, batch_shape)
    b2, opb, ldb, sb = _prepare(b, batch_shape)
    if nbatch == 1:
        _cb.gemm_ex(opb, opa, N, M, K, b2.data.ptr, dt, ldb, a2.data.ptr, dt, lda, out.data.ptr, dc, N, ct, st)
    else:
        _cb.gemm_strided_batched_ex(opb, opa, N, M, K, b2.data.ptr, dt, ldb, sb, a2.data.ptr, dt, lda, sa,
                                    out.data.ptr, dc, N, M * N, nbatch, ct, st)
    return out


_ones_cache: dict = {}


def _ones(n: int, dtype):
    """A cached device vector of at least n ones (per GPU and dtype)."""
    cp = require_cupy()
    key = (cp.cuda.Device().id, np.dtype(dtype))
    v = _ones_cache.get(key)
    if v is None or v.size < n:
        v = cp.ones(max(n, 1 << 14), dtype)
        _ones_cache[key] = v
    return v


def colsum(x, out_dtype=None):
    """Sum over the rows of a 2-D CuPy array (M, N) -> (N,), as one cuBLAS product ones(M) @ x (a GEMV-shaped GEMM:
    one pass over x at memory speed; CuPy's axis-0 reduction runs at a fraction of that). Float32 accumulation for
    float16/bfloat16/float32 (never TF32: a bias gradient keeps full float32 precision), float64 for float64.
    ``out_dtype`` float32 for float16 or bfloat16 x gives the float32 sum without a 16-bit rounding."""
    cp = require_cupy()
    M, N = x.shape
    dtype = x.dtype
    if dtype not in _R_OF or x.size == 0 or M == 0:
        r = x.sum(axis=0, dtype=np.float64 if dtype == np.float64 else np.float32)
        return r.astype(out_dtype or dtype, copy=False)
    if not x.flags.c_contiguous:
        x = cp.ascontiguousarray(x)
    odt = np.dtype(out_dtype or dtype)
    if odt != dtype and not (dtype in _HALF and odt == np.float32):
        return colsum(x).astype(odt)
    out = cp.empty((N,), odt)
    dt, dc = _R_OF[np.dtype(dtype)], _R_OF[odt]
    ct, st = (_COMPUTE_64F, np.float64) if dtype == np.float64 else (_COMPUTE_32F, np.float32)
    ones = _ones(M, dtype)
    # column-major view: x is x^T (N, M), ld N; out^T (N, 1) = x^T @ ones (M, 1)
    _cb.gemm_ex(_OP_N, _OP_N, N, 1, M, x.data.ptr, dt, N, ones.data.ptr, dt, M, out.data.ptr, dc, N, ct, st)
    return out


def linear_bias(x, w, b):
    """x @ w^T + b with the bias added inside the GEMM (cuBLASLt's BIAS epilogue: added to the float32 accumulator,
    then one rounding to the output dtype), for x (M, K) and the weight w (N, K) C-contiguous of one dtype (float16,
    bfloat16 or float32; b is cast to it), -> (M, N); None where that does not apply (the caller adds the bias)."""
    cp = require_cupy()
    M, K = x.shape
    N = w.shape[0]
    dt = x.dtype
    step = 8 if dt in _HALF else 4          # leading dimensions of 16-byte multiples
    if (w.dtype != dt or dt not in _R_OF or dt == np.float64 or w.shape[1] != K or b.shape != (N,) or M == 0 or K % step
            or N % step or not (x.flags.c_contiguous and w.flags.c_contiguous) or (x.data.ptr | w.data.ptr) % 16
            or not _cublaslt.available()):
        return None
    bias = b if b.dtype == dt and b.flags.c_contiguous else cp.ascontiguousarray(b.astype(dt))
    if bias.data.ptr % 16:
        return None
    y = cp.empty((M, N), dt)
    try:   # column-major: y^T (N, M) = w (N, K) x^T (K, M)
        _cublaslt.matmul(1, 0, N, M, K, w.data.ptr, K, x.data.ptr, K, y.data.ptr, N, _R_OF[dt], _cublaslt.EPILOGUE_BIAS,
                         bias_ptr=bias.data.ptr, tf32=tf32_enabled())
    except _cb.CublasError:
        return None
    return y


register("matmul", matmul)
register("linear_bias", linear_bias)
register("matmul_accumulate", matmul_accumulate)
register("colsum", colsum)
