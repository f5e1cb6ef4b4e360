"""Flash attention for float32 on TF32 tensor cores (mma.sync m16n8k8, float32 accumulation): no T x T matrix.

The float32 counterpart of the flash_attention package (same tiling, same API and semantics), used when TF32 is
on. Operands are rounded to TF32 (cvt.rna) as they enter the mma; tiles sit in shared memory as float32 rows padded
by 4 floats (so the fragment reads below hit 32 distinct banks) and stream in with 16-byte cp.async copies, two stages.

Fragment layouts (g = lane / 4, t = lane % 4): A 16x8 a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); B 8x8 b0
(k=t, n=g), b1 (k=t+4, n=g); C 16x8 c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1). A product whose A
operand is an accumulator (O += P V, dV += P^T dO, dK += dS^T Q) permutes the summed index inside each 8-wide step:
k-index t stands for element 2t and t+4 for 2t+1, so the A fragment is (c0, c2, c1, c3) of the accumulator tile and
the B fragment reads rows 2t and 2t+1 of the shared-memory tile. dQ = dS K uses the same order on dS^T in shared
memory.

Forward: a block of 4 warps takes 64 queries (16 per warp, Q fragments in registers), walks key tiles of BN rows
(64; 32 for D = 128), online softmax in base 2 with the scale folded in; the longest causal rows start first.
Backward: a block takes 64 keys (K, V tiles in shared memory, 16 keys per warp) and walks the query tiles of BQ rows
that can see them; dV += P^T dO, dK += dS^T Q in registers, dS^T through shared memory, dQ added to a float32
buffer with atomics. lse is float32, natural log.

Handles: float32 q, k, v of shape (..., T, D), D in {32, 64, 128}, with TF32 on (``set_tf32``) and flash on
(``TINYGRAD_LLM_FLASH``). Everything else goes to the GEMM version in attention.py, the tests' reference.
"""
from __future__ import annotations

import math

import numpy as np

from ._common import LazyModule, contiguous, require_cupy
from .flash_attention import _enabled
from .matmul import tf32_enabled

