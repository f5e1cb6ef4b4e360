"""A thin ctypes binding to the libcublas that CuPy loaded: GEMMs that can be recorded into a CUDA graph.

Why not CuPy's cuBLAS wrappers: every one of them calls ``setStream`` first, and CuPy 14 refuses that during stream
capture (``NotImplementedError: calling cuBLAS API during stream capture is currently unsupported``). cuBLAS itself
captures fine when nothing is allocated inside the region, so each handle gets a preallocated workspace
(``cublasSetWorkspace_v2``; cuBLAS would otherwise allocate its default one on first use of a stream). A call here
also costs less host time than CuPy's wrapper (argument conversion happens once per process in ctypes prototypes).

    from autograd.cuda import cublas
    cublas.gemm_ex(transa, transb, m, n, k, a_ptr, a_type, lda, b_ptr, b_type, ldb, c_ptr, c_type, ldc,
                   compute_type, scalar_dtype)            # column-major C = op(A) op(B), alpha 1, beta 0

One handle per GPU, bound to the current CuPy stream on each call (``cublasSetStream_v2`` then the workspace again,
because setting a stream resets it). Math mode: ``CUBLAS_DEFAULT_MATH``; TF32 is asked for per call through the
compute type (``CUBLAS_COMPUTE_32F_FAST_TF32``), so switching TF32 off takes effect at once.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

import numpy as np

from ._common import require_cupy

__all__ = ["library_path", "handle", "gemm_ex", "gemm_strided_batched_ex", "CublasError", "WORKSPACE_BYTES"]

# enum values (cublas_api.h / library_types.h; stable across CUDA 11-13)
OP_N, OP_T = 0, 1
R_16F, R_32F, R_64F, R_16BF = 2, 0, 1, 14
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
GEMM_DEFAULT = -1
_POINTER_MODE_HOST = 0
_DEFAULT_MATH = 0

# 32 MiB: what cuBLAS asks for on Hopper (its default workspace there); override with TINYGRAD_LLM_CUBLAS_WORKSPACE_MB
WORKSPACE_BYTES = int(float(os.environ.get("TINYGRAD_LLM_CUBLAS_WORKSPACE_MB", "32")) * 2 ** 20)

_STATUS = {0: "SUCCESS", 1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE", 8: "ARCH_MISMATCH",
           11: "MAPPING_ERROR", 13: "EXECUTION_FAILED", 14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED",
           16: "LICENSE_ERROR"}


class CublasError(RuntimeError):
    """A cuBLAS call returned an error status."""


_lib = None
_path: str | None = None
_handles: dict[int, "_Handle"] = {}
_ONE = {np.dtype(np.float32): ctypes.c_float(1.0), np.dtype(np.float64): ctypes.c_double(1.0)}
_ZERO = {np.dtype(np.float32): ctypes.c_float(0.0), np.dtype(np.float64): ctypes.c_double(0.0)}


def _loaded_cublas_path() -> str | None:
    """The libcublas.so file already mapped into this process (the one CuPy loaded), from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                base = os.path.basename(path)
                if base.startswith("libcublas.so") and os.path.exists(path):
                    return path
    except OSError:
        pass
    return None


def library_path() -> str:
    """Path (or soname) of the libcublas this binding uses: the one CuPy loaded, else the system's."""
    _load()
    return _path


def load_first(candidates: list, what: str):
    """(library, name): the first of ``candidates`` (paths or sonames) that ctypes loads; CublasError if none does."""
    err = None
    for c in candidates:
        try:
            return ctypes.CDLL(c), c
        except OSError as e:
            err = e
    raise CublasError(f"could not load {what} (tried {candidates}): {err}")


def _load():
    global _lib, _path
    if _lib is not None:
        return _lib
    require_cupy()
    from cupy_backends.cuda.libs import cublas as _cupy_cublas  # noqa: F401  (makes CuPy load its libcublas)
    path = _loaded_cublas_path()
    candidates = [path] if path else []
    candidates += [n for n in ("libcublas.so.13", "libcublas.so.12", "libcublas.so.11", ctypes.util.find_library("cublas"))
                   if n]
    lib, c = load_first(candidates, "libcublas")
    vp, i, i64, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_size_t
    lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
    lib.cublasSetStream_v2.argtypes = [vp, vp]
    lib.cublasSetWorkspace_v2.argtypes = [vp, vp, sz]
    lib.cublasSetMathMode.argtypes = [vp, i]
    lib.cublasSetPointerMode_v2.argtypes = [vp, i]
    lib.cublasGemmEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i, i, i]
    lib.cublasGemmStridedBatchedEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, i64, vp, i, i, i64, vp, vp, i, i,
                                               i64, i, i, i]
    for fn in (lib.cublasCreate_v2, lib.cublasSetStream_v2, lib.cublasSetWorkspace_v2, lib.cublasSetMathMode,
               lib.cublasSetPointerMode_v2, lib.cublasGemmEx, lib.cublasGemmStridedBatchedEx):
        fn.restype = i
    _lib, _path = lib, c
    return lib


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasError(f"{what} failed: CUBLAS_STATUS_{_STATUS.get(status, status)}")


