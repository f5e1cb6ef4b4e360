"""A thin ctypes binding to cuBLASLt (the libcublasLt beside the libcublas CuPy loaded): matrix products whose
epilogue adds the bias, so the bias costs no pass of its own over the result.

    from autograd.cuda import cublaslt
    cublaslt.matmul(transa, transb, m, n, k, a_ptr, lda, b_ptr, ldb, d_ptr, ldd, data_type, cublaslt.EPILOGUE_BIAS,
                    bias_ptr)      # column-major D (m, n) = op(A) op(B) + bias (length m, broadcast over the columns)

A, B, D and the bias have one data type (cuBLAS's ``R_16F``, ``R_16BF`` or ``R_32F``); products accumulate in
float32 (TF32 for float32 inputs when asked) and the bias is added to the accumulator before the one rounding. The
descriptors and the algorithm the heuristic picks are made once per (shape, type, epilogue) and reused (a shape the
heuristic has no algorithm for is asked once); the bias pointer is set on each call. Like ``cublas.py`` the calls can be recorded into a CUDA graph: the stream is an argument of ``cublasLtMatmul``
and the workspace is allocated once per GPU (nothing is allocated inside a call).

cuBLASLt's GELU epilogues (GELU_AUX_BIAS forward, DGELU_BGRAD backward: the tanh form, GPT-2's) were measured for the
MLP and are not used: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import ctypes
import os

from ._common import require_cupy
from .cublas import COMPUTE_32F, COMPUTE_32F_FAST_TF32, R_32F, WORKSPACE_BYTES, CublasError, library_path, load_first

__all__ = ["available", "matmul", "EPILOGUE_BIAS"]

# cublasLt.h's values
EPILOGUE_DEFAULT, EPILOGUE_BIAS = 1, 4
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_PREF_MAX_WORKSPACE = 1
_PREF_MIN_ALIGN = (5, 6, 7, 8)          # A, B, C, D
_ALIGN = 16                             # bytes every operand must be aligned to (asked of the heuristic)


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspaceSize", ctypes.c_size_t), ("state", ctypes.c_int),
                ("wavesCount", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


_lib = None
_available: bool | None = None
_handles: dict[int, tuple] = {}        # device -> (handle, workspace)
_plans: dict[tuple, tuple | None] = {}  # (device, shape, type, epilogue) -> (desc, layouts, algo, workspace bytes);
                                         # None: the heuristic had no algorithm (asked once)
_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)


def _load():
    global _lib
    if _lib is not None:
        return _lib
    cublas_path = library_path()
    folder = os.path.dirname(cublas_path) if os.path.isabs(cublas_path) else ""
    suffix = os.path.basename(cublas_path).replace("libcublas", "", 1)   # ".so.13" ...
    candidates = [os.path.join(folder, "libcublasLt" + suffix)] if folder else []
    candidates += ["libcublasLt" + suffix, "libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11"]
    lib, _ = load_first(candidates, "libcublasLt")
    vp, i, u64, i64, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t
    lib.cublasLtCreate.argtypes = [ctypes.POINTER(vp)]
    lib.cublasLtMatmulDescCreate.argtypes = [ctypes.POINTER(vp), i, i]
    lib.cublasLtMatmulDescSetAttribute.argtypes = [vp, i, vp, sz]
    lib.cublasLtMatrixLayoutCreate.argtypes = [ctypes.POINTER(vp), i, u64, u64, i64]
    lib.cublasLtMatmulPreferenceCreate.argtypes = [ctypes.POINTER(vp)]
    lib.cublasLtMatmulPreferenceSetAttribute.argtypes = [vp, i, vp, sz]
    lib.cublasLtMatmulAlgoGetHeuristic.argtypes = [vp, vp, vp, vp, vp, vp, vp, i, ctypes.POINTER(_HeuristicResult),
                                                   ctypes.POINTER(i)]
    lib.cublasLtMatmul.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, sz, vp]
    for fn in (lib.cublasLtCreate, lib.cublasLtMatmulDescCreate, lib.cublasLtMatmulDescSetAttribute,
               lib.cublasLtMatrixLayoutCreate, lib.cublasLtMatmulPreferenceCreate,
               lib.cublasLtMatmulPreferenceSetAttribute, lib.cublasLtMatmulAlgoGetHeuristic, lib.cublasLtMatmul):
        fn.restype = i
    _lib = lib
    return lib


def available() -> bool:
    """Whether cuBLASLt can be loaded here (CuPy, a GPU and the library); decided once."""
    global _available
    if _available is None:
        try:
            _load()
            _available = True
        except Exception:
            _available = False
    return _available


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasError(f"{what} failed: cuBLAS status {status}")


def _handle(cp):
    dev = cp.cuda.runtime.getDevice()
    h = _handles.get(dev)
    if h is None:
        lib = _load()
        ptr = ctypes.c_void_p()
        _check(lib.cublasLtCreate(ctypes.byref(ptr)), "cublasLtCreate")
        h = _handles[dev] = (ptr, cp.cuda.Memory(WORKSPACE_BYTES) if WORKSPACE_BYTES > 0 else None)
    return dev, h


def _set(lib, desc, attr: int, value) -> None:
    _check(lib.cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(value), ctypes.sizeof(value)),
           f"cublasLtMatmulDescSetAttribute({attr})")


def _plan(lib, handle, workspace, dev, transa, transb, m, n, k, lda, ldb, ldd, t, epilogue, tf32):
    key = (dev, transa, transb, m, n, k, lda, ldb, ldd, t, epilogue, tf32)
    if key in _plans:
        plan = _plans[key]
        if plan is None:
            raise CublasError(f"cublasLt has no algorithm for m={m} n={n} k={k} type {t} epilogue {epilogue}")
        return plan
    desc = ctypes.c_void_p()
    compute = COMPUTE_32F_FAST_TF32 if (t == R_32F and tf32) else COMPUTE_32F
    _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), compute, R_32F), "cublasLtMatmulDescCreate")
    _set(lib, desc, _DESC_TRANSA, ctypes.c_int32(transa))
    _set(lib, desc, _DESC_TRANSB, ctypes.c_int32(transb))
    _set(lib, desc, _DESC_EPILOGUE, ctypes.c_uint32(epilogue))
    layouts = []
    for rows, cols, ld in ((k, m, lda) if transa else (m, k, lda), (n, k, ldb) if transb else (k, n, ldb), (m, n, ldd)):
        lay = ctypes.c_void_p()
        _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(lay), t, rows, cols, ld), "cublasLtMatrixLayoutCreate")
        layouts.append(lay)
    pref = ctypes.c_void_p()
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
    ws = ctypes.c_uint64(WORKSPACE_BYTES if workspace is not None else 0)
    _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE, ctypes.byref(ws), 8), "preference")
    for attr in _PREF_MIN_ALIGN:
        a = ctypes.c_uint32(_ALIGN)
        _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, attr, ctypes.byref(a), 4), "preference")
    if epilogue != EPILOGUE_DEFAULT:   # the heuristic reads the bias pointer's alignment: an aligned stand-in
        _set(lib, desc, _DESC_BIAS_POINTER, ctypes.c_void_p(256))
    result = _HeuristicResult()
    count = ctypes.c_int(0)
    status = lib.cublasLtMatmulAlgoGetHeuristic(handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref, 1,
                                                ctypes.byref(result), ctypes.byref(count))
    if status != 0 or count.value < 1:
        _plans[key] = None
        raise CublasError(f"cublasLt has no algorithm for m={m} n={n} k={k} type {t} epilogue {epilogue} "
                          f"(status {status})")
    plan = _plans[key] = (desc, layouts, result, result.workspaceSize)
    return plan


def matmul(transa: int, transb: int, m: int, n: int, k: int, a_ptr: int, lda: int, b_ptr: int, ldb: int,
           d_ptr: int, ldd: int, data_type: int, epilogue: int, bias_ptr: int | None = None,
           tf32: bool = True) -> None:
    """cublasLtMatmul, column-major: D (m, n) = op(A) op(B) then ``epilogue`` (C is D, beta 0), on CuPy's current
    stream; ``data_type``: cuBLAS's R_* of every operand; ``bias_ptr``: the bias (length m) for EPILOGUE_BIAS. Every
    pointer must be 16-byte aligned."""
    cp = require_cupy()
    lib = _load()
    for name, p in (("A", a_ptr), ("B", b_ptr), ("D", d_ptr), ("bias", bias_ptr)):
        if p is not None and p % _ALIGN:
            raise ValueError(f"cublaslt.matmul: {name} at {p:#x} is not {_ALIGN}-byte aligned")
    dev, (handle, workspace) = _handle(cp)
    desc, (la, lb, ld), result, ws_bytes = _plan(lib, handle, workspace, dev, transa, transb, m, n, k, lda, ldb, ldd,
                                                 data_type, epilogue, tf32)
    if bias_ptr is not None:
        _set(lib, desc, _DESC_BIAS_POINTER, ctypes.c_void_p(bias_ptr))
    stream = cp.cuda.get_current_stream().ptr
    _check(lib.cublasLtMatmul(handle, desc, ctypes.byref(_ONE), ctypes.c_void_p(a_ptr), la, ctypes.c_void_p(b_ptr), lb,
                              ctypes.byref(_ZERO), ctypes.c_void_p(d_ptr), ld, ctypes.c_void_p(d_ptr), ld,
                              ctypes.byref(result.algo),
                              ctypes.c_void_p(workspace.ptr if workspace is not None else None), ws_bytes,
                              ctypes.c_void_p(stream)),
           f"cublasLtMatmul (m={m}, n={n}, k={k}, epilogue {epilogue})")