_SRC = r"""
typedef unsigned int u32;
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ u32 tf32(float x) { u32 r; asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x)); return r; }
__device__ __forceinline__ void mma1688(float* c, const u32* a, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// A operand from an accumulator tile (summed index permuted: k t -> 2t, k t+4 -> 2t+1)
__device__ __forceinline__ void acc_as_a(u32* a, const float* c) {
    a[0] = tf32(c[0]); a[1] = tf32(c[2]); a[2] = tf32(c[1]); a[3] = tf32(c[3]);
}
__device__ __forceinline__ u32 smem_u32(const void* p) {
    unsigned long long a; asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p)); return (u32)a;
}
__device__ __forceinline__ void cp_async16f(float* dst, const float* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }

// rows [row0, row0 + R) of a (T, D) float matrix -> shared memory, row stride D + 4; rows >= T zero-filled
template <int D, int R>
__device__ __forceinline__ void tile_async(float* dst, const float* src, int row0, int T) {
    constexpr int VPR = D / 4;
    for (int idx = threadIdx.x; idx < R * VPR; idx += blockDim.x) {
        const int r = idx / VPR, c = (idx % VPR) * 4;
        const bool ok = row0 + r < T;
        cp_async16f(dst + r * (D + 4) + c, src + (i64)(ok ? row0 + r : 0) * D + c, ok ? 16 : 0);
    }
}
// one step of a two-stage pipeline over tile pairs (K/V or Q/dO): with more tiles to come, start copying the pair
// at row0 into the other stage and wait for all but that group; else wait for everything
template <int D, int R>
__device__ __forceinline__ void next_pair(float* a_dst, const float* a, float* b_dst, const float* b, int row0, int T,
                                          bool more) {
    if (more) {
        tile_async<D, R>(a_dst, a, row0, T);
        tile_async<D, R>(b_dst, b, row0, T);
        cp_commit();
        cp_wait<1>();
    } else {
        cp_wait<0>();
    }
}
// A fragments (rows [r0, r0 + 16) x D) of a row-major matrix with row stride ld; rows >= T read as 0 (global)
template <int D>
__device__ __forceinline__ void a_frags_global(u32 (*a)[4], const float* src, int r0, int T) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int ra = r0 + g, rb = r0 + g + 8;
#pragma unroll
    for (int kc = 0; kc < D / 8; ++kc) {
        const int c = kc * 8 + t;
        a[kc][0] = tf32(ra < T ? src[(i64)ra * D + c] : 0.f);
        a[kc][1] = tf32(rb < T ? src[(i64)rb * D + c] : 0.f);
        a[kc][2] = tf32(ra < T ? src[(i64)ra * D + c + 4] : 0.f);
        a[kc][3] = tf32(rb < T ? src[(i64)rb * D + c + 4] : 0.f);
    }
}
// A fragment of k-step kc: rows r0 .. r0 + 16 of a shared-memory tile with row stride D + 4
template <int D>
__device__ __forceinline__ void a_frag_smem(u32* a, const float* tile, int r0, int kc) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float* p = tile + (r0 + g) * (D + 4) + kc * 8 + t;
    a[0] = tf32(p[0]); a[1] = tf32(p[8 * (D + 4)]); a[2] = tf32(p[4]); a[3] = tf32(p[8 * (D + 4) + 4]);
}
// c (16 x 8) += A . B^T over D, B = rows [n0, n0 + 8) of a shared-memory tile (row stride D + 4)
template <int D>
__device__ __forceinline__ void mma_abt_f(float* c, const u32 (*a)[4], const float* tile, int n0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float* p = tile + (n0 + g) * (D + 4) + t;
#pragma unroll
    for (int kc = 0; kc < D / 8; ++kc) mma1688(c, a[kc], tf32(p[kc * 8]), tf32(p[kc * 8 + 4]));
}
// acc[nd] (16 x 8, NC/8 of them) += A (permuted 8-wide step) . rows k0 + {2t, 2t+1} of a tile, columns [c0, c0 + NC)
template <int NC, int LD>
__device__ __forceinline__ void mma_pv_f(float (*acc)[4], const u32* a, const float* tile, int k0, int c0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float* p = tile + (k0 + 2 * t) * LD + c0 + g;
#pragma unroll
    for (int nd = 0; nd < NC / 8; ++nd) mma1688(acc[nd], a, tf32(p[nd * 8]), tf32(p[LD + nd * 8]));
}

template <int D, int BN>
__global__ void __launch_bounds__(128) flash_tf32_fwd(const float* __restrict__ Q, const float* __restrict__ K,
        const float* __restrict__ V, float* __restrict__ O, float* __restrict__ L,
        int Tq, int Tk, float scale_log2, int causal) {
    extern __shared__ __align__(16) unsigned char ft_smem[];
    constexpr int TILE = BN * (D + 4), NT = BN / 8;
    float* Ksm = reinterpret_cast<float*>(ft_smem);   // [2][TILE], then V [2][TILE]
    float* Vsm = Ksm + 2 * TILE;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const GridYX blk = grid_y_fastest();
    const i64 bh = blk.y;
    Q += bh * Tq * D; O += bh * Tq * D; L += bh * Tq;
    K += bh * Tk * D; V += bh * Tk * D;
    const int qblock = (gridDim.x - 1 - blk.x) * 64;   // causal: the longest rows start first
    const int q0 = qblock + warp * 16;
    const int shift = Tk - Tq;
    u32 qa[D / 8][4];
    a_frags_global<D>(qa, Q, q0, Tq);
    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) { o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f; }
    float m[2] = {neg_inf_f(), neg_inf_f()}, l[2] = {0.f, 0.f};
    const int kend = causal ? min(Tk, min(qblock + 63, Tq - 1) + shift + 1) : Tk;
    const int ntiles = (kend + BN - 1) / BN;
    tile_async<D, BN>(Ksm, K, 0, Tk);
    tile_async<D, BN>(Vsm, V, 0, Tk);
    cp_commit();
    for (int kt = 0; kt < ntiles; ++kt) {
        const int k0 = kt * BN, buf = kt & 1;
        // stage buf ^ 1 was released by the barrier that ended the last tile
        next_pair<D, BN>(Ksm + (buf ^ 1) * TILE, K, Vsm + (buf ^ 1) * TILE, V, k0 + BN, Tk, kt + 1 < ntiles);
        __syncthreads();
        const float* Ks = Ksm + buf * TILE;
        const float* Vs = Vsm + buf * TILE;
        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            mma_abt_f<D>(s[nt], qa, Ks, nt * 8);
        }
        const bool need_mask = (k0 + BN > Tk) || (causal && k0 + BN - 1 > q0 + shift);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                float v = s[nt][c] * scale_log2;
                if (need_mask) {
                    const int key = k0 + nt * 8 + t * 2 + (c & 1);
                    const int row = q0 + g + (c >> 1) * 8;
                    if (key >= Tk || (causal && key > row + shift)) v = neg_inf_f();
                }
                s[nt][c] = v;
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) {   // online softmax of rows g (h = 0) and g + 8 (h = 1)
            float mx = neg_inf_f();
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mnew = fmaxf(m[h], mx);
            const float base = mnew == neg_inf_f() ? 0.f : mnew;
            const float alpha = exp2f(m[h] - base);
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const float p0 = exp2f(s[nt][2 * h] - base), p1 = exp2f(s[nt][2 * h + 1] - base);
                s[nt][2 * h] = p0; s[nt][2 * h + 1] = p1;
                sum += p0 + p1;
            }
            l[h] = l[h] * alpha + sum;
            m[h] = mnew;
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd) { o[nd][2 * h] *= alpha; o[nd][2 * h + 1] *= alpha; }
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            u32 pa[4];
            acc_as_a(pa, s[nt]);
            mma_pv_f<D, D + 4>(o, pa, Vs, nt * 8, 0);
        }
        __syncthreads();
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float lt = l[h];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        const int row = q0 + g + 8 * h;
        const float inv = lt > 0.f ? 1.f / lt : 0.f;
        if (row < Tq) {
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd)
                *reinterpret_cast<float2*>(O + (i64)row * D + nd * 8 + t * 2) =
                    make_float2(o[nd][2 * h] * inv, o[nd][2 * h + 1] * inv);
            if (t == 0) L[row] = lt > 0.f ? (m[h] + log2f(lt)) * 0.6931471805599453f : neg_inf_f();
        }
    }
}

// ST: stages of the Q / dO tiles (2: the next tile loads while this one is used)
template <int D, int BQ, int ST>
__global__ void __launch_bounds__(128) flash_tf32_bwd(const float* __restrict__ Q, const float* __restrict__ K,
        const float* __restrict__ V, const float* __restrict__ dO, const float* __restrict__ L,
        const float* __restrict__ Dl, float* __restrict__ dQ, float* __restrict__ dK, float* __restrict__ dV,
        int Tq, int Tk, float scale, int causal) {
    extern __shared__ __align__(16) unsigned char ft_smem[];
    constexpr int LD = D + 4, TILE = BQ * LD, SL = BQ + 4, NT = BQ / 8;
    constexpr int RW = BQ / 16, WPR = 4 / RW, DC = D / WPR;   // dQ: row tiles, warps per row tile, columns per warp
    float* Qsm = reinterpret_cast<float*>(ft_smem);   // [ST][TILE]
    float* dOsm = Qsm + ST * TILE;                   // [ST][TILE]
    float* Ks = dOsm + ST * TILE;                    // [64][LD]
    float* Vs = Ks + 64 * LD;                        // [64][LD]
    float* dSs = Vs + 64 * LD;                       // dS^T [64 keys][SL]
    float* lse_s = dSs + 64 * SL;
    float* del_s = lse_s + BQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const GridYX blk = grid_y_fastest();   // causal: a head's first key block is its longest
    const i64 bh = blk.y;
    Q += bh * Tq * D; dO += bh * Tq * D; dQ += bh * Tq * D; L += bh * Tq; Dl += bh * Tq;
    K += bh * Tk * D; V += bh * Tk * D; dK += bh * Tk * D; dV += bh * Tk * D;
    const int kblock = blk.x * 64, kwl = warp * 16, kw0 = kblock + kwl;
    const int shift = Tk - Tq;
    const float scale_log2 = scale * LOG2E;
    float dv[D / 8][4], dk[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) { dv[i][c] = 0.f; dk[i][c] = 0.f; }
    const int qstart = causal ? max(0, kblock - shift) / BQ * BQ : 0;
    tile_async<D, 64>(Ks, K, kblock, Tk);
    tile_async<D, 64>(Vs, V, kblock, Tk);
    cp_commit();
    if (ST == 2) {   // qstart < Tq: key kblock < Tk is seen by query kblock - shift
        tile_async<D, BQ>(Qsm, Q, qstart, Tq);
        tile_async<D, BQ>(dOsm, dO, qstart, Tq);
        cp_commit();
    }
    const int rt = warp / WPR, c0 = (warp % WPR) * DC;   // this warp's dQ rows (16) and columns (DC)
    int it = 0;
    for (int qt = qstart; qt < Tq; qt += BQ, ++it) {
        const int buf = ST == 2 ? (it & 1) : 0;
        if constexpr (ST == 2) {   // stage buf ^ 1 was released by the barrier that ended the last tile
            next_pair<D, BQ>(Qsm + (buf ^ 1) * TILE, Q, dOsm + (buf ^ 1) * TILE, dO, qt + BQ, Tq, qt + BQ < Tq);
        } else {
            next_pair<D, BQ>(Qsm, Q, dOsm, dO, qt, Tq, true);   // one stage: this tile, needed now
            cp_wait<0>();
        }
        const float* Qs = Qsm + buf * TILE;
        const float* dOs = dOsm + buf * TILE;
        for (int i = threadIdx.x; i < BQ; i += blockDim.x) {
            const bool ok = qt + i < Tq;
            lse_s[i] = ok ? L[qt + i] * LOG2E : __int_as_float(0x7f800000);
            del_s[i] = ok ? Dl[qt + i] : 0.f;
        }
        __syncthreads();
        // S^T = K Q^T and dP^T = V dO^T: 16 keys x BQ queries per warp
        float st[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) { st[nt][c] = 0.f; dp[nt][c] = 0.f; }
#pragma unroll
        for (int kc = 0; kc < D / 8; ++kc) {
            u32 ka[4], va[4];
            a_frag_smem<D>(ka, Ks, kwl, kc);
            a_frag_smem<D>(va, Vs, kwl, kc);
            const float* qp = Qs + g * LD + kc * 8 + t;
            const float* dp_ = dOs + g * LD + kc * 8 + t;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                mma1688(st[nt], ka, tf32(qp[nt * 8 * LD]), tf32(qp[nt * 8 * LD + 4]));
                mma1688(dp[nt], va, tf32(dp_[nt * 8 * LD]), tf32(dp_[nt * 8 * LD + 4]));
            }
        }
        // P^T and dS^T (unscaled) in place
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int ql = nt * 8 + t * 2 + (c & 1);
                const int key = kw0 + g + (c >> 1) * 8;
                float p = exp2f(st[nt][c] * scale_log2 - lse_s[ql]);
                if (key >= Tk || (causal && key > qt + ql + shift)) p = 0.f;
                st[nt][c] = p;
                dp[nt][c] = p * (dp[nt][c] - del_s[ql]);
            }
        // dV += P^T dO, dK += dS^T Q; dS^T -> shared memory [key][query]
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            u32 pa[4], sa[4];
            acc_as_a(pa, st[nt]);
            acc_as_a(sa, dp[nt]);
            mma_pv_f<D, LD>(dv, pa, dOs, nt * 8, 0);
            mma_pv_f<D, LD>(dk, sa, Qs, nt * 8, 0);
            *reinterpret_cast<float2*>(dSs + (kwl + g) * SL + nt * 8 + 2 * t) = make_float2(dp[nt][0], dp[nt][1]);
            *reinterpret_cast<float2*>(dSs + (kwl + g + 8) * SL + nt * 8 + 2 * t) = make_float2(dp[nt][2], dp[nt][3]);
        }
        __syncthreads();
        // dQ (queries rt*16 .. +16 of this tile, columns c0 .. c0 + DC) = dS K over the block's 64 keys; A = dS read
        // from dS^T with the permuted key order: a0 = dS[q][2t] = dSs[2t][q]
        float dq[DC / 8][4];
#pragma unroll
        for (int i = 0; i < DC / 8; ++i) { dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f; }
#pragma unroll
        for (int ks = 0; ks < 8; ++ks) {
            const float* sp = dSs + (ks * 8 + 2 * t) * SL + rt * 16 + g;
            u32 a[4];
            a[0] = tf32(sp[0]); a[1] = tf32(sp[8]); a[2] = tf32(sp[SL]); a[3] = tf32(sp[SL + 8]);
            mma_pv_f<DC, LD>(dq, a, Ks, ks * 8, c0);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = qt + rt * 16 + g + 8 * h;
            if (row < Tq) {
#pragma unroll
                for (int nd = 0; nd < DC / 8; ++nd) {
                    float* dst = dQ + (i64)row * D + c0 + nd * 8 + t * 2;
                    atomicAdd(dst, dq[nd][2 * h] * scale);
                    atomicAdd(dst + 1, dq[nd][2 * h + 1] * scale);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int key = kw0 + g + 8 * h;
        if (key < Tk) {
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd) {
                *reinterpret_cast<float2*>(dK + (i64)key * D + nd * 8 + t * 2) =
                    make_float2(dk[nd][2 * h] * scale, dk[nd][2 * h + 1] * scale);
                *reinterpret_cast<float2*>(dV + (i64)key * D + nd * 8 + t * 2) = make_float2(dv[nd][2 * h], dv[nd][2 * h + 1]);
            }
        }
    }
}
"""

