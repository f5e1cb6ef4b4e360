"""Flash attention for float16 on tensor cores (mma.sync m16n8k16, float32 accumulation): no T x T matrix in memory.

Operands come from shared memory through ldmatrix (.trans where the tile must be read column-wise); in the forward
(D <= 64) the next K/V tile streams in with cp.async while the current one is used (two shared-memory stages).

Forward (FlashAttention-2 style): a block of 4 warps takes 64 queries of one (batch, head); each warp owns 16 query
rows whose Q fragments stay in registers. Key/value tiles of 64 rows go through shared memory; per tile a warp
computes S = Q K^T (16 x 64) on tensor cores, applies the causal mask, updates its running row max / sum (online
softmax, base-2 exponentials with the scale folded in), and accumulates O += P V with P taken straight from the
S accumulators (the accumulator layout of two 8-column tiles is the A-operand layout of one 16-column tile).
Outputs: O (float16) and lse (float32, natural log) per query row.

Backward: a block takes 64 keys (16 per warp; K and V fragments in registers) and walks the query tiles that can
see them, the Q / dO tiles streaming in with cp.async (two stages, dynamic shared memory). Per tile: S^T = K Q^T,
P^T = exp(S^T scale - lse), dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - delta) with delta = rowsum(dO * O),
dK += dS^T Q; dS^T goes through shared memory so each warp can compute dQ for 16 of the
queries over the block's 64 keys, added to a float32 dQ buffer with atomics. Scale is applied to dQ and dK at the end.

Handles: float16 q, k, v of shape (..., T, D), D in {32, 64, 128} forward and {32, 64} backward (larger D would
spill registers), 16-byte-aligned contiguous rows. Everything else goes to the GEMM version in attention.py, which
also serves as the reference in the tests. ``TINYGRAD_LLM_FLASH=0`` switches this kernel off.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ._common import LazyModule, contiguous, require_cupy

_SRC = r"""
typedef unsigned int u32;
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ unsigned short f2h(float v) {
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v)); return h;
}
__device__ __forceinline__ u32 pack2(float lo, float hi) { return (u32)f2h(lo) | ((u32)f2h(hi) << 16); }
__device__ __forceinline__ u32 pack2h(unsigned short lo, unsigned short hi) { return (u32)lo | ((u32)hi << 16); }
__device__ __forceinline__ u32 ld32(const half_t* p) { return *reinterpret_cast<const u32*>(p); }
__device__ __forceinline__ float pos_inf_f() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ u32 smem_addr(const half_t* p) {
    unsigned long long a; asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p)); return (u32)a;
}
// four 8x8 half matrices from shared memory; lane l gives the address of row (l & 7) of matrix (l >> 3)
__device__ __forceinline__ void ldsm4(u32* r, const half_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)) : "memory");
}
__device__ __forceinline__ void ldsm4t(u32* r, const half_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)) : "memory");
}
// S[nt] (16 x 8) += A (16 x D, fragments a) . B^T where B rows are 8 rows of a (rows, D + 8) tile starting at row0
template <int D>
__device__ __forceinline__ void mma_abt(float* c, const u32 (*a)[4], const half_t* tile, int row0) {
    const int lane = threadIdx.x & 31;
    const half_t* p = tile + (row0 + (lane & 7)) * (D + 8) + (lane >> 3) * 8;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc += 2) {
        u32 b[4];
        ldsm4(b, p + kc * 16);
        mma16816(c, a[kc], b[0], b[1]);
        mma16816(c, a[kc + 1], b[2], b[3]);
    }
}
// O[nd] (16 x 8 each, all D/8 of them) += P (16 x 16, fragment pa) . tile rows [k0, k0 + 16) (16 x D)
template <int D>
__device__ __forceinline__ void mma_pv(float (*o)[4], const u32* pa, const half_t* tile, int k0) {
    const int lane = threadIdx.x & 31, j = lane >> 3;
    const half_t* p = tile + (k0 + (j & 1) * 8 + (lane & 7)) * (D + 8) + (j >> 1) * 8;
#pragma unroll
    for (int nd = 0; nd < D / 8; nd += 2) {
        u32 b[4];
        ldsm4t(b, p + nd * 8);
        mma16816(o[nd], pa, b[0], b[1]);
        mma16816(o[nd + 1], pa, b[2], b[3]);
    }
}

