"""Tensor maps for Hopper's tensor memory accelerator (TMA): the 128-byte descriptor of a global array that
``cp.async.bulk.tensor`` / ``cp.reduce.async.bulk.tensor`` read and write in boxes, encoded on the host by the CUDA
driver's ``cuTensorMapEncodeTiled`` (through ctypes) and passed to a kernel by value, as a
``const __grid_constant__ TensorMap`` parameter (``TENSOR_MAP_SRC``).

A box's shared-memory image with the 128-byte swizzle: box row r (its innermost extent is 128 bytes) at r * 128,
its 16-byte chunk c at chunk position c ^ (r % 8), the image 1024-byte aligned. Writing rows of a register tile
into it that way spreads the rows over the banks, which a row-major image (rows 256 bytes apart) does not.
"""
from __future__ import annotations

import ctypes

import numpy as np

from ._common import require_cupy

TENSOR_MAP_SRC = r"""
// the driver's CUtensorMap, opaque: 128 bytes, 64-byte aligned
struct __align__(64) TensorMap { unsigned long long w[16]; };
"""

SWIZZLE_NONE, SWIZZLE_128B = 0, 3
_FLOAT32 = 7        # CU_TENSOR_MAP_DATA_TYPE_FLOAT32
_INTERLEAVE_NONE = 0
_L2_PROMOTION_128B = 2
_OOB_FILL_NONE = 0
_encode = None
_map_dtype = None


class TensorMapError(RuntimeError):
    """The driver refused a tensor map (the message names the array and the box)."""


def _driver():
    global _encode
    if _encode is None:
        from .cublas import load_first
        lib, _ = load_first(["libcuda.so.1", "libcuda.so"], "the CUDA driver (libcuda)")
        f = lib.cuTensorMapEncodeTiled
        u32p, u64p = ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint64)
        f.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, u64p, u64p, u32p, u32p,
                      ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        f.restype = ctypes.c_int
        _encode = f
    return _encode


def map_dtype() -> np.dtype:
    """The NumPy structured dtype a tensor map travels in as a kernel argument (128 bytes, 64-byte aligned)."""
    global _map_dtype
    if _map_dtype is None:
        _map_dtype = require_cupy().make_aligned_dtype(np.dtype([("w", np.uint64, (16,))]), alignment=64)
    return _map_dtype


def empty_map():
    """An all-zero tensor map, for a kernel parameter its instantiation does not use."""
    return np.zeros((), map_dtype())[()]


def float32_tiles(array, box: tuple[int, ...], swizzle: int = SWIZZLE_128B):
    """The tensor map of ``array`` (a C-contiguous float32 CuPy array, 1 to 5 axes) in boxes of ``box`` elements per
    axis (the array's axis order; the last axis innermost, box[-1] * 4 bytes at most 128 with the 128-byte swizzle).
    Coordinates past the array's extent are skipped by reductions and stores, read as zeros by loads."""
    if array.dtype != np.float32 or not array.flags.c_contiguous or not 1 <= array.ndim <= 5 or len(box) != array.ndim:
        raise TensorMapError(f"tensor map: needs a C-contiguous float32 array of 1-5 axes and a box per axis, got "
                             f"{array.dtype} {array.shape} (contiguous {array.flags.c_contiguous}), box {box}")
    rank = array.ndim
    dims = (ctypes.c_uint64 * rank)(*reversed(array.shape))
    strides = (ctypes.c_uint64 * max(1, rank - 1))(*reversed(array.strides[:-1])) if rank > 1 else (ctypes.c_uint64 * 1)(0)
    boxes = (ctypes.c_uint32 * rank)(*reversed(box))
    steps = (ctypes.c_uint32 * rank)(*([1] * rank))
    raw = np.zeros(128 + 64, np.uint8)   # the driver writes a 64-byte aligned CUtensorMap
    at = -raw.ctypes.data % 64
    rc = _driver()(raw.ctypes.data + at, _FLOAT32, rank, ctypes.c_void_p(array.data.ptr), dims, strides, boxes, steps,
                   _INTERLEAVE_NONE, swizzle, _L2_PROMOTION_128B, _OOB_FILL_NONE)
    if rc != 0:
        raise TensorMapError(f"cuTensorMapEncodeTiled failed (CUresult {rc}) for a float32 array {array.shape}, "
                             f"box {box}, swizzle {swizzle}")
    out = np.zeros((), map_dtype())
    out["w"] = raw[at:at + 128].view(np.uint64)
    return out[()]