# head size -> forward key tile BN; backward query tile BQ and its stages (D = 128: smaller tiles, no spills)
_FWD_BN = {32: 64, 64: 64, 128: 32}
_BWD_CFG = {32: (64, 2), 64: (32, 2), 128: (32, 1)}
_mod = LazyModule(_SRC, {"flash_tf32_fwd": [f"{d},{bn}" for d, bn in _FWD_BN.items()],
                         "flash_tf32_bwd": [f"{d},{bq},{st}" for d, (bq, st) in _BWD_CFG.items()]})
_smem_set: dict = {}


def _aligned(x):
    """x as a C-contiguous array starting on a 16-byte boundary (the cp.async copies read 16-byte vectors)."""
    x = contiguous(x)
    return x.copy() if x.data.ptr % 16 else x


def _fwd_smem(D: int) -> int:
    return 4 * _FWD_BN[D] * (D + 4) * 4   # K and V, two stages each


def _bwd_smem(D: int) -> int:
    bq, st = _BWD_CFG[D]
    return (2 * st * bq * (D + 4) + 2 * 64 * (D + 4) + 64 * (bq + 4) + 2 * bq) * 4


def supports(q, k, v) -> bool:
    """Whether the TF32 flash kernels handle these inputs (float32, D in 32/64/128, TF32 and flash on)."""
    return (_enabled() and tf32_enabled() and q.dtype == np.float32 and k.dtype == np.float32
            and v.dtype == np.float32 and q.ndim >= 2 and k.shape == v.shape and q.shape[:-2] == k.shape[:-2]
            and q.shape[-1] == k.shape[-1] and q.shape[-1] in _FWD_BN and q.size > 0 and k.size > 0)


