"""Flash attention for float16 and bfloat16 on tensor cores (mma.sync m16n8k16, float32 accumulation): no T x T
matrix in memory.

Operands come from shared memory through ldmatrix (.trans where the tile must be read column-wise); the next K/V
tile (forward, D <= 64) or Q/dO tile (backward) streams in with cp.async while the current one is used.

Forward (FlashAttention-2 style): a block of 4 warps takes 128 queries of one (batch, head) (64 for D > 64); each
warp owns two 16-row query tiles (one for D > 64) whose Q fragments stay in registers, so every K/V fragment read
from shared memory serves both. Key/value tiles of 64 rows go through shared memory; per tile a warp computes
S = Q K^T on tensor cores, applies the causal mask, updates its running row max / sum (online softmax, base-2
exponentials with the scale folded into one FMA), and accumulates O += P V with P taken straight from the S
accumulators (the accumulator layout of two 8-column tiles is the A-operand layout of one 16-column tile).
Outputs: O and lse (float32, natural log) per query row.

Backward: a block takes 64 keys of one key/value head (16 per warp) and walks the query tiles of every query head
that reads them (grouped-query attention: dK and dV summed over the group in registers), the Q / dO tiles
streaming in with cp.async (two stages, dynamic shared memory). Per tile: S^T = K Q^T, P^T = exp(S^T scale - lse),
dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - delta) with delta = rowsum(dO * O) (a small kernel first),
dK += dS^T Q; dS^T goes through shared memory so each warp can compute dQ for 16 of the queries over the block's
64 keys, added to a float32 dQ buffer with atomics and converted at the end. For D > 64 the K/V fragments are read
from shared memory and the query tiles are 32 rows (the dK/dV accumulators need the registers).

Dropout: the probabilities are dropped inside both kernels from a Philox state in device memory; element
((b H + h) Tq + i) Tk + j of the draw decides query i and key j of head (b, h), exactly as
``PhiloxGenerator.keep_mask`` of shape (B, H, Tq, Tk) would, so the composed path's dropout is the reference.

On compute capability 9.0 (H100, H200) D 64 and 128 take ``hopper.py``'s kernels instead: the same algorithm with
the products on warpgroup tensor cores (wgmma, sm_90a), operands read from swizzled shared-memory tiles; the choice
is ``kernel_family`` (``TINYGRAD_LLM_WGMMA=0`` keeps the mma.sync kernels everywhere).

Handles: float16 or bfloat16 q (B, H, Tq, D), k and v (B, Hk, Tk, D) with Hk dividing H, D in {32, 64, 96, 128};
any strides with unit stride along D and 16-byte aligned rows (other arrays are copied). The output is stored
(B, Tq, H, D), so merging the heads costs nothing. Everything else goes to the GEMM version in attention.py, which
also serves as the reference in the tests. ``TINYGRAD_LLM_FLASH=0`` switches these kernels off.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ...dtypes import is_bfloat16
from .._common import LazyModule, require_cupy
from .. import tensor_map
from ..wgmma import WGMMA_SRC, Sm90aModule
from .backward import BACKWARD_SRC
from .device import DEVICE_SRC
from .forward import FORWARD_SRC
from .hopper import HOPPER_SRC

_SRC = DEVICE_SRC + FORWARD_SRC + BACKWARD_SRC


_FWD_D = (32, 64, 96, 128)
_BWD_D = (32, 64, 96, 128)
_BOOL = ("false", "true")
# forward: query tiles of 16 rows per warp, by D (the first is used; 2 halves the shared-memory reads of K and V
# per product, at 246 instead of 128 registers); with dropout 1 (the mask's registers would spill)
_FWD_MT = {32: (2, 1), 64: (2, 1), 96: (1,), 128: (1,)}
# backward: (queries per tile, K/V fragments in registers) by D, without and with dropout (measured best of the
# four combinations for D 64; with dropout the 168-register variant runs 3 blocks per SM)
_BWD_TILES = {32: (("64", "true"), ("32", "false")), 64: (("64", "true"), ("32", "false")),
              96: (("32", "false"),), 128: (("32", "false"),)}
_mod = LazyModule(_SRC, {
    "flash_fwd": [f"{d},{mt},{bf},{dr}" for d in _FWD_D for mt in _FWD_MT[d] for bf in _BOOL for dr in _BOOL
                  if mt == 1 or dr == "false"],
    "flash_bwd": [f"{d},{qt},{kr},{bf},{dr}" for d in _BWD_D for i, (qt, kr) in enumerate(_BWD_TILES[d])
                  for bf in _BOOL for dr in _BOOL
                  if len(_BWD_TILES[d]) == 1 or (dr == "true") == (i == len(_BWD_TILES[d]) - 1)],
    "flash_bwd_delta": [f"{d},{bf}" for d in _FWD_D for bf in _BOOL],
    "flash_bwd_delta_vec": [f"{d},{bf}" for d in (32, 64, 128) for bf in _BOOL],
    "flash_dq_out": list(_BOOL),
})
# Hopper (sm_90a, warpgroup products): forward D -> (keys per K/V tile, warpgroups per block); backward D ->
# minimum blocks per SM (the register budget) without and with dropout (None: dropout takes the mma.sync kernel; the
# D 128 backward with dropout would spill)
_WG_FWD = {64: (64, 2), 128: (64, 2)}
_WG_BWD = {64: (3, 2), 128: (2, None)}
_WG_SRC = WGMMA_SRC + tensor_map.TENSOR_MAP_SRC + DEVICE_SRC + HOPPER_SRC
_wg_mod = Sm90aModule(_WG_SRC, {
    "flash_fwd_wg": [f"{d},{bn},{nw},{bf},{dr}" for d, (bn, nw) in _WG_FWD.items() for bf in _BOOL for dr in _BOOL],
    "flash_bwd_wg": [f"{d},{mb[i]},{bf},{dr}" for d, mb in _WG_BWD.items() for bf in _BOOL
                     for i, dr in enumerate(_BOOL) if mb[i] is not None],
})
_sm90: dict = {}
_smem_set: dict = {}
_NO_STATE = None


def _enabled() -> bool:
    return os.environ.get("TINYGRAD_LLM_FLASH", "").strip().lower() not in ("0", "false", "off", "no")


def _hopper() -> bool:
    """Whether the current GPU takes the sm_90a kernels (compute capability 9.0; ``TINYGRAD_LLM_WGMMA=0`` turns
    them off, leaving the mma.sync kernels)."""
    if os.environ.get("TINYGRAD_LLM_WGMMA", "").strip().lower() in ("0", "false", "off", "no"):
        return False
    dev = require_cupy().cuda.Device()
    ok = _sm90.get(dev.id)
    if ok is None:
        ok = _sm90[dev.id] = dev.compute_capability == "90"
    return ok


def kernel_family(D: int, backward: bool = False, dropout: bool = False) -> str:
    """Which kernels flash attention of head size D runs on this GPU: "wgmma" (Hopper's warpgroup products) or
    "mma" (mma.sync, every GPU from sm_80)."""
    ok = D in _WG_FWD if not backward else D in _WG_BWD and _WG_BWD[D][int(dropout)] is not None
    return "wgmma" if ok and _hopper() else "mma"


def _is16(dtype) -> bool:
    return dtype == np.float16 or is_bfloat16(dtype)


def _shape_ok(q, k, v) -> bool:
    return (_is16(q.dtype) and k.dtype == q.dtype and v.dtype == q.dtype and q.ndim == 4 and k.ndim == 4
            and k.shape == v.shape and q.shape[0] == k.shape[0] and q.shape[3] == k.shape[3]
            and k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0 and q.shape[2] > 0 and k.shape[2] > 0)


def supports(q, k, v) -> bool:
    """Whether the flash forward handles these inputs: q (B, H, Tq, D), k and v (B, Hk, Tk, D) with Hk dividing
    H, float16 or bfloat16, D in 32/64/96/128 (any strides: rows are copied when not 16-byte aligned)."""
    return _enabled() and _shape_ok(q, k, v) and q.shape[-1] in _FWD_D


def supports_backward(q, k, v) -> bool:
    """Whether the flash backward handles these inputs (as ``supports``)."""
    return _enabled() and _shape_ok(q, k, v) and q.shape[-1] in _BWD_D


def _strides(x):
    """(array, (sb, sh, st)) with element strides the kernels can read: unit stride along D, 16-byte aligned
    rows and heads; otherwise a C-contiguous copy. Axes of length 1 take stride 0."""
    item = x.itemsize
    ok = x.strides[3] == item and x.data.ptr % 16 == 0
    st = []
    for ax in range(3):
        s = 0 if x.shape[ax] == 1 else x.strides[ax]
        ok = ok and s % 16 == 0 and s >= 0
        st.append(s // item)
    if not ok:
        x = require_cupy().ascontiguousarray(x)
        if x.data.ptr % 16:
            x = x.copy()
        return _strides(x)
    return x, tuple(np.int64(s) for s in st)


def _qkv_layouts(q, k, v):
    """(q, q's strides, k, v, the strides k and v share): the kernels index k and v with one set of strides, so
    when theirs differ both are made contiguous."""
    q, sq = _strides(q)
    k, skv = _strides(k)
    v, sv = _strides(v)
    if sv != skv:
        cp = require_cupy()
        k, skv = _strides(cp.ascontiguousarray(k))
        v, _ = _strides(cp.ascontiguousarray(v))
    return q, sq, k, v, skv


def _targs(dtype, *rest) -> str:
    return ",".join([*map(str, rest[:1]), "true" if is_bfloat16(dtype) else "false", *map(str, rest[1:])])


def _drop_args(dropout_p: float, drop_state):
    if dropout_p > 0.0 and drop_state is None:
        raise ValueError("flash attention: dropout_p > 0 needs drop_state (a PhiloxGenerator.reserve() copy)")
    if dropout_p <= 0.0:
        return np.float32(0.0), np.float32(1.0), 0, "false"
    return np.float32(dropout_p), np.float32(1.0 / (1.0 - dropout_p)), drop_state, "true"


def flash_forward(q, k, v, causal, scale, dropout_p: float = 0.0, drop_state=None):
    """(o, lse): q (B, H, Tq, D), k and v (B, Hk, Tk, D) -> o (B, H, Tq, D) in q's dtype, stored as (B, Tq, H, D)
    (so merging the heads is free), and lse (B, H, Tq) float32. ``dropout_p`` > 0 drops probabilities with the
    mask ``drop_state`` ([seed, offset] on the device) stands for."""
    cp = require_cupy()
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"attention: causal needs Tq <= Tk, got {q.shape[-2]} > {k.shape[-2]}")
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    q, sq, k, v, skv = _qkv_layouts(q, k, v)
    o = cp.empty((B, Tq, H, D), q.dtype).transpose(0, 2, 1, 3)
    _, so = _strides(o)
    lse = cp.empty((B, H, Tq), np.float32)
    p, rinv, state, drop = _drop_args(dropout_p, drop_state)
    if kernel_family(D) == "wgmma":
        bn, nwg = _WG_FWD[D]
        kern = _wg_mod.kernel("flash_fwd_wg", _targs(q.dtype, f"{D},{bn},{nwg}", drop))
        smem = _wg_fwd_smem(D, bn, nwg)
        _opt_in(kern, smem)
        kern(((Tq + 64 * nwg - 1) // (64 * nwg), B * H), (128 * nwg,),
             (q, k, v, o, lse, np.int32(Tq), np.int32(Tk), np.int32(H), np.int32(H // k.shape[1]), *sq, *skv, *so,
              np.float32(scale * math.log2(math.e)), np.int32(bool(causal)), p, rinv, state), shared_mem=smem)
        return o, lse
    mt = 1 if drop == "true" else _FWD_MT[D][0]
    kern = _mod.kernel("flash_fwd", _targs(q.dtype, f"{D},{mt}", drop))
    smem = _fwd_smem(D)
    _opt_in(kern, smem)
    kern(((Tq + 64 * mt - 1) // (64 * mt), B * H), (128,),
        (q, k, v, o, lse, np.int32(Tq), np.int32(Tk), np.int32(H), np.int32(H // k.shape[1]), *sq, *skv, *so,
         np.float32(scale * math.log2(math.e)), np.int32(bool(causal)), p, rinv, state), shared_mem=smem)
    return o, lse


def _opt_in(kern, smem: int) -> None:
    """Allow ``kern`` ``smem`` bytes of dynamic shared memory (over 48 KB needs the opt-in, per function and GPU)."""
    key = (id(kern), require_cupy().cuda.Device().id)   # the attribute belongs to the function loaded on this GPU
    seen = _smem_set.get(key)
    if seen is None or seen[0] != smem or seen[1] is not kern:
        kern.max_dynamic_shared_size_bytes = smem
        _smem_set[key] = (smem, kern)   # holding kern keeps its id from being reused


def _fwd_smem(D: int) -> int:
    """Dynamic shared memory of flash_fwd: two stages of K and of V, 64 rows of D + 8 (padded) 16-bit values each."""
    return 2 * 2 * 64 * (D + 8) * 2


def _wg_fwd_smem(D: int, bn: int, nwg: int) -> int:
    """Dynamic shared memory of the sm_90a forward: alignment slack, the Q tiles of nwg warpgroups, two stages of K and
    of V (bn keys)."""
    return 1024 + (64 * nwg + 4 * bn) * D * 2


def _tile_map(x):
    """The tensor map of a (B, H, T, D) 16-bit array in the sm_90a kernels' tiles of 64 rows x 64 columns (128-byte
    swizzle); a layout the driver does not map is copied to a contiguous one first."""
    try:
        return tensor_map.tiles(x, (1, 1, 64, 64))
    except tensor_map.TensorMapError:
        return tensor_map.tiles(require_cupy().ascontiguousarray(x), (1, 1, 64, 64))


def _wg_bwd_smem(D: int) -> int:
    """Dynamic shared memory of the sm_90a backward: alignment slack, K, V, two stages of (Q, dO), dS^T, two stages
    of (lse, delta), for D 64 dQ's float32 tile, two mbarriers."""
    return 1024 + 6 * 64 * D * 2 + 64 * 128 + 4 * 64 * 4 + (64 * D * 4 if D == 64 else 0) + 16


def _bwd_smem(D: int, qt: int, kreg: bool) -> int:
    """Dynamic shared memory of flash_bwd in bytes (the layout at the top of the kernel)."""
    tiles = 4 * qt * (D + 8) + (1 if kreg else 2) * 64 * (D + 8) + 64 * (qt + 8)
    return tiles * 2 + 4 * qt * 4


def flash_backward(q, k, v, o, lse, do, causal, scale, dropout_p: float = 0.0, drop_state=None):
    """(dq, dk, dv) in q's dtype, shapes of q, k, v (dq accumulated in float32; dk and dv summed over the query
    heads that share a key/value head)."""
    cp = require_cupy()
    B, H, Tq, D = q.shape
    Hk, Tk = k.shape[1], k.shape[2]
    q, sq, k, v, skv = _qkv_layouts(q, k, v)
    do, sdo = _strides(do.astype(q.dtype, copy=False))
    o, so = _strides(o)
    lse = cp.ascontiguousarray(lse.astype(np.float32, copy=False))
    rows = B * H * Tq
    delta = cp.empty((B, H, Tq), np.float32)
    delta_args = (o, do, delta, np.int32(Tq), np.int32(H), np.int64(rows), *so, *sdo)
    if D in (32, 64, 128):   # a power of two: D / 8 threads a row, 16-byte loads
        threads = rows * (D // 8)
        _mod.kernel("flash_bwd_delta_vec", _targs(q.dtype, D))(((threads + 255) // 256,), (256,), delta_args)
    else:
        _mod.kernel("flash_bwd_delta", _targs(q.dtype, D))(((rows + 7) // 8,), (256,), delta_args)
    dq_acc = cp.zeros((B, H, Tq, D), np.float32)
    dk = cp.empty((B, Hk, Tk, D), q.dtype)
    dv = cp.empty((B, Hk, Tk, D), q.dtype)
    _, sg = _strides(dk)
    p, rinv, state, drop = _drop_args(dropout_p, drop_state)
    common = (q, k, v, do, lse, delta, dq_acc, dk, dv, np.int32(Tq), np.int32(Tk), np.int32(H), np.int32(H // Hk),
              *sq, *skv, *sdo, *sg, np.float32(scale), np.int32(bool(causal)))
    if kernel_family(D, backward=True, dropout=drop == "true") == "wgmma":
        minb = _WG_BWD[D][drop == "true"]
        kern = _wg_mod.kernel("flash_bwd_wg", _targs(q.dtype, f"{D},{minb}", drop))
        smem = _wg_bwd_smem(D)
        _opt_in(kern, smem)
        dq_map = tensor_map.tiles(dq_acc.reshape(B * H, Tq, D), (1, 16, 32)) if D == 64 else tensor_map.empty_map()
        kern(((Tk + 63) // 64, B * Hk), (128,), common + (p, rinv, state, dq_map, _tile_map(q), _tile_map(do)),
             shared_mem=smem)
    else:
        qt, kreg = _BWD_TILES[D][-1 if drop == "true" else 0]
        kern = _mod.kernel("flash_bwd", _targs(q.dtype, f"{D},{qt},{kreg}", drop))
        smem = _bwd_smem(D, int(qt), kreg == "true")
        _opt_in(kern, smem)
        kern(((Tk + 63) // 64, B * Hk), (128,), common + (p, rinv, state), shared_mem=smem)
    dq = cp.empty((B, H, Tq, D), q.dtype)
    n8 = rows * D // 8   # D is a multiple of 8
    _mod.kernel("flash_dq_out", _targs(q.dtype))(((n8 + 255) // 256,), (256,), (dq_acc, dq, np.int64(n8)))
    return dq, dk, dv