class _Handle:
    """A cuBLAS handle of one GPU with its own workspace (raw device memory, outside every memory pool, so a
    graph's private pool never owns it), and the stream it was last bound to."""

    def __init__(self, device_id: int):
        cp = require_cupy()
        lib = _load()
        self.device_id = device_id
        with cp.cuda.Device(device_id):
            h = ctypes.c_void_p()
            _check(lib.cublasCreate_v2(ctypes.byref(h)), "cublasCreate_v2")
            self.ptr = h
            self.workspace = cp.cuda.Memory(WORKSPACE_BYTES) if WORKSPACE_BYTES > 0 else None
            _check(lib.cublasSetMathMode(h, _DEFAULT_MATH), "cublasSetMathMode")
            _check(lib.cublasSetPointerMode_v2(h, _POINTER_MODE_HOST), "cublasSetPointerMode_v2")
        self.stream = None
        self._bind(cp.cuda.get_current_stream().ptr)

    def _bind(self, stream_ptr: int) -> None:
        lib = _lib
        _check(lib.cublasSetStream_v2(self.ptr, ctypes.c_void_p(stream_ptr)), "cublasSetStream_v2")
        # setting a stream resets the workspace to cuBLAS's own pool: give it ours again
        ws = self.workspace.ptr if self.workspace is not None else None
        _check(lib.cublasSetWorkspace_v2(self.ptr, ctypes.c_void_p(ws), max(WORKSPACE_BYTES, 0)),
               "cublasSetWorkspace_v2")
        self.stream = stream_ptr

    def on_current_stream(self, cp):
        s = cp.cuda.get_current_stream().ptr
        if s != self.stream:
            self._bind(s)
        return self.ptr


def handle():
    """The current GPU's handle (a ctypes c_void_p), bound to CuPy's current stream."""
    cp = require_cupy()
    dev = cp.cuda.runtime.getDevice()
    h = _handles.get(dev)
    if h is None:
        h = _handles[dev] = _Handle(dev)
    return h.on_current_stream(cp)


def _scalars(scalar_dtype):
    """Host addresses of alpha = 1 and beta = 0 (pointer mode host: read when the call is issued)."""
    sd = np.dtype(scalar_dtype)
    return ctypes.addressof(_ONE[sd]), ctypes.addressof(_ZERO[sd])


def gemm_ex(transa: int, transb: int, m: int, n: int, k: int, a_ptr: int, a_type: int, lda: int, b_ptr: int,
            b_type: int, ldb: int, c_ptr: int, c_type: int, ldc: int, compute_type: int, scalar_dtype,
            accumulate: bool = False) -> None:
    """cublasGemmEx, column-major: C (m, n) = op(A) (m, k) @ op(B) (k, n) (+ C when ``accumulate``: beta = 1), on
    CuPy's current stream. ``scalar_dtype``: float32 (for 32F compute types) or float64 (64F)."""
    h = handle()
    one, zero = _scalars(scalar_dtype)
    _check(_lib.cublasGemmEx(h, transa, transb, m, n, k, one, a_ptr, a_type, lda, b_ptr, b_type, ldb,
                             one if accumulate else zero, c_ptr,
                             c_type, ldc, compute_type, GEMM_DEFAULT),
           f"cublasGemmEx (m={m}, n={n}, k={k}, lda={lda}, ldb={ldb}, ldc={ldc}, types {a_type}/{b_type}/{c_type}, "
           f"compute {compute_type})")


def gemm_strided_batched_ex(transa: int, transb: int, m: int, n: int, k: int, a_ptr: int, a_type: int, lda: int,
                            stride_a: int, b_ptr: int, b_type: int, ldb: int, stride_b: int, c_ptr: int, c_type: int,
                            ldc: int, stride_c: int, batch: int, compute_type: int, scalar_dtype) -> None:
    """cublasGemmStridedBatchedEx: ``batch`` products as ``gemm_ex``, operand i at ptr + i * stride (elements)."""
    h = handle()
    one, zero = _scalars(scalar_dtype)
    _check(_lib.cublasGemmStridedBatchedEx(h, transa, transb, m, n, k, one, a_ptr, a_type, lda, stride_a, b_ptr,
                                           b_type, ldb, stride_b, zero, c_ptr, c_type, ldc, stride_c, batch,
                                           compute_type, GEMM_DEFAULT),
           f"cublasGemmStridedBatchedEx (m={m}, n={n}, k={k}, batch={batch})")