def _launch(name: str, targs: str, grid, args, smem: int) -> None:
    cp = require_cupy()
    kern = _mod.kernel(name, targs)
    key = (id(kern), cp.cuda.Device().id)   # the attribute belongs to the function loaded on this GPU
    if _smem_set.get(key) != smem:   # opt in to more than 48 KB of dynamic shared memory
        kern.max_dynamic_shared_size_bytes = smem
        _smem_set[key] = smem
    kern(grid, (128,), args, shared_mem=smem)


def flash_forward(q, k, v, causal, scale):
    """(o, lse): o (..., Tq, D) float32, lse (..., Tq) float32; q (..., Tq, D), k, v (..., Tk, D) float32."""
    cp = require_cupy()
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"attention: causal needs Tq <= Tk, got {q.shape[-2]} > {k.shape[-2]}")
    q, k, v = _aligned(q), _aligned(k), _aligned(v)
    Tq, D = q.shape[-2:]
    Tk = k.shape[-2]
    BH = int(np.prod(q.shape[:-2]))
    o = cp.empty_like(q)
    lse = cp.empty(q.shape[:-1], np.float32)
    _launch("flash_tf32_fwd", f"{D},{_FWD_BN[D]}", ((Tq + 63) // 64, BH),
            (q, k, v, o, lse, np.int32(Tq), np.int32(Tk), np.float32(scale * math.log2(math.e)),
             np.int32(bool(causal))), _fwd_smem(D))
    return o, lse


def flash_backward(q, k, v, o, lse, do, causal, scale):
    """(dq, dk, dv) float32, shapes of q, k, v (dq accumulated with float32 atomics)."""
    cp = require_cupy()
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"attention: causal needs Tq <= Tk, got {q.shape[-2]} > {k.shape[-2]}")
    q, k, v, do = _aligned(q), _aligned(k), _aligned(v), _aligned(do.astype(np.float32, copy=False))
    Tq, D = q.shape[-2:]
    Tk = k.shape[-2]
    BH = int(np.prod(q.shape[:-2]))
    delta = cp.sum(do * o.astype(np.float32, copy=False), axis=-1)
    lse = contiguous(lse.astype(np.float32, copy=False))
    dq = cp.zeros(q.shape, np.float32)
    dk = cp.empty_like(k)
    dv = cp.empty_like(v)
    bq, st = _BWD_CFG[D]
    _launch("flash_tf32_bwd", f"{D},{bq},{st}", ((Tk + 63) // 64, BH),
            (q, k, v, do, lse, delta, dq, dk, dv, np.int32(Tq), np.int32(Tk), np.float32(scale),
             np.int32(bool(causal))), _bwd_smem(D))
    return dq, dk, dv
