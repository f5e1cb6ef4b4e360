"""Multi-tensor AdamW: one kernel launch per dtype group updates every parameter in place.

Layout: each tensor is cut into chunks of CHUNK elements; block i handles chunk (tensor_of[i], start_of[i]). The
per-tensor pointers (param, grad, m, v) and sizes go to the device as one small int64 array per call; the block
table depends only on the sizes and is cached. Per element, in one pass (PyTorch's AdamW):
    p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
    p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
Groups are keyed by (param dtype, grad dtype, GPU); m and v have the param's dtype (bfloat16 parameters keep
bfloat16 moments, as PyTorch's AdamW; the arithmetic runs in float32 and each value is rounded once). The kernel
takes C-contiguous params and moments only (the optimizer sends any other tensor through its per-parameter update,
the same formula in ``tinygrad_llm/optim/adam.py``); a gradient of another layout or dtype pair is made contiguous /
cast here. A float32 parameter may come with float16 and bfloat16 shadows (``autograd.amp``): the same pass stores
the new value rounded to each, so the low-precision weights are made once per step.
"""
from __future__ import annotations

import math

import numpy as np

from ._common import FLOAT_DTYPES, LazyModule, ctypes_of, require_cupy
from .device_step import ADAMW_ELEMENT, shadow_pointers
from .registry import register

CHUNK = 16384
THREADS = 512

_SRC = ADAMW_ELEMENT + r"""
template <typename P, typename G, typename A>
__global__ void adamw_multi(const i64* __restrict__ ptrs, const int* __restrict__ blk_tensor,
                            const i64* __restrict__ blk_start, int ntensors, int chunk,
                            double lr, double b1, double b2, double eps, double wd, double step_size,
                            double inv_sqrt_bc2) {
    adamw_block<P, G, A>(ptrs, blk_tensor, blk_start, ntensors, chunk, lr, b1, b2, eps, wd, step_size,
                         inv_sqrt_bc2, (A)1, false, (A)1);
}

// Loss-scaler pass (GradScaler): g *= factor over many tensors in one launch; *flag = 1 when any result is inf/NaN.
template <typename T, typename A>
__global__ void scale_check_multi(const i64* __restrict__ ptrs, const int* __restrict__ blk_tensor,
                                  const i64* __restrict__ blk_start, int ntensors, int chunk, double factor,
                                  int* __restrict__ flag) {
    const int t = blk_tensor[blockIdx.x];
    const i64 start = blk_start[blockIdx.x];
    T* g = reinterpret_cast<T*>(ptrs[t]);
    const i64 n = ptrs[ntensors + t];
    const i64 end = start + chunk < n ? start + chunk : n;
    const A f = (A)factor;
    int bad = 0;
    for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
        const A v = ld(g, i) * f;
        st(g, i, v);
        bad |= !((v - v) == (A)0);        // inf - inf and NaN - NaN are NaN: true only for finite v
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}
"""

_PT = [("float", "float", "float"), ("float", "half_t", "float"), ("float", "bf16_t", "float"),
       ("half_t", "half_t", "float"), ("bf16_t", "bf16_t", "float"), ("double", "double", "double"),
       ("double", "float", "double")]
_SC = ["half_t,float", "float,float", "double,double"]
_mod = LazyModule(_SRC, {"adamw_multi": [",".join(t) for t in _PT], "scale_check_multi": _SC})
_table_cache: dict = {}


def _targs(pdt, gdt) -> str | None:
    pt, pa = ctypes_of(pdt)
    gt, _ = ctypes_of(gdt)
    key = (pt, gt, pa)
    return ",".join(key) if key in _PT else None


def _block_table(sizes: tuple[int, ...]):
    cp = require_cupy()
    key = (cp.cuda.Device().id, sizes)   # the table lives on the current GPU
    tab = _table_cache.get(key)
    if tab is None:
        tens, starts = [], []
        for t, n in enumerate(sizes):
            nchunks = (n + CHUNK - 1) // CHUNK
            tens.extend([t] * nchunks)
            starts.extend(range(0, nchunks * CHUNK, CHUNK))
        tab = (cp.asarray(np.asarray(tens, np.int32)), cp.asarray(np.asarray(starts, np.int64)), len(tens))
        if len(_table_cache) > 64:
            _table_cache.clear()
        _table_cache[key] = tab
    return tab


_meta_cache: dict = {}


def _device_meta(meta: np.ndarray):
    """The pointer/size table on the current GPU, reused while the same bytes come back (parameters, moments and,
    in a steady training loop, the pool's gradient buffers keep their addresses): no host-to-device copy per step.
    Entries are immutable after upload, so a reused table always holds exactly these bytes."""
    cp = require_cupy()
    key = (cp.cuda.Device().id, meta.tobytes())
    d = _meta_cache.get(key)
    if d is None:
        if len(_meta_cache) >= 16:
            _meta_cache.clear()
        d = _meta_cache[key] = cp.asarray(meta)
    return d


def supports(p, m, v) -> bool:
    """Whether the multi-tensor kernel takes this parameter with these moments (same float dtype, C-contiguous)."""
    return (p.dtype in FLOAT_DTYPES and m.dtype == p.dtype and v.dtype == p.dtype
            and p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous)


