"""Shared pieces of the CUDA kernels: the CUDA C prelude, lazy module compilation, dtype dispatch.

Every kernel here is C++ compiled at run time by NVRTC through ``cupy.RawModule``. Kernels are templates over the
storage type ``T`` (``float``, ``double``, ``half_t`` = the raw 16 bits of an IEEE float16, or ``bf16_t`` = those of a
bfloat16) and the accumulation
type ``A`` (float for float16/float32, double for float64). Half values are converted with one PTX instruction, so
no CUDA header is needed (NVRTC finds none by default on some installs).
"""
from __future__ import annotations

import numpy as np

from ..backend import cupy_module
from ..dtypes import bfloat16 as _bfloat16

# CUDA C shared by all modules: loads/stores that convert to the accumulation type, and block reductions.
PRELUDE = r"""
typedef unsigned short half_t;
typedef long long i64;

__device__ __forceinline__ float ld(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ double ld(const double* p, i64 i) { return p[i]; }
__device__ __forceinline__ float ld(const half_t* p, i64 i) {
    unsigned short h = p[i]; float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ void st(float* p, i64 i, float v) { p[i] = v; }
__device__ __forceinline__ void st(double* p, i64 i, double v) { p[i] = v; }
__device__ __forceinline__ void st(half_t* p, i64 i, float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p[i] = h;
}

// bfloat16 as its raw 16 bits in a struct (a distinct type from half_t, so ld/st overload on it)
struct __align__(2) bf16_t { unsigned short x; };
__device__ __forceinline__ float ld(const bf16_t* p, i64 i) { return __uint_as_float(((unsigned)p[i].x) << 16); }
__device__ __forceinline__ void st(bf16_t* p, i64 i, float v) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p[i].x = h;
}

__device__ __forceinline__ float neg_inf_f() { return __int_as_float(0xff800000); }

// (y, x) of this block with the grid walked y fastest. Blocks start in the order of their linear index, so a grid of
// (tiles per head, heads) starts every head's tile 0, then every head's tile 1, ...: the attention kernels number a
// head's tiles longest first (causal), and no long tile is left to start in the last wave
struct GridYX { int y, x; };
__device__ __forceinline__ GridYX grid_y_fastest() {
    const int lin = blockIdx.y * gridDim.x + blockIdx.x;
    return {lin % (int)gridDim.y, lin / (int)gridDim.y};
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename A> __device__ __forceinline__ A warp_max(A v) {
    for (int o = 16; o > 0; o >>= 1) { A w = __shfl_xor_sync(0xffffffffu, v, o); v = w > v ? w : v; }
    return v;
}
// Sum over the block (blockDim.x a multiple of 32); every thread gets the result. red: 32 shared slots.
// The leading barrier lets consecutive calls reuse red.
template <typename A> __device__ A block_sum(A v, A* red) {
    v = warp_sum(v);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    if (wid == 0) {
        A t = lane < nw ? red[lane] : (A)0;
        t = warp_sum(t);
        if (lane == 0) red[0] = t;
    }
    __syncthreads();
    return red[0];
}
template <typename A> __device__ A block_max(A v, A* red) {
    v = warp_max(v);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    if (wid == 0) {
        A t = lane < nw ? red[lane] : (A)neg_inf_f();
        t = warp_max(t);
        if (lane == 0) red[0] = t;
    }
    __syncthreads();
    return red[0];
}
"""

# Vector loads/stores: V elements of U as one aligned access (16 bytes for the widest type of a kernel), converted
# to/from the accumulation type. Prepended to a module's source by the kernels that read whole vectors.
VECTOR_IO = r"""
template <typename U, int V> struct __align__(sizeof(U) * V) Pack { U v[V]; };
template <int V, typename U, typename A> __device__ __forceinline__ void ldv(const U* p, i64 i, A* out) {
    const Pack<U, V> pk = *reinterpret_cast<const Pack<U, V>*>(p + i);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = ld(pk.v, k);
}
// bfloat16 pairs: one shift or mask per element (the generic path extracts each 16 bits first)
template <int V> __device__ __forceinline__ void ldv(const bf16_t* p, i64 i, float* out) {
    const Pack<unsigned, V / 2> pk = *reinterpret_cast<const Pack<unsigned, V / 2>*>(p + i);
#pragma unroll
    for (int k = 0; k < V / 2; ++k) {
        out[2 * k] = __uint_as_float(pk.v[k] << 16);
        out[2 * k + 1] = __uint_as_float(pk.v[k] & 0xffff0000u);
    }
}
template <int V, typename U, typename A> __device__ __forceinline__ void stv(U* p, i64 i, const A* in) {
    Pack<U, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) st(pk.v, k, in[k]);
    *reinterpret_cast<Pack<U, V>*>(p + i) = pk;
}
// 16-bit storage: a pair of floats rounded (to nearest even, as st) and packed by one cvt (sm_80+), not two cvts
// and a permute
__device__ __forceinline__ unsigned pack_pair(const half_t*, float lo, float hi) {
    unsigned r;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    half_t h[2]; st(h, 0, lo); st(h, 1, hi); r = h[0] | ((unsigned)h[1] << 16);
#endif
    return r;
}
__device__ __forceinline__ unsigned pack_pair(const bf16_t*, float lo, float hi) {
    unsigned r;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    bf16_t h[2]; st(h, 0, lo); st(h, 1, hi); r = h[0].x | ((unsigned)h[1].x << 16);
#endif
    return r;
}
template <int V> __device__ __forceinline__ void stv(half_t* p, i64 i, const float* in) {
    Pack<unsigned, V / 2> pk;
#pragma unroll
    for (int k = 0; k < V / 2; ++k) pk.v[k] = pack_pair(p, in[2 * k], in[2 * k + 1]);
    *reinterpret_cast<Pack<unsigned, V / 2>*>(p + i) = pk;
}
template <int V> __device__ __forceinline__ void stv(bf16_t* p, i64 i, const float* in) {
    Pack<unsigned, V / 2> pk;
#pragma unroll
    for (int k = 0; k < V / 2; ++k) pk.v[k] = pack_pair(p, in[2 * k], in[2 * k + 1]);
    *reinterpret_cast<Pack<unsigned, V / 2>*>(p + i) = pk;
}
"""

