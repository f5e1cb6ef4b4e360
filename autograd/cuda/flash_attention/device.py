"""CUDA device functions the flash-attention kernels share: tensor-core products (mma.sync m16n8k16 on float16 or
bfloat16, chosen by ``BF``), ldmatrix loads, cp.async tile copies into padded shared-memory tiles, 16-bit packing,
and the dropout keep bits of a Philox draw (``autograd/cuda/philox.py``'s ``PHILOX_DEVICE`` comes first, then ``FAST_MATH``'s exp2_fast)."""
from __future__ import annotations

from .._common import FAST_MATH
from ..philox import PHILOX_DEVICE

DEVICE_SRC = PHILOX_DEVICE + FAST_MATH + r"""
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
// Masks NB 8-key blocks of scores of a thread's rows row0 and row0 + 8 (block j: keys key0 + 8 j, + 1, with key0 =
// the tile's first key + 2 tig): keys past Tk and, when causal, keys after the row's last visible one become -inf
template <int NB>
__device__ __forceinline__ void mask_tile(float* s, int row0, int key0, int Tk, int causal, int shift) {
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int key = key0 + j * 8 + (c & 1), row = row0 + (c >> 1) * 8;
            if (key >= Tk || (causal && key > row + shift)) s[4 * j + c] = neg_inf_f();
        }
}
// One tile of the online softmax for a thread's two accumulator rows (hh = 0: row gid, 1: row gid + 8): s holds NB
// 8-key blocks of scores (4 values each: rows hh at 2 hh, 2 hh + 1), replaced by p = 2^(s scale_log2 - m scale_log2)
// (one FMA and one ex2 per score, m the running max in raw score units); l gets the rescaled running sum, alpha the
// factor the output rows must be rescaled by. The row max and sum span the 4 lanes of a row.
template <int NB>
__device__ __forceinline__ void online_softmax_p(float* s, float* m, float* l, float* alpha, float scale_log2) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        float mx = neg_inf_f();
#pragma unroll
        for (int j = 0; j < NB; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hh], s[4 * j + 2 * hh + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(m[hh], mx);
        const float base = mnew == neg_inf_f() ? 0.f : mnew * scale_log2;
        alpha[hh] = exp2_fast(m[hh] * scale_log2 - base);
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            const float p0 = exp2_fast(fmaf(s[4 * j + 2 * hh], scale_log2, -base));
            const float p1 = exp2_fast(fmaf(s[4 * j + 2 * hh + 1], scale_log2, -base));
            s[4 * j + 2 * hh] = p0; s[4 * j + 2 * hh + 1] = p1;
            sum += p0 + p1;
        }
        l[hh] = l[hh] * alpha[hh] + sum;
        m[hh] = mnew;
    }
}
// ND 8-column blocks of a thread's two output rows times alpha[0] (row gid) and alpha[1] (row gid + 8)
template <int ND>
__device__ __forceinline__ void rescale_rows(float* o, const float* alpha) {
#pragma unroll
    for (int j = 0; j < ND; ++j) {
        o[4 * j] *= alpha[0]; o[4 * j + 1] *= alpha[0];
        o[4 * j + 2] *= alpha[1]; o[4 * j + 3] *= alpha[1];
    }
}
// online_softmax_p and the output rows' rescale in one step
template <int NB, int ND>
__device__ __forceinline__ void online_softmax_tile(float* s, float* o, float* m, float* l, float scale_log2) {
    float alpha[2];
    online_softmax_p<NB>(s, m, l, alpha, scale_log2);
    rescale_rows<ND>(o, alpha);
}
// The forward's end for a thread's rows row0 and row0 + 8: O = o / l (times drop_scale) as 16-bit values at row
// stride o_st, lse = (m scale_log2 + log2 l) ln 2 (float32, -inf for a row that saw no key)
template <int D, bool BF>
__device__ __forceinline__ void store_out_rows(b16* O, float* L, const float* o, const float* m, const float* l,
                                               int row0, int Tq, i64 o_st, float scale_log2, float drop_scale) {
    const int tig = threadIdx.x & 3;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        float lt = l[hh];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        const int row = row0 + 8 * hh;
        const float inv = lt > 0.f ? drop_scale / lt : 0.f;
        if (row < Tq) {
#pragma unroll
            for (int j = 0; j < D / 8; ++j)
                *reinterpret_cast<u32*>(O + (i64)row * o_st + j * 8 + tig * 2) =
                    pack2<BF>(o[4 * j + 2 * hh] * inv, o[4 * j + 2 * hh + 1] * inv);
            if (tig == 0) L[row] = lt > 0.f ? (m[hh] * scale_log2 + log2f(lt)) * 0.6931471805599453f : neg_inf_f();
        }
    }
}
// Dropout of one 8-key block of accumulator rows (S, P: rows are queries): v[c] is query row0 + 8 (c >> 1), key
// key0 + (c & 1), with key0 = the block's first key + 2 tig; a dropped value becomes 0. The draw element of (row, key)
// is ebase + row Tk + key. When Tk is a multiple of 4 a Philox block (4 keys) starts at a key multiple of 4, and
// lanes tig and tig ^ 1 need one block for rows row0 and row0 + 8: each draws it for one row and hands its partner the
// two words the partner's keys need.
__device__ __forceinline__ void drop_row_block(float* v, int row0, int key0, int Tk, long long ebase,
                                               unsigned long long doff, unsigned long long dseed, float p) {
    bool kb[2][2];
    if ((Tk & 3) == 0) {
        const int mine = (threadIdx.x & 3) & 1;
        u32 c[4];
        philox4(doff + (unsigned long long)((ebase + (long long)(row0 + mine * 8) * Tk + (key0 & ~3)) >> 2), dseed, c);
        const u32 ra = __shfl_xor_sync(0xffffffffu, mine ? c[0] : c[2], 1);
        const u32 rb = __shfl_xor_sync(0xffffffffu, mine ? c[1] : c[3], 1);
        const bool own0 = philox_word_keeps(mine ? c[2] : c[0], p);
        const bool own1 = philox_word_keeps(mine ? c[3] : c[1], p);
        const bool got0 = philox_word_keeps(ra, p), got1 = philox_word_keeps(rb, p);
        kb[0][0] = mine ? got0 : own0; kb[0][1] = mine ? got1 : own1;
        kb[1][0] = mine ? own0 : got0; kb[1][1] = mine ? own1 : got1;
    } else {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh)
            keep_pair(ebase + (long long)(row0 + hh * 8) * Tk + key0, doff, dseed, p, kb[hh][0], kb[hh][1]);
    }
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        if (!kb[hh][0]) v[2 * hh] = 0.f;
        if (!kb[hh][1]) v[2 * hh + 1] = 0.f;
    }
}
// Keep bits of one 8-query block of transposed accumulator rows (S^T, P^T: rows are keys): kp[c] for key
// kw0 + gid + 8 (c >> 1) and query q0 + (c & 1), with kw0 = the warp's first key and q0 = the block's first query +
// 2 tig. When Tk is a multiple of 4 the lanes gid = 4m .. 4m + 3 (one tig) hold 4 consecutive keys: one Philox block
// per (query, key group) serves all four. Lane r = gid & 3 draws combination r (query column r >> 1, key group r & 1);
// in 4 rounds every lane fetches its word (r) of each combination's block.
__device__ __forceinline__ void keep_col_block(bool* kp, int kw0, int q0, int Tk, long long ebase,
                                               unsigned long long doff, unsigned long long dseed, float p) {
    const int lane = threadIdx.x & 31, gid = lane >> 2;
    if ((Tk & 3) == 0) {
        const int r = gid & 3, m = gid >> 2;
        u32 w[4];
        const long long eq = ebase + (long long)(q0 + (r >> 1)) * Tk + kw0 + 8 * (r & 1) + 4 * m;
        philox4(doff + (unsigned long long)(eq >> 2), dseed, w);
        bool ks[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const int src = (r + t) & 3;   // this round: word r of combination src
            const u32 got = __shfl_sync(0xffffffffu, word_of(w, (r - t) & 3), (lane & ~12) | (src << 2));
            const bool kk = philox_word_keeps(got, p);
#pragma unroll
            for (int s2 = 0; s2 < 4; ++s2) if (src == s2) ks[s2] = kk;
        }
        kp[0] = ks[0]; kp[1] = ks[2]; kp[2] = ks[1]; kp[3] = ks[3];   // element c <-> combination
    } else {
#pragma unroll
        for (int c = 0; c < 4; ++c)
            kp[c] = keep_one(ebase + (long long)(q0 + (c & 1)) * Tk + kw0 + gid + (c >> 1) * 8, doff, dseed, p);
    }
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
template <int ROWS, int THREADS = 0>   // THREADS: the block's threads when known (>= 2 ROWS: one copy per thread)
__device__ __forceinline__ void load_rows_async(float* ls, float* ds, const float* L, const float* Dl, i64 base,
                                                int row0, int T) {
    if constexpr (THREADS >= 2 * ROWS) {
        const int i = threadIdx.x % ROWS;
        const bool ok = row0 + i < T;
        const i64 off = base + (ok ? row0 + i : 0);
        if (threadIdx.x < ROWS) cp_async4(ls + i, L + off, ok ? 4 : 0);
        else if (threadIdx.x < 2 * ROWS) cp_async4(ds + i, Dl + off, ok ? 4 : 0);
    } else {
        for (int i = threadIdx.x; i < ROWS; i += blockDim.x) {
            const bool ok = row0 + i < T;
            const i64 off = base + (ok ? row0 + i : 0);
            cp_async4(ls + i, L + off, ok ? 4 : 0);
            cp_async4(ds + i, Dl + off, ok ? 4 : 0);
        }
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

"""