// copy rows [row0, row0 + 64) of a (T, D) half matrix into shared memory with row stride D + 8; zero rows >= T
template <int D>
__device__ __forceinline__ void load_tile(half_t* dst, const half_t* src, int row0, int T) {
    constexpr int VPR = D / 8;                 // 16-byte vectors per row
    for (int idx = threadIdx.x; idx < 64 * VPR; idx += blockDim.x) {
        const int r = idx / VPR, c = (idx % VPR) * 8;
        uint4 val = make_uint4(0u, 0u, 0u, 0u);
        if (row0 + r < T) val = *reinterpret_cast<const uint4*>(src + (i64)(row0 + r) * D + c);
        *reinterpret_cast<uint4*>(dst + r * (D + 8) + c) = val;
    }
}

__device__ __forceinline__ void cp_async16(half_t* dst, const half_t* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}
// load_tile through the async copy engine (rows >= T are zero-filled: source size 0)
template <int D>
__device__ __forceinline__ void load_tile_async(half_t* dst, const half_t* src, int row0, int T) {
    constexpr int VPR = D / 8;
    for (int idx = threadIdx.x; idx < 64 * VPR; idx += blockDim.x) {
        const int r = idx / VPR, c = (idx % VPR) * 8;
        const bool ok = row0 + r < T;
        cp_async16(dst + r * (D + 8) + c, src + (i64)(ok ? row0 + r : 0) * D + c, ok ? 16 : 0);
    }
}

// A fragments (16 rows x D) of rows [r0, r0 + 16) of a (T, D) matrix, straight from global memory
template <int D>
__device__ __forceinline__ void load_a_frags(u32 (*a)[4], const half_t* src, int r0, int T) {
    const int lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int ra = r0 + gid, rb = r0 + gid + 8;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
        const int c = kc * 16 + tig * 2;
        a[kc][0] = ra < T ? ld32(src + (i64)ra * D + c) : 0u;
        a[kc][1] = rb < T ? ld32(src + (i64)rb * D + c) : 0u;
        a[kc][2] = ra < T ? ld32(src + (i64)ra * D + c + 8) : 0u;
        a[kc][3] = rb < T ? ld32(src + (i64)rb * D + c + 8) : 0u;
    }
}

template <int D>
__global__ void __launch_bounds__(128) flash_fwd(const half_t* __restrict__ Q, const half_t* __restrict__ K,
        const half_t* __restrict__ V, half_t* __restrict__ O, float* __restrict__ L,
        int Tq, int Tk, float scale_log2, int causal) {
    constexpr int ST = D <= 64 ? 2 : 1;   // K/V stages: the next tile loads while this one is used (<= 48 KB)
    __shared__ __align__(16) half_t Ksm[ST][64 * (D + 8)];
    __shared__ __align__(16) half_t Vsm[ST][64 * (D + 8)];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const i64 bh = blockIdx.y;
    Q += bh * Tq * D; O += bh * Tq * D; L += bh * Tq;
    K += bh * Tk * D; V += bh * Tk * D;
    const int qblock = (gridDim.x - 1 - blockIdx.x) * 64;   // causal: the longest rows start first
    const int q0 = qblock + warp * 16;
    const int shift = Tk - Tq;
    u32 qa[D / 16][4];
    load_a_frags<D>(qa, Q, q0, Tq);
    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) { o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f; }
    float m[2] = {neg_inf_f(), neg_inf_f()}, l[2] = {0.f, 0.f};
    int kend = Tk;
    if (causal) {
        const int qlast = min(qblock + 63, Tq - 1);
        kend = min(Tk, qlast + shift + 1);
    }
    const int ntiles = (kend + 63) / 64;
    if constexpr (ST == 2) {
        load_tile_async<D>(Ksm[0], K, 0, Tk);
        load_tile_async<D>(Vsm[0], V, 0, Tk);
        cp_async_commit();
    }
    for (int kt = 0; kt < ntiles; ++kt) {
        const int k0 = kt * 64;
        const half_t* Ks;
        const half_t* Vs;
        if constexpr (ST == 2) {
            const int buf = kt & 1;
            if (kt + 1 < ntiles) {   // buffer buf ^ 1 was released by the barrier that ended the last tile
                load_tile_async<D>(Ksm[buf ^ 1], K, k0 + 64, Tk);
                load_tile_async<D>(Vsm[buf ^ 1], V, k0 + 64, Tk);
                cp_async_commit();
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            Ks = Ksm[buf];
            Vs = Vsm[buf];
        } else {
            load_tile<D>(Ksm[0], K, k0, Tk);
            load_tile<D>(Vsm[0], V, k0, Tk);
            Ks = Ksm[0];
            Vs = Vsm[0];
        }
        __syncthreads();
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            mma_abt<D>(s[nt], qa, Ks, nt * 8);
        }
        const bool need_mask = (k0 + 64 > Tk) || (causal && k0 + 63 > q0 + shift);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                float v = s[nt][c] * scale_log2;
                if (need_mask) {
                    const int key = k0 + nt * 8 + tig * 2 + (c & 1);
                    const int row = q0 + gid + (c >> 1) * 8;
                    if (key >= Tk || (causal && key > row + shift)) v = neg_inf_f();
                }
                s[nt][c] = v;
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = neg_inf_f();
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mnew = fmaxf(m[h], mx);
            const float base = mnew == neg_inf_f() ? 0.f : mnew;
            const float alpha = exp2f(m[h] - base);
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
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
        for (int kc = 0; kc < 4; ++kc) {
            u32 pa[4];
            pa[0] = pack2(s[2 * kc][0], s[2 * kc][1]);
            pa[1] = pack2(s[2 * kc][2], s[2 * kc][3]);
            pa[2] = pack2(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            pa[3] = pack2(s[2 * kc + 1][2], s[2 * kc + 1][3]);
            mma_pv<D>(o, pa, Vs, kc * 16);
        }
        __syncthreads();
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float lt = l[h];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        const int row = q0 + gid + 8 * h;
        const float inv = lt > 0.f ? 1.f / lt : 0.f;
        if (row < Tq) {
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd)
                *reinterpret_cast<u32*>(O + (i64)row * D + nd * 8 + tig * 2) =
                    pack2(o[nd][2 * h] * inv, o[nd][2 * h + 1] * inv);
            if (tig == 0) L[row] = lt > 0.f ? (m[h] + log2f(lt)) * 0.6931471805599453f : neg_inf_f();
        }
    }
}

