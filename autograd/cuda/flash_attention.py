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

Handles: float16 or bfloat16 q (B, H, Tq, D), k and v (B, Hk, Tk, D) with Hk dividing H, D in {32, 64, 96, 128};
any strides with unit stride along D and 16-byte aligned rows (other arrays are copied). The output is stored
(B, Tq, H, D), so merging the heads costs nothing. Everything else goes to the GEMM version in attention.py, which
also serves as the reference in the tests. ``TINYGRAD_LLM_FLASH=0`` switches these kernels off.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..dtypes import is_bfloat16
from ._common import LazyModule, require_cupy
from .philox import PHILOX_DEVICE

_SRC = PHILOX_DEVICE + r"""
typedef unsigned int u32;
typedef unsigned short b16;   // the raw 16 bits of a float16 or bfloat16 value (BF selects which)
#define LOG2E 1.4426950408889634f

template <bool BF>
__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
    if constexpr (BF)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// two floats -> one register of two 16-bit values (lo in the low half)
template <bool BF>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    u32 r;
    if constexpr (BF) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <bool BF>
__device__ __forceinline__ float to_f32(b16 h) {
    if constexpr (BF) return __uint_as_float(((u32)h) << 16);
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
// 2^x in one MUFU instruction (flush-to-zero: exp2f's subnormal handling costs more instructions per element)
__device__ __forceinline__ float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
__device__ __forceinline__ u32 ld32(const b16* p) { return *reinterpret_cast<const u32*>(p); }
__device__ __forceinline__ u32 word_of(const u32* c, int i) { return i == 0 ? c[0] : i == 1 ? c[1] : i == 2 ? c[2] : c[3]; }
// keep bits of draw elements e and e + 1 (a pair of neighbouring keys of one query row)
__device__ __forceinline__ void keep_pair(long long e, unsigned long long off, unsigned long long seed, float p,
                                          bool& k0, bool& k1) {
    u32 c[4];
    philox4(off + (unsigned long long)(e >> 2), seed, c);
    const int i = (int)(e & 3);
    k0 = philox_word_keeps(word_of(c, i), p);
    if (i == 3) {
        philox4(off + (unsigned long long)((e + 1) >> 2), seed, c);
        k1 = philox_word_keeps(c[0], p);
    } else {
        k1 = philox_word_keeps(word_of(c, i + 1), p);
    }
}
__device__ __forceinline__ bool keep_one(long long e, unsigned long long off, unsigned long long seed, float p) {
    u32 c[4];
    philox4(off + (unsigned long long)(e >> 2), seed, c);
    return philox_word_keeps(word_of(c, (int)(e & 3)), p);
}
__device__ __forceinline__ u32 smem_addr(const b16* p) {
    unsigned long long a; asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p)); return (u32)a;
}
// four 8x8 half matrices from shared memory; lane l gives the address of row (l & 7) of matrix (l >> 3)
__device__ __forceinline__ void ldsm4(u32* r, const b16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)) : "memory");
}
__device__ __forceinline__ void ldsm4t(u32* r, const b16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)) : "memory");
}
// S[nt] (16 x 8) += A (16 x D, fragments a) . B^T where B rows are 8 rows of a (rows, D + 8) tile starting at row0
template <int D, bool BF>
__device__ __forceinline__ void mma_abt(float* c, const u32 (*a)[4], const b16* tile, int row0) {
    const int lane = threadIdx.x & 31;
    const b16* p = tile + (row0 + (lane & 7)) * (D + 8) + (lane >> 3) * 8;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc += 2) {
        u32 b[4];
        ldsm4(b, p + kc * 16);
        mma16816<BF>(c, a[kc], b[0], b[1]);
        mma16816<BF>(c, a[kc + 1], b[2], b[3]);
    }
}
// O[nd] (16 x 8 each, all D/8 of them) += P (16 x 16, fragment pa) . tile rows [k0, k0 + 16) (16 x D)
// (NC columns from c0: o holds NC / 8 tiles)
template <int D, bool BF, int NC = D>
__device__ __forceinline__ void mma_pv(float (*o)[4], const u32* pa, const b16* tile, int k0, int c0 = 0) {
    const int lane = threadIdx.x & 31, j = lane >> 3;
    const b16* p = tile + (k0 + (j & 1) * 8 + (lane & 7)) * (D + 8) + c0 + (j >> 1) * 8;
#pragma unroll
    for (int nd = 0; nd < NC / 8; nd += 2) {
        u32 b[4];
        ldsm4t(b, p + nd * 8);
        mma16816<BF>(o[nd], pa, b[0], b[1]);
        mma16816<BF>(o[nd + 1], pa, b[2], b[3]);
    }
}

// copy rows [row0, row0 + ROWS) of a (T, D) matrix with row stride ld into shared memory with row stride D + 8;
// zero rows >= T
template <int D, int ROWS = 64>
__device__ __forceinline__ void load_tile(b16* dst, const b16* src, i64 ld, int row0, int T) {
    constexpr int VPR = D / 8;                 // 16-byte vectors per row
    for (int idx = threadIdx.x; idx < ROWS * VPR; idx += blockDim.x) {
        const int r = idx / VPR, c = (idx % VPR) * 8;
        uint4 val = make_uint4(0u, 0u, 0u, 0u);
        if (row0 + r < T) val = *reinterpret_cast<const uint4*>(src + (i64)(row0 + r) * ld + c);
        *reinterpret_cast<uint4*>(dst + r * (D + 8) + c) = val;
    }
}

__device__ __forceinline__ void cp_async16(b16* dst, const b16* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}
// load_tile through the async copy engine (rows >= T are zero-filled: source size 0)
template <int D, int ROWS = 64>
__device__ __forceinline__ void load_tile_async(b16* dst, const b16* src, i64 ld, int row0, int T) {
    constexpr int VPR = D / 8;
    for (int idx = threadIdx.x; idx < ROWS * VPR; idx += blockDim.x) {
        const int r = idx / VPR, c = (idx % VPR) * 8;
        const bool ok = row0 + r < T;
        cp_async16(dst + r * (D + 8) + c, src + (i64)(ok ? row0 + r : 0) * ld + c, ok ? 16 : 0);
    }
}

// 4-byte async copy (zero-filled when src_bytes is 0)
__device__ __forceinline__ void cp_async4(float* dst, const float* src, int src_bytes) {
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"((u32)a), "l"(src), "r"(src_bytes) : "memory");
}
// lse and delta of the rows [row0, row0 + ROWS) of one head (row offset base) into shared memory; rows >= T read as
// 0 (harmless: their Q and dO rows are zero-filled too, so they add nothing)
template <int ROWS>
__device__ __forceinline__ void load_rows_async(float* ls, float* ds, const float* L, const float* Dl, i64 base,
                                                int row0, int T) {
    for (int i = threadIdx.x; i < ROWS; i += blockDim.x) {
        const bool ok = row0 + i < T;
        const i64 off = base + (ok ? row0 + i : 0);
        cp_async4(ls + i, L + off, ok ? 4 : 0);
        cp_async4(ds + i, Dl + off, ok ? 4 : 0);
    }
}

// A fragments (16 rows x 16 columns from c) of rows [r0, r0 + 16) of a shared-memory tile with row stride D + 8
template <int D>
__device__ __forceinline__ void ldsm_a(u32* a, const b16* tile, int r0, int c) {
    const int lane = threadIdx.x & 31;
    ldsm4(a, tile + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * (D + 8) + c + (lane >> 4) * 8);
}

// A fragments (16 rows x D) of rows [r0, r0 + 16) of a (T, D) matrix with row stride ld, from global memory
template <int D>
__device__ __forceinline__ void load_a_frags(u32 (*a)[4], const b16* src, i64 ld, int r0, int T) {
    const int lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int ra = r0 + gid, rb = r0 + gid + 8;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
        const int c = kc * 16 + tig * 2;
        a[kc][0] = ra < T ? ld32(src + (i64)ra * ld + c) : 0u;
        a[kc][1] = rb < T ? ld32(src + (i64)rb * ld + c) : 0u;
        a[kc][2] = ra < T ? ld32(src + (i64)ra * ld + c + 8) : 0u;
        a[kc][3] = rb < T ? ld32(src + (i64)rb * ld + c + 8) : 0u;
    }
}

// Layout of the 4-D arrays: element (b, h, t, d) of X sits at X + b * sb + h * sh + t * st + d (strides in
// elements). Query head h reads key/value head h / rep (grouped-query attention: H = Hk * rep).
// Dropout (DROP): the probabilities of query i and key j of head (b, h) are dropped as element
// ((b H + h) Tq + i) Tk + j of a Philox draw of shape (B, H, Tq, Tk) from drop_state = [seed, offset]
// (autograd/cuda/philox.py): the same mask the composed path's dropout would draw from that state.
template <int D, int MT, bool BF, bool DROP>
__global__ void __launch_bounds__(128) flash_fwd(const b16* __restrict__ Q, const b16* __restrict__ K,
        const b16* __restrict__ V, b16* __restrict__ O, float* __restrict__ L, int Tq, int Tk, int H, int rep,
        i64 q_sb, i64 q_sh, i64 q_st, i64 kv_sb, i64 kv_sh, i64 kv_st, i64 o_sb, i64 o_sh, i64 o_st,
        float scale_log2, int causal, float drop_p, float drop_scale, const long long* __restrict__ drop_state) {
    // MT: 16-row query tiles per warp (each K/V fragment read from shared memory serves MT of them)
    constexpr int QB = 64 * MT;           // queries per block (4 warps)
    constexpr int TILE = 64 * (D + 8);
    // dynamic shared memory, two stages of K and V (the next tile loads while this one is used): 2 x 2 x TILE
    extern __shared__ __align__(16) unsigned char fa_smem[];
    b16* const Kst = reinterpret_cast<b16*>(fa_smem);
    b16* const Vst = Kst + 2 * TILE;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int bh = blockIdx.y, b = bh / H, h = bh % H, hk = h / rep;
    Q += b * q_sb + h * q_sh; O += b * o_sb + h * o_sh; L += (i64)bh * Tq;
    K += b * kv_sb + hk * kv_sh; V += b * kv_sb + hk * kv_sh;
    const int qblock = (gridDim.x - 1 - blockIdx.x) * QB;   // causal: the longest rows start first
    const int q0 = qblock + warp * 16 * MT;
    const int shift = Tk - Tq;
    unsigned long long dseed = 0, doff = 0;
    long long ebase = 0;
    if constexpr (DROP) {
        dseed = (unsigned long long)drop_state[0];
        doff = (unsigned long long)drop_state[1];
        ebase = (long long)bh * Tq * Tk;
    }
    u32 qa[MT][D / 16][4];
    float o[MT][D / 8][4];
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        load_a_frags<D>(qa[mt], Q, q_st, q0 + 16 * mt, Tq);
#pragma unroll
        for (int i = 0; i < D / 8; ++i) { o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f; }
        m[mt][0] = m[mt][1] = neg_inf_f();
        l[mt][0] = l[mt][1] = 0.f;
    }
    int kend = Tk;
    if (causal) {
        const int qlast = min(qblock + QB - 1, Tq - 1);
        kend = min(Tk, qlast + shift + 1);
    }
    const int ntiles = (kend + 63) / 64;
    load_tile_async<D>(Kst, K, kv_st, 0, Tk);
    load_tile_async<D>(Vst, V, kv_st, 0, Tk);
    cp_async_commit();
    for (int kt = 0; kt < ntiles; ++kt) {
        const int k0 = kt * 64;
        const int buf = kt & 1;
        if (kt + 1 < ntiles) {   // buffer buf ^ 1 was released by the barrier that ended the last tile
            load_tile_async<D>(Kst + (buf ^ 1) * TILE, K, kv_st, k0 + 64, Tk);
            load_tile_async<D>(Vst + (buf ^ 1) * TILE, V, kv_st, k0 + 64, Tk);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        const b16* Ks = Kst + buf * TILE;
        const b16* Vs = Vst + buf * TILE;
        __syncthreads();
        // S = Q K^T for MT x 16 queries and 64 keys: one ldmatrix of K serves every query tile of the warp
        float s[MT][8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
            const b16* kp = Ks + (nt * 8 + (lane & 7)) * (D + 8) + (lane >> 3) * 8;
#pragma unroll
            for (int kc = 0; kc < D / 16; kc += 2) {
                u32 bk[4];
                ldsm4(bk, kp + kc * 16);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816<BF>(s[mt][nt], qa[mt][kc], bk[0], bk[1]);
                    mma16816<BF>(s[mt][nt], qa[mt][kc + 1], bk[2], bk[3]);
                }
            }
        }
        const bool need_mask = (k0 + 64 > Tk) || (causal && k0 + 63 > q0 + shift);
        if (need_mask) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const int key = k0 + nt * 8 + tig * 2 + (c & 1);
                        const int row = q0 + 16 * mt + gid + (c >> 1) * 8;
                        if (key >= Tk || (causal && key > row + shift)) s[mt][nt][c] = neg_inf_f();
                    }
        }
        // running max m in raw score units; p = 2^(s scale_log2 - m scale_log2): one FMA and one ex2 per score
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                float mx = neg_inf_f();
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hh], s[mt][nt][2 * hh + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mnew = fmaxf(m[mt][hh], mx);
                const float base = mnew == neg_inf_f() ? 0.f : mnew * scale_log2;
                const float alpha = ex2(m[mt][hh] * scale_log2 - base);
                float sum = 0.f;
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    const float p0 = ex2(fmaf(s[mt][nt][2 * hh], scale_log2, -base));
                    const float p1 = ex2(fmaf(s[mt][nt][2 * hh + 1], scale_log2, -base));
                    s[mt][nt][2 * hh] = p0; s[mt][nt][2 * hh + 1] = p1;
                    sum += p0 + p1;
                }
                l[mt][hh] = l[mt][hh] * alpha + sum;
                m[mt][hh] = mnew;
#pragma unroll
                for (int nd = 0; nd < D / 8; ++nd) { o[mt][nd][2 * hh] *= alpha; o[mt][nd][2 * hh + 1] *= alpha; }
            }
        if constexpr (DROP) {   // the normaliser l counts every probability; only the kept ones reach O
            const bool quad = (Tk & 3) == 0;   // then a Philox block (4 keys) starts at a key multiple of 4
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    const int key = k0 + nt * 8 + tig * 2;
                    bool kb[2][2];
                    if (quad) {
                        // lanes tig and tig ^ 1 need one block of 4 keys for rows gid and gid + 8: each draws it for
                        // one row (mine) and hands its partner the two words the partner's keys need
                        const int mine = tig & 1;
                        const int row = q0 + 16 * mt + gid + mine * 8;
                        u32 c[4];
                        philox4(doff + (unsigned long long)((ebase + (long long)row * Tk + (key & ~3)) >> 2), dseed, c);
                        const u32 ra = __shfl_xor_sync(0xffffffffu, mine ? c[0] : c[2], 1);
                        const u32 rb = __shfl_xor_sync(0xffffffffu, mine ? c[1] : c[3], 1);
                        const bool own0 = philox_word_keeps(mine ? c[2] : c[0], drop_p);
                        const bool own1 = philox_word_keeps(mine ? c[3] : c[1], drop_p);
                        const bool got0 = philox_word_keeps(ra, drop_p), got1 = philox_word_keeps(rb, drop_p);
                        kb[0][0] = mine ? got0 : own0; kb[0][1] = mine ? got1 : own1;
                        kb[1][0] = mine ? own0 : got0; kb[1][1] = mine ? own1 : got1;
                    } else {
#pragma unroll
                        for (int hh = 0; hh < 2; ++hh) {
                            const int row = q0 + 16 * mt + gid + hh * 8;
                            keep_pair(ebase + (long long)row * Tk + key, doff, dseed, drop_p, kb[hh][0], kb[hh][1]);
                        }
                    }
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh) {
                        if (!kb[hh][0]) s[mt][nt][2 * hh] = 0.f;
                        if (!kb[hh][1]) s[mt][nt][2 * hh + 1] = 0.f;
                    }
                }
        }
        // O += P V: P straight from the S accumulators (two 8-key tiles = one 16-key A fragment)
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
            u32 pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                pa[mt][0] = pack2<BF>(s[mt][2 * kc][0], s[mt][2 * kc][1]);
                pa[mt][1] = pack2<BF>(s[mt][2 * kc][2], s[mt][2 * kc][3]);
                pa[mt][2] = pack2<BF>(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1]);
                pa[mt][3] = pack2<BF>(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3]);
            }
            const int j = lane >> 3;
            const b16* vp = Vs + (kc * 16 + (j & 1) * 8 + (lane & 7)) * (D + 8) + (j >> 1) * 8;
#pragma unroll
            for (int nd = 0; nd < D / 8; nd += 2) {
                u32 bv[4];
                ldsm4t(bv, vp + nd * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816<BF>(o[mt][nd], pa[mt], bv[0], bv[1]);
                    mma16816<BF>(o[mt][nd + 1], pa[mt], bv[2], bv[3]);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            float lt = l[mt][hh];
            lt += __shfl_xor_sync(0xffffffffu, lt, 1);
            lt += __shfl_xor_sync(0xffffffffu, lt, 2);
            const int row = q0 + 16 * mt + gid + 8 * hh;
            const float inv = lt > 0.f ? drop_scale / lt : 0.f;
            if (row < Tq) {
#pragma unroll
                for (int nd = 0; nd < D / 8; ++nd)
                    *reinterpret_cast<u32*>(O + (i64)row * o_st + nd * 8 + tig * 2) =
                        pack2<BF>(o[mt][nd][2 * hh] * inv, o[mt][nd][2 * hh + 1] * inv);
                if (tig == 0)
                    L[row] = lt > 0.f ? (m[mt][hh] * scale_log2 + log2f(lt)) * 0.6931471805599453f : neg_inf_f();
            }
        }
}

// delta = rowsum(dO * O) per query row (float32), one warp a row; rows = B H Tq
template <int D, bool BF>
__global__ void flash_bwd_delta(const b16* __restrict__ O, const b16* __restrict__ dO, float* __restrict__ Dl,
        int Tq, int H, i64 rows, i64 o_sb, i64 o_sh, i64 o_st, i64 do_sb, i64 do_sh, i64 do_st) {
    const i64 r = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const i64 bh = r / Tq, i = r % Tq, b = bh / H, h = bh % H;
    const b16* o = O + b * o_sb + h * o_sh + i * o_st;
    const b16* g = dO + b * do_sb + h * do_sh + i * do_st;
    float acc = 0.f;
#pragma unroll
    for (int d = lane * 2; d < D; d += 64) {
        const u32 ov = ld32(o + d), gv = ld32(g + d);
        acc += to_f32<BF>((b16)(ov & 0xffffu)) * to_f32<BF>((b16)(gv & 0xffffu))
             + to_f32<BF>((b16)(ov >> 16)) * to_f32<BF>((b16)(gv >> 16));
    }
    acc = warp_sum(acc);
    if (lane == 0) Dl[r] = acc;
}

// dq (16-bit, strides) from the float32 accumulator (B, H, Tq, D), contiguous
template <int D, bool BF>
__global__ void flash_dq_out(const float* __restrict__ acc, b16* __restrict__ dq, int Tq, int H, i64 pairs,
                             i64 sb, i64 sh, i64 st) {
    const i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= pairs) return;
    const i64 e = 2 * k, row = e / D, d = e % D, bh = row / Tq, i = row % Tq, b = bh / H, h = bh % H;
    const float2 v = *reinterpret_cast<const float2*>(acc + e);
    *reinterpret_cast<u32*>(dq + b * sb + h * sh + i * st + d) = pack2<BF>(v.x, v.y);
}

// Backward: one block per 64 keys of one key/value head; it walks the query tiles of every query head that
// reads this key/value head (rep of them), so dK and dV are summed over the group in registers. D <= 64: K and V
// fragments stay in registers, 64-query tiles; D = 128: K and V fragments are read from shared memory and the
// query tiles are 32 rows (the dK and dV accumulators take 128 registers).
template <int D, int QT, bool KREG, bool BF, bool DROP>
__global__ void __launch_bounds__(128, (QT == 32 && D <= 64) ? 3 : 1) flash_bwd(const b16* __restrict__ Q, const b16* __restrict__ K,
        const b16* __restrict__ V, const b16* __restrict__ dO, const float* __restrict__ L,
        const float* __restrict__ Dl, float* __restrict__ dQ, b16* __restrict__ dK, b16* __restrict__ dV,
        int Tq, int Tk, int H, int rep,
        i64 q_sb, i64 q_sh, i64 q_st, i64 kv_sb, i64 kv_sh, i64 kv_st, i64 do_sb, i64 do_sh, i64 do_st,
        i64 g_sb, i64 g_sh, i64 g_st,
        float scale, int causal, float drop_p, float drop_scale, const long long* __restrict__ drop_state) {
    // QT: queries per tile (64 or 32); KREG: K, V fragments kept in registers (else read from shared memory)
    constexpr int TQ = QT * (D + 8), TK = 64 * (D + 8), SLD = QT + 8;
    constexpr int NC = QT == 64 ? D : D / 2;   // dQ columns per warp (4 warps: 16 queries each; or 16 x D / 2)
    // dynamic shared memory: Q and dO tiles in two stages, K (and V), dS^T, lse and delta
    extern __shared__ __align__(16) unsigned char fa_smem[];
    b16* Qsm = reinterpret_cast<b16*>(fa_smem);
    b16* dOsm = Qsm + 2 * TQ;
    b16* Ks = dOsm + 2 * TQ;
    b16* Vs = Ks + TK;
    b16* dSs = Vs + (KREG ? 0 : TK);
    float* lse_s = reinterpret_cast<float*>(dSs + 64 * SLD);   // two stages of QT, like Q and dO
    float* del_s = lse_s + 2 * QT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int Hk = H / rep, bk = blockIdx.y, b = bk / Hk, hk = bk % Hk;
    K += b * kv_sb + hk * kv_sh; V += b * kv_sb + hk * kv_sh;
    dK += b * g_sb + hk * g_sh; dV += b * g_sb + hk * g_sh;
    const int kblock = blockIdx.x * 64;
    const int kw0 = kblock + warp * 16;
    const int shift = Tk - Tq;
    const float scale_log2 = scale * LOG2E;
    const int dq_row = QT == 64 ? warp * 16 : (warp & 1) * 16, dq_col = QT == 64 ? 0 : (warp >> 1) * NC;
    unsigned long long dseed = 0, doff = 0;
    if constexpr (DROP) {
        dseed = (unsigned long long)drop_state[0];
        doff = (unsigned long long)drop_state[1];
    }
    u32 ka[KREG ? D / 16 : 1][4], va[KREG ? D / 16 : 1][4];
    if constexpr (KREG) {
        load_a_frags<D>(ka, K, kv_st, kw0, Tk);
        load_a_frags<D>(va, V, kv_st, kw0, Tk);
    } else {
        load_tile<D>(Vs, V, kv_st, kblock, Tk);
    }
    load_tile<D>(Ks, K, kv_st, kblock, Tk);
    float dv[D / 8][4], dk[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) { dv[i][c] = 0.f; dk[i][c] = 0.f; }
    int qstart = 0;
    if (causal) qstart = max(0, kblock - shift) / QT * QT;
    const int ntq = qstart < Tq ? (Tq - qstart + QT - 1) / QT : 0;
    const int total = rep * ntq;   // tiles of every query head of the group, one after the other
    if (total > 0) {
        const int h0 = hk * rep;
        load_tile_async<D, QT>(Qsm, Q + b * q_sb + h0 * q_sh, q_st, qstart, Tq);
        load_tile_async<D, QT>(dOsm, dO + b * do_sb + h0 * do_sh, do_st, qstart, Tq);
        load_rows_async<QT>(lse_s, del_s, L, Dl, ((i64)b * H + h0) * Tq, qstart, Tq);
        cp_async_commit();
    }
    for (int it = 0; it < total; ++it) {
        const int buf = it & 1;
        const int h = hk * rep + it / ntq, qt = qstart + (it % ntq) * QT;
        if (it + 1 < total) {   // stage buf ^ 1 was released by the barrier that ended the last tile
            const int hn = hk * rep + (it + 1) / ntq, qn = qstart + ((it + 1) % ntq) * QT;
            load_tile_async<D, QT>(Qsm + (buf ^ 1) * TQ, Q + b * q_sb + hn * q_sh, q_st, qn, Tq);
            load_tile_async<D, QT>(dOsm + (buf ^ 1) * TQ, dO + b * do_sb + hn * do_sh, do_st, qn, Tq);
            load_rows_async<QT>(lse_s + (buf ^ 1) * QT, del_s + (buf ^ 1) * QT, L, Dl, ((i64)b * H + hn) * Tq, qn, Tq);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        const b16* Qs = Qsm + buf * TQ;
        const b16* dOs = dOsm + buf * TQ;
        const float* lse_t = lse_s + buf * QT;
        const float* del_t = del_s + buf * QT;
        const i64 bhq = (i64)b * H + h;
        __syncthreads();
        // S^T = K Q^T and dP^T = V dO^T, 16 keys x QT queries per warp
        float st[QT / 8][4], dp[QT / 8][4];
#pragma unroll
        for (int nt = 0; nt < QT / 8; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) { st[nt][c] = 0.f; dp[nt][c] = 0.f; }
#pragma unroll
        for (int kc = 0; kc < D / 16; kc += 2) {
            u32 k0a[4], k1a[4], v0a[4], v1a[4];
            if constexpr (KREG) {
#pragma unroll
                for (int r = 0; r < 4; ++r) { k0a[r] = ka[kc][r]; k1a[r] = ka[kc + 1][r]; v0a[r] = va[kc][r]; v1a[r] = va[kc + 1][r]; }
            } else {
                ldsm_a<D>(k0a, Ks, warp * 16, kc * 16);
                ldsm_a<D>(k1a, Ks, warp * 16, kc * 16 + 16);
                ldsm_a<D>(v0a, Vs, warp * 16, kc * 16);
                ldsm_a<D>(v1a, Vs, warp * 16, kc * 16 + 16);
            }
#pragma unroll
            for (int nt = 0; nt < QT / 8; ++nt) {
                const int off = (nt * 8 + (lane & 7)) * (D + 8) + kc * 16 + (lane >> 3) * 8;
                u32 bq[4], bd[4];
                ldsm4(bq, Qs + off);
                ldsm4(bd, dOs + off);
                mma16816<BF>(st[nt], k0a, bq[0], bq[1]);
                mma16816<BF>(st[nt], k1a, bq[2], bq[3]);
                mma16816<BF>(dp[nt], v0a, bd[0], bd[1]);
                mma16816<BF>(dp[nt], v1a, bd[2], bd[3]);
            }
        }
        // P^T (dropped and rescaled, for dV) and dS^T (unscaled) in place
        const long long ebase = DROP ? bhq * Tq * Tk : 0;
        const bool quad = (Tk & 3) == 0;   // then a Philox block (4 keys) starts at a key multiple of 4
#pragma unroll
        for (int nt = 0; nt < QT / 8; ++nt) {
            bool kp[4] = {true, true, true, true};
            if constexpr (DROP) {
                if (quad) {
                    // the lanes gid = 4m .. 4m + 3 (one tig) hold 4 consecutive keys: one Philox block per (query,
                    // key group) serves all four. Lane r = gid & 3 draws combination r (query column r >> 1, key
                    // group r & 1); in 4 rounds every lane fetches its word (r) of each combination's block
                    const int r = gid & 3, m = gid >> 2;
                    const int query = qt + nt * 8 + tig * 2 + (r >> 1);
                    u32 w[4];
                    philox4(doff + (unsigned long long)((ebase + (long long)query * Tk + kw0 + 8 * (r & 1) + 4 * m) >> 2),
                            dseed, w);
                    bool ks[4];
#pragma unroll
                    for (int t = 0; t < 4; ++t) {
                        const int src = (r + t) & 3;   // this round: word r of combination src
                        const u32 got = __shfl_sync(0xffffffffu, word_of(w, (r - t) & 3), (lane & ~12) | (src << 2));
                        const bool kk = philox_word_keeps(got, drop_p);
#pragma unroll
                        for (int s2 = 0; s2 < 4; ++s2) if (src == s2) ks[s2] = kk;
                    }
                    kp[0] = ks[0]; kp[1] = ks[2]; kp[2] = ks[1]; kp[3] = ks[3];   // element c <-> combination
                } else {
#pragma unroll
                    for (int c = 0; c < 4; ++c)
                        kp[c] = keep_one(ebase + (long long)(qt + nt * 8 + tig * 2 + (c & 1)) * Tk + kw0 + gid
                                         + (c >> 1) * 8, doff, dseed, drop_p);
                }
            }
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int ql = nt * 8 + tig * 2 + (c & 1);
                const int key = kw0 + gid + (c >> 1) * 8;
                float p = ex2(fmaf(st[nt][c], scale_log2, -lse_t[ql] * LOG2E));
                if (key >= Tk || (causal && key > qt + ql + shift)) p = 0.f;
                float g = dp[nt][c];
                float pd = p;
                if constexpr (DROP) {
                    pd = kp[c] ? p * drop_scale : 0.f;
                    g = kp[c] ? g * drop_scale : 0.f;
                }
                st[nt][c] = pd;
                dp[nt][c] = p * (g - del_t[ql]);
            }
        }
        // dV += P^T dO, dK += dS^T Q (B operands: rows of dOs / Qs)
#pragma unroll
        for (int kc = 0; kc < QT / 16; ++kc) {
            u32 pa[4], sa[4];
            pa[0] = pack2<BF>(st[2 * kc][0], st[2 * kc][1]);
            pa[1] = pack2<BF>(st[2 * kc][2], st[2 * kc][3]);
            pa[2] = pack2<BF>(st[2 * kc + 1][0], st[2 * kc + 1][1]);
            pa[3] = pack2<BF>(st[2 * kc + 1][2], st[2 * kc + 1][3]);
            sa[0] = pack2<BF>(dp[2 * kc][0], dp[2 * kc][1]);
            sa[1] = pack2<BF>(dp[2 * kc][2], dp[2 * kc][3]);
            sa[2] = pack2<BF>(dp[2 * kc + 1][0], dp[2 * kc + 1][1]);
            sa[3] = pack2<BF>(dp[2 * kc + 1][2], dp[2 * kc + 1][3]);
            mma_pv<D, BF>(dv, pa, dOs, kc * 16);
            mma_pv<D, BF>(dk, sa, Qs, kc * 16);
            // dS^T rows (keys) of this warp -> shared memory, [key][query]
            const int kr = warp * 16 + gid;
            *reinterpret_cast<u32*>(dSs + kr * SLD + kc * 16 + tig * 2) = sa[0];
            *reinterpret_cast<u32*>(dSs + (kr + 8) * SLD + kc * 16 + tig * 2) = sa[1];
            *reinterpret_cast<u32*>(dSs + kr * SLD + kc * 16 + 8 + tig * 2) = sa[2];
            *reinterpret_cast<u32*>(dSs + (kr + 8) * SLD + kc * 16 + 8 + tig * 2) = sa[3];
        }
        __syncthreads();
        // dQ (16 queries from dq_row, NC columns from dq_col) = dS K over the block's 64 keys
        float dq[NC / 8][4];
#pragma unroll
        for (int i = 0; i < NC / 8; ++i) { dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f; }
        // A = dS (rows: queries) is the transpose of dSs: ldmatrix.trans of (8 keys x 8 queries) blocks
        const int j = lane >> 3;
        const b16* sp = dSs + ((j >> 1) * 8 + (lane & 7)) * SLD + dq_row + (j & 1) * 8;
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
            u32 a[4];
            ldsm4t(a, sp + kc * 16 * SLD);
            mma_pv<D, BF, NC>(dq, a, Ks, kc * 16, dq_col);
        }
        float* dQh = dQ + bhq * Tq * D;
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int row = qt + dq_row + gid + 8 * hh;
            if (row < Tq) {
#pragma unroll
                for (int nd = 0; nd < NC / 8; ++nd) {
                    float* dst = dQh + (i64)row * D + dq_col + nd * 8 + tig * 2;
                    atomicAdd(dst, dq[nd][2 * hh] * scale);
                    atomicAdd(dst + 1, dq[nd][2 * hh + 1] * scale);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        const int key = kw0 + gid + 8 * hh;
        if (key < Tk) {
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd) {
                *reinterpret_cast<u32*>(dK + (i64)key * g_st + nd * 8 + tig * 2) =
                    pack2<BF>(dk[nd][2 * hh] * scale, dk[nd][2 * hh + 1] * scale);
                *reinterpret_cast<u32*>(dV + (i64)key * g_st + nd * 8 + tig * 2) =
                    pack2<BF>(dv[nd][2 * hh], dv[nd][2 * hh + 1]);
            }
        }
    }
}
"""

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
    "flash_dq_out": [f"{d},{bf}" for d in _FWD_D for bf in _BOOL],
})
_smem_set: dict = {}
_NO_STATE = None


