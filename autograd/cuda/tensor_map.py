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

from ..dtypes import is_bfloat16
from ._common import require_cupy

# device side (sm_90a; after wgmma.py's source, whose smem_u32 it uses): the map, the TMA reduction a kernel adds a
# shared tile with, the bulk group it joins, and the mbarriers TMA copies complete on
TENSOR_MAP_SRC = r"""
// the driver's CUtensorMap, opaque: 128 bytes, 64-byte aligned
struct __align__(64) TensorMap { unsigned long long w[16]; };
// the box of map at coordinates (c0 innermost, c1, c2) += its image at src (shared memory, in the map's swizzle) by the
// tensor memory accelerator; joins the thread's bulk group, waited for with bulk_wait_read (src may be overwritten)
// or bulk_wait (the global memory is written)
__device__ __forceinline__ void tma_reduce_add_3d(const TensorMap* map, const void* src, int c0, int c1, int c2) {
    asm volatile("cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4}], [%1];"
                 :: "l"(reinterpret_cast<unsigned long long>(map)), "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2)
                 : "memory");
}
// mbarriers (shared, 8 bytes): a TMA copy completes its bytes on one; a phase ends when the arrival of mbar_expect_tx
// and all the bytes it announced are in
__device__ __forceinline__ void mbar_init(unsigned long long* bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(smem_u32(bar)), "r"(count) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
__device__ __forceinline__ void mbar_expect_tx(unsigned long long* bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned long long* bar, int parity) {
    asm volatile("{\n.reg .pred done;\nWAIT:\nmbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n@!done bra WAIT;\n}"
                 :: "r"(smem_u32(bar)), "r"(parity) : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
"""

SWIZZLE_NONE, SWIZZLE_128B = 0, 3
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


def _data_type(dtype) -> int | None:
    """The driver's CUtensorMapDataType of a NumPy dtype, None for one it has no tiles of here."""
    if is_bfloat16(dtype):
        return 9
    return {np.dtype(np.float16): 6, np.dtype(np.float32): 7}.get(np.dtype(dtype))


def tiles(array, box: tuple[int, ...], swizzle: int = SWIZZLE_128B):
    """The tensor map of ``array`` (a float16, bfloat16 or float32 CuPy array of 1 to 5 axes, unit stride along the
    last, the others multiples of 16 bytes) in boxes of ``box`` elements per axis (the array's axis order; the last
    axis innermost, at most 128 bytes of it with the 128-byte swizzle). Coordinates past the array's extent are read
    as zeros by loads and skipped by reductions and stores."""
    code = _data_type(array.dtype)
    item = np.dtype(array.dtype).itemsize
    rank = array.ndim
    strides = list(array.strides)
    ptr = array.data.ptr if hasattr(array.data, "ptr") else array.ctypes.data   # CuPy, or NumPy (refused below)
    ok = code is not None and 1 <= rank <= 5 and len(box) == rank and ptr % 16 == 0
    ok = ok and (array.shape[-1] == 1 or strides[-1] == item)
    inner = item * array.shape[-1]
    for ax in range(rank - 2, -1, -1):   # an axis of length 1 takes any valid stride (its coordinate stays 0)
        if array.shape[ax] == 1:
            strides[ax] = -(-inner // 16) * 16
        ok = ok and strides[ax] > 0 and strides[ax] % 16 == 0
        inner = strides[ax] * array.shape[ax]
    if not ok:
        raise TensorMapError(f"tensor map: needs a float16/bfloat16/float32 array of 1-5 axes with unit stride along "
                             f"the last and 16-byte multiples elsewhere, and a box per axis; got {array.dtype} "
                             f"{array.shape} strides {array.strides}, box {box}")
    dims = (ctypes.c_uint64 * rank)(*reversed(array.shape))
    gstrides = (ctypes.c_uint64 * max(1, rank - 1))(*(reversed(strides[:-1]) if rank > 1 else [0]))
    boxes = (ctypes.c_uint32 * rank)(*reversed(box))
    steps = (ctypes.c_uint32 * rank)(*([1] * rank))
    raw = np.zeros(128 + 64, np.uint8)   # the driver writes a 64-byte aligned CUtensorMap
    at = -raw.ctypes.data % 64
    rc = _driver()(raw.ctypes.data + at, code, rank, ctypes.c_void_p(ptr), dims, gstrides, boxes, steps,
                   _INTERLEAVE_NONE, swizzle, _L2_PROMOTION_128B, _OOB_FILL_NONE)
    if rc != 0:
        raise TensorMapError(f"cuTensorMapEncodeTiled failed (CUresult {rc}) for a {array.dtype} array "
                             f"{array.shape} strides {array.strides}, box {box}, swizzle {swizzle}")
    out = np.zeros((), map_dtype())
    out["w"] = raw[at:at + 128].view(np.uint64)
    return out[()]