template <int D>
__global__ void __launch_bounds__(128) flash_bwd(const half_t* __restrict__ Q, const half_t* __restrict__ K,
        const half_t* __restrict__ V, const half_t* __restrict__ dO, const float* __restrict__ L,
        const float* __restrict__ Dl, float* __restrict__ dQ, half_t* __restrict__ dK, half_t* __restrict__ dV,
        int Tq, int Tk, float scale, int causal) {
    // dynamic shared memory (over 48 KB for D = 64): Q and dO tiles in two stages, K, dS^T, lse and delta
    extern __shared__ __align__(16) unsigned char fa_smem[];
    constexpr int TILE = 64 * (D + 8);
    half_t* Qsm = reinterpret_cast<half_t*>(fa_smem);
    half_t* dOsm = Qsm + 2 * TILE;
    half_t* Ks = dOsm + 2 * TILE;
    half_t* dSs = Ks + TILE;
    float* lse_s = reinterpret_cast<float*>(dSs + 64 * 72);
    float* del_s = lse_s + 64;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const i64 bh = blockIdx.y;
    Q += bh * Tq * D; dO += bh * Tq * D; dQ += bh * Tq * D; L += bh * Tq; Dl += bh * Tq;
    K += bh * Tk * D; V += bh * Tk * D; dK += bh * Tk * D; dV += bh * Tk * D;
    const int kblock = blockIdx.x * 64;
    const int kw0 = kblock + warp * 16;
    const int shift = Tk - Tq;
    const float scale_log2 = scale * LOG2E;
    u32 ka[D / 16][4], va[D / 16][4];
    load_a_frags<D>(ka, K, kw0, Tk);
    load_a_frags<D>(va, V, kw0, Tk);
    load_tile<D>(Ks, K, kblock, Tk);
    float dv[D / 8][4], dk[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) { dv[i][c] = 0.f; dk[i][c] = 0.f; }
    int qstart = 0;
    if (causal) qstart = max(0, kblock - shift) / 64 * 64;
    if (qstart < Tq) {
        load_tile_async<D>(Qsm, Q, qstart, Tq);
        load_tile_async<D>(dOsm, dO, qstart, Tq);
        cp_async_commit();
    }
    int it = 0;
    for (int qt = qstart; qt < Tq; qt += 64, ++it) {
        const int buf = it & 1;
        if (qt + 64 < Tq) {   // stage buf ^ 1 was released by the barrier that ended the last tile
            load_tile_async<D>(Qsm + (buf ^ 1) * TILE, Q, qt + 64, Tq);
            load_tile_async<D>(dOsm + (buf ^ 1) * TILE, dO, qt + 64, Tq);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        const half_t* Qs = Qsm + buf * TILE;
        const half_t* dOs = dOsm + buf * TILE;
        for (int i = threadIdx.x; i < 64; i += blockDim.x) {
            const bool ok = qt + i < Tq;
            lse_s[i] = ok ? L[qt + i] * LOG2E : pos_inf_f();
            del_s[i] = ok ? Dl[qt + i] : 0.f;
        }
        __syncthreads();
        // S^T = K Q^T and dP^T = V dO^T, 16 keys x 64 queries per warp
        float st[8][4], dp[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int c = 0; c < 4; ++c) { st[nt][c] = 0.f; dp[nt][c] = 0.f; }
            mma_abt<D>(st[nt], ka, Qs, nt * 8);
            mma_abt<D>(dp[nt], va, dOs, nt * 8);
        }
        // P^T and dS^T (unscaled) in place
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int ql = nt * 8 + tig * 2 + (c & 1);
                const int key = kw0 + gid + (c >> 1) * 8;
                float p = exp2f(st[nt][c] * scale_log2 - lse_s[ql]);
                if (key >= Tk || (causal && key > qt + ql + shift)) p = 0.f;
                st[nt][c] = p;
                dp[nt][c] = p * (dp[nt][c] - del_s[ql]);
            }
        // dV += P^T dO, dK += dS^T Q (B operands: rows of dOs / Qs, two 16-bit loads each)
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
            u32 pa[4], sa[4];
            pa[0] = pack2(st[2 * kc][0], st[2 * kc][1]);
            pa[1] = pack2(st[2 * kc][2], st[2 * kc][3]);
            pa[2] = pack2(st[2 * kc + 1][0], st[2 * kc + 1][1]);
            pa[3] = pack2(st[2 * kc + 1][2], st[2 * kc + 1][3]);
            sa[0] = pack2(dp[2 * kc][0], dp[2 * kc][1]);
            sa[1] = pack2(dp[2 * kc][2], dp[2 * kc][3]);
            sa[2] = pack2(dp[2 * kc + 1][0], dp[2 * kc + 1][1]);
            sa[3] = pack2(dp[2 * kc + 1][2], dp[2 * kc + 1][3]);
            mma_pv<D>(dv, pa, dOs, kc * 16);
            mma_pv<D>(dk, sa, Qs, kc * 16);
            // dS^T rows (keys) of this warp -> shared memory, [key][query]
            const int kr = warp * 16 + gid;
            *reinterpret_cast<u32*>(dSs + kr * 72 + kc * 16 + tig * 2) = sa[0];
            *reinterpret_cast<u32*>(dSs + (kr + 8) * 72 + kc * 16 + tig * 2) = sa[1];
            *reinterpret_cast<u32*>(dSs + kr * 72 + kc * 16 + 8 + tig * 2) = sa[2];
            *reinterpret_cast<u32*>(dSs + (kr + 8) * 72 + kc * 16 + 8 + tig * 2) = sa[3];
        }
        __syncthreads();
        // dQ (queries warp*16 .. +16 of this tile) = dS K over the block's 64 keys
        float dq[D / 8][4];