def _enabled() -> bool:
    return os.environ.get("TINYGRAD_LLM_FLASH", "").strip().lower() not in ("0", "false", "off", "no")


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
    mt = 1 if drop == "true" else _FWD_MT[D][0]
    kern = _mod.kernel("flash_fwd", _targs(q.dtype, f"{D},{mt}", drop))
    smem = 2 * 2 * 64 * (D + 8) * 2
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
    _mod.kernel("flash_bwd_delta", _targs(q.dtype, D))(((rows + 7) // 8,), (256,),
                                                      (o, do, delta, np.int32(Tq), np.int32(H), np.int64(rows),
                                                       *so, *sdo))
    dq_acc = cp.zeros((B, H, Tq, D), np.float32)
    dk = cp.empty((B, Hk, Tk, D), q.dtype)
    dv = cp.empty((B, Hk, Tk, D), q.dtype)
    _, sg = _strides(dk)
    p, rinv, state, drop = _drop_args(dropout_p, drop_state)
    qt, kreg = _BWD_TILES[D][-1 if drop == "true" else 0]
    kern = _mod.kernel("flash_bwd", _targs(q.dtype, f"{D},{qt},{kreg}", drop))
    smem = _bwd_smem(D, int(qt), kreg == "true")
    _opt_in(kern, smem)
    kern(((Tk + 63) // 64, B * Hk), (128,),
         (q, k, v, do, lse, delta, dq_acc, dk, dv, np.int32(Tq), np.int32(Tk), np.int32(H), np.int32(H // Hk),
          *sq, *skv, *sdo, *sg, np.float32(scale), np.int32(bool(causal)), p, rinv, state),
         shared_mem=smem)
    dq = cp.empty((B, H, Tq, D), q.dtype)
    _, sdq = _strides(dq)
    pairs = rows * D // 2
    _mod.kernel("flash_dq_out", _targs(q.dtype, D))(((pairs + 255) // 256,), (256,),
                                                   (dq_acc, dq, np.int32(Tq), np.int32(H), np.int64(pairs), *sdq))
    return dq, dk, dv