def adamw_step(params, grads, exp_avgs, exp_avg_sqs, lr, beta1, beta2, eps, weight_decay, step,
               shadows=None) -> None:
    """One AdamW step over lists of same-shaped CuPy arrays, in place (multi-tensor: one launch per dtype group).
    ``shadows``: per parameter a list of float16/bfloat16 arrays of its shape (or None), written with the new value
    in the same pass; only float32 parameters take them."""
    cp = require_cupy()
    n = len(params)
    if not (len(grads) == len(exp_avgs) == len(exp_avg_sqs) == n) or (shadows is not None and len(shadows) != n):
        raise ValueError("adamw_step: params, grads, exp_avgs, exp_avg_sqs (and shadows) must have the same length")
    sh_rows = shadow_pointers(params, shadows, "adamw_step")
    grads = list(grads)   # contiguous copies replace entries locally, never in the caller's list
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    step_size = lr / bc1
    inv_sqrt_bc2 = 1.0 / math.sqrt(bc2)
    scal = (float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), step_size, inv_sqrt_bc2)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if p.shape != g.shape or p.shape != m.shape or p.shape != v.shape:
            raise ValueError(f"adamw_step: tensor {i}: shapes differ: param {p.shape}, grad {g.shape}, "
                             f"m {m.shape}, v {v.shape}")
        if p.size == 0:
            continue
        if not supports(p, m, v):
            raise ValueError(f"adamw_step: tensor {i}: the kernel needs C-contiguous param, exp_avg and exp_avg_sq "
                             f"of one float dtype, got {p.dtype}/{m.dtype}/{v.dtype}, contiguous "
                             f"{p.flags.c_contiguous}/{m.flags.c_contiguous}/{v.flags.c_contiguous}")
        targs = _targs(p.dtype, g.dtype)
        if targs is None or not g.flags.c_contiguous:
            with p.device:
                grads[i] = g = cp.ascontiguousarray(g.astype(p.dtype, copy=False) if targs is None else g)
            targs = _targs(p.dtype, g.dtype)
        groups.setdefault((targs, p.device.id), []).append(i)
    for (targs, dev), idx in groups.items():
        with cp.cuda.Device(dev):   # one launch per (dtype pair, GPU): pointers of one launch live on one GPU
            _launch_group(params, grads, exp_avgs, exp_avg_sqs, sh_rows, idx, targs, scal)


def _launch_group(params, grads, exp_avgs, exp_avg_sqs, sh_rows, idx, targs, scal):
    """One adamw_multi launch over the tensors idx (same dtypes, current GPU)."""
    cp = require_cupy()
    nt = len(idx)
    sizes = tuple(int(params[i].size) for i in idx)
    meta = np.empty((7, nt), np.int64)
    for j, i in enumerate(idx):
        meta[0, j] = params[i].data.ptr
        meta[1, j] = grads[i].data.ptr
        meta[2, j] = exp_avgs[i].data.ptr
        meta[3, j] = exp_avg_sqs[i].data.ptr
    meta[4] = sizes
    meta[5:7] = sh_rows[:, list(idx)]
    meta_d = _device_meta(meta)
    blk_t, blk_s, nblocks = _block_table(sizes)
    _mod.kernel("adamw_multi", targs)(
        (nblocks,), (THREADS,),
        (meta_d, blk_t, blk_s, np.int32(nt), np.int32(CHUNK), *(np.float64(s) for s in scal)))


def scale_and_check(arrays, factor: float):
    """Multiply every CuPy array in ``arrays`` by ``factor`` in place and return a list of device int32 flags (one
    per GPU touched; 1 = some result is inf or NaN). One launch per (dtype, GPU); no host sync here: the caller
    reads the flags once (GradScaler). Non-contiguous arrays are scaled by CuPy and checked with ``isfinite``."""
    cp = require_cupy()
    groups: dict[tuple[str, int], list] = {}
    flags: dict[int, object] = {}

    def flag_of(dev):
        f = flags.get(dev)
        if f is None:
            with cp.cuda.Device(dev):
                f = flags[dev] = cp.zeros((1,), np.int32)
        return f

    for a in arrays:
        if a.size == 0:
            continue
        dev = a.device.id
        if a.flags.c_contiguous and a.dtype in (np.float16, np.float32, np.float64):
            t, acc = ctypes_of(a.dtype)
            groups.setdefault((f"{t},{acc}", dev), []).append(a)
        else:
            with cp.cuda.Device(dev):
                a *= factor
                f = flag_of(dev)
                cp.maximum(f, (~cp.isfinite(a)).any().astype(np.int32), out=f)
    for (targs, dev), arrs in groups.items():
        with cp.cuda.Device(dev):
            f = flag_of(dev)
            nt = len(arrs)
            sizes = tuple(int(a.size) for a in arrs)
            meta = np.empty((2, nt), np.int64)
            meta[0] = [a.data.ptr for a in arrs]
            meta[1] = sizes
            blk_t, blk_s, nblocks = _block_table(sizes)
            _mod.kernel("scale_check_multi", targs)(
                (nblocks,), (THREADS,),
                (_device_meta(meta), blk_t, blk_s, np.int32(nt), np.int32(CHUNK), np.float64(factor), f))
    return list(flags.values())


register("adamw_step", adamw_step)
register("scale_and_check", scale_and_check)