#pragma unroll
        for (int i = 0; i < D / 8; ++i) { dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f; }
        // A = dS (rows: queries) is the transpose of dSs: ldmatrix.trans of (8 keys x 8 queries) blocks
        const int j = lane >> 3;
        const half_t* sp = dSs + ((j >> 1) * 8 + (lane & 7)) * 72 + warp * 16 + (j & 1) * 8;
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
            u32 a[4];
            ldsm4t(a, sp + kc * 16 * 72);
            mma_pv<D>(dq, a, Ks, kc * 16);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = qt + warp * 16 + gid + 8 * h;
            if (row < Tq) {
#pragma unroll
                for (int nd = 0; nd < D / 8; ++nd) {
                    float* dst = dQ + (i64)row * D + nd * 8 + tig * 2;
                    atomicAdd(dst, dq[nd][2 * h] * scale);
                    atomicAdd(dst + 1, dq[nd][2 * h + 1] * scale);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int key = kw0 + gid + 8 * h;
        if (key < Tk) {
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd) {
                *reinterpret_cast<u32*>(dK + (i64)key * D + nd * 8 + tig * 2) =
                    pack2(dk[nd][2 * h] * scale, dk[nd][2 * h + 1] * scale);
                *reinterpret_cast<u32*>(dV + (i64)key * D + nd * 8 + tig * 2) = pack2(dv[nd][2 * h], dv[nd][2 * h + 1]);
            }
        }
    }
}
"""

_FWD_D = (32, 64, 128)
_BWD_D = (32, 64)
_mod = LazyModule(_SRC, {"flash_fwd": [str(d) for d in _FWD_D], "flash_bwd": [str(d) for d in _BWD_D]})
_smem_set: dict = {}


def _enabled() -> bool:
    return os.environ.get("TINYGRAD_LLM_FLASH", "").strip().lower() not in ("0", "false", "off", "no")


def _shape_ok(q, k, v) -> bool:
    return (q.dtype == np.float16 and k.dtype == np.float16 and v.dtype == np.float16 and q.ndim >= 2
            and k.shape == v.shape and q.shape[:-2] == k.shape[:-2] and q.shape[-1] == k.shape[-1]
            and q.shape[-2] > 0 and k.shape[-2] > 0)


def supports(q, k, v) -> bool:
    """Whether the flash forward handles these inputs (float16, D in 32/64/128)."""
    return _enabled() and _shape_ok(q, k, v) and q.shape[-1] in _FWD_D


def supports_backward(q, k, v) -> bool:
    """Whether the flash backward handles these inputs (float16, D in 32/64)."""
    return _enabled() and _shape_ok(q, k, v) and q.shape[-1] in _BWD_D


def _aligned(x):
    x = contiguous(x)
    if x.data.ptr % 16:
        x = x.copy()
    return x


def flash_forward(q, k, v, causal, scale):
    """(o, lse): o (..., Tq, D) float16, lse (..., Tq) float32."""
    cp = require_cupy()
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"attention: causal needs Tq <= Tk, got {q.shape[-2]} > {k.shape[-2]}")
    q, k, v = _aligned(q), _aligned(k), _aligned(v)
    Tq, D = q.shape[-2:]
    Tk = k.shape[-2]
    BH = int(np.prod(q.shape[:-2]))
    o = cp.empty_like(q)
    lse = cp.empty(q.shape[:-1], np.float32)
    _mod.kernel("flash_fwd", str(D))(((Tq + 63) // 64, BH), (128,),
                                     (q, k, v, o, lse, np.int32(Tq), np.int32(Tk),
                                      np.float32(scale * math.log2(math.e)), np.int32(bool(causal))))
    return o, lse


def flash_backward(q, k, v, o, lse, do, causal, scale):
    """(dq, dk, dv) float16 (dq accumulated in float32)."""
    cp = require_cupy()
    q, k, v, do = _aligned(q), _aligned(k), _aligned(v), _aligned(do.astype(np.float16, copy=False))
    Tq, D = q.shape[-2:]
    Tk = k.shape[-2]
    BH = int(np.prod(q.shape[:-2]))
    delta = cp.sum(do.astype(np.float32) * o.astype(np.float32), axis=-1)
    lse = contiguous(lse.astype(np.float32, copy=False))
    dq = cp.zeros(q.shape, np.float32)
    dk = cp.empty_like(k)
    dv = cp.empty_like(v)
    kern = _mod.kernel("flash_bwd", str(D))
    smem = (5 * 64 * (D + 8) + 64 * 72) * 2 + 2 * 64 * 4
    key = (id(kern), cp.cuda.Device().id)   # the attribute belongs to the function loaded on this GPU
    if _smem_set.get(key) != smem:   # opt in to more than 48 KB of dynamic shared memory
        kern.max_dynamic_shared_size_bytes = smem
        _smem_set[key] = smem
    kern(((Tk + 63) // 64, BH), (128,),
         (q, k, v, do, lse, delta, dq, dk, dv, np.int32(Tq), np.int32(Tk), np.float32(scale), np.int32(bool(causal))),
         shared_mem=smem)
    return dq.astype(np.float16), dk, dv