# Fast float arithmetic shared by kernels (no dependence on PRELUDE, so ElementwiseKernel preambles can take it too).
FAST_MATH = r"""
// 2^x in one MUFU.EX2 (ex2.approx.ftz: ~2 ulp, results below 2^-126 flushed to 0); expf costs ~10 instructions
__device__ __forceinline__ float exp2_fast(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
"""


def aligned16(*arrays) -> bool:
    """True when every array's data starts on a 16-byte boundary (a vector kernel's requirement)."""
    return all(a.data.ptr % 16 == 0 for a in arrays)


# storage dtype -> (C++ storage type, C++ accumulation type, numpy accumulation dtype)
_TYPES = {
    np.dtype(np.float16): ("half_t", "float", np.float32),
    np.dtype(np.float32): ("float", "float", np.float32),
    np.dtype(np.float64): ("double", "double", np.float64),
}

if _bfloat16 is not None:
    _TYPES[_bfloat16] = ("bf16_t", "float", np.float32)

FLOAT_DTYPES = tuple(_TYPES)


def ctypes_of(dtype) -> tuple[str, str]:
    """('half_t' | 'float' | 'double', accumulation type) for a floating dtype; TypeError for others."""
    try:
        t = _TYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"CUDA kernels take float16, bfloat16, float32 or float64 arrays, got {np.dtype(dtype)}") from None
    return t[0], t[1]


def acc_dtype(dtype):
    """numpy accumulation dtype: float32 for float16/float32, float64 for float64."""
    return _TYPES[np.dtype(dtype)][2] if np.dtype(dtype) in _TYPES else np.float32


def require_cupy():
    cp = cupy_module()
    if cp is None:
        raise RuntimeError("autograd.cuda kernels need CuPy and an NVIDIA GPU")
    return cp


class LazyModule:
    """A RawModule compiled on first use, with ``kernel(template_name)`` -> cached RawKernel.

    ``templates`` maps a kernel template name to the list of C++ argument strings to instantiate, e.g.
    ``{'ln_fwd': ['float,float', 'half_t,float', 'double,double']}``.
    """

    def __init__(self, source: str, templates: dict[str, list[str]], options: tuple[str, ...] = ()):
        self.source = PRELUDE + source
        self.names = [f"{k}<{a}>" for k, args in templates.items() for a in args]
        self.options = ("--std=c++17",) + tuple(options)
        self._module = None
        self._lowered: dict[str, str] | None = None
        self._kernels: dict[str, object] = {}

    def _load(self):
        """(the compiled module, a map from name expressions to the names to look up in it, or None for the same)."""
        cp = require_cupy()
        return cp.RawModule(code=self.source, options=self.options, name_expressions=self.names), None

    def kernel(self, name: str, targs: str):
        full = f"{name}<{targs}>"
        k = self._kernels.get(full)
        if k is None:
            if self._module is None:
                self._module, self._lowered = self._load()
            k = self._module.get_function(self._lowered[full] if self._lowered else full)
            self._kernels[full] = k
        return k


def row_threads(n: int, per_thread: int = 4, max_threads: int = 1024) -> int:
    """Threads for one block per row of n elements: a multiple of 32, about per_thread elements each."""
    t = (n + per_thread - 1) // per_thread
    t = ((t + 31) // 32) * 32
    return max(32, min(max_threads, t))


def contiguous(x):
    """x itself when C-contiguous, else a C-contiguous copy."""
    return x if x.flags.c_contiguous else require_cupy().ascontiguousarray(x)
