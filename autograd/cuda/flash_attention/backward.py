"""The flash-attention backward kernels (CUDA source): delta = rowsum(dO O), the backward proper (dK, dV per key
block, dQ by float32 atomics), and the dQ conversion; see the package's description for the tiling."""
from __future__ import annotations

BACKWARD_SRC = r"""
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

// the same with 16-byte loads: D / 8 threads a row (D a power of two, 16-byte aligned rows), their partial sums
// combined by shuffles
template <int D, bool BF>
__global__ void flash_bwd_delta_vec(const b16* __restrict__ O, const b16* __restrict__ dO, float* __restrict__ Dl,
        int Tq, int H, i64 rows, i64 o_sb, i64 o_sh, i64 o_st, i64 do_sb, i64 do_sh, i64 do_st) {
    constexpr int TPR = D / 8;
    const i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const i64 r = t / TPR;
    const int part = (int)(t % TPR);
    float acc = 0.f;
    if (r < rows) {
        const i64 bh = r / Tq, i = r % Tq, b = bh / H, h = bh % H;
        const uint4 ov = *reinterpret_cast<const uint4*>(O + b * o_sb + h * o_sh + i * o_st + part * 8);
        const uint4 gv = *reinterpret_cast<const uint4*>(dO + b * do_sb + h * do_sh + i * do_st + part * 8);
        const u32 ow[4] = {ov.x, ov.y, ov.z, ov.w}, gw[4] = {gv.x, gv.y, gv.z, gv.w};
#pragma unroll
        for (int c = 0; c < 4; ++c)
            acc += to_f32<BF>((b16)(ow[c] & 0xffffu)) * to_f32<BF>((b16)(gw[c] & 0xffffu))
                 + to_f32<BF>((b16)(ow[c] >> 16)) * to_f32<BF>((b16)(gw[c] >> 16));
    }
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (r < rows && part == 0) Dl[r] = acc;
}

// dq (16-bit) from the float32 accumulator, both contiguous: 8 values a thread (16-byte stores), n8 = size / 8
template <bool BF>
__global__ void flash_dq_out(const float* __restrict__ acc, b16* __restrict__ dq, i64 n8) {
    const i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n8) return;
    const float4 a = reinterpret_cast<const float4*>(acc)[2 * k], c = reinterpret_cast<const float4*>(acc)[2 * k + 1];
    reinterpret_cast<uint4*>(dq)[k] = make_uint4(pack2<BF>(a.x, a.y), pack2<BF>(a.z, a.w), pack2<BF>(c.x, c.y),
                                                 pack2<BF>(c.z, c.w));
}

// Backward: one block per 64 keys of one key/value head; it walks the query tiles of every query head that
// reads this key/value head (rep of them), so dK and dV are summed over the group in registers. D <= 64: K and V
// fragments stay in registers, 64-query tiles; D = 128: K and V fragments are read from shared memory and the
// query tiles are 32 rows (the dK and dV accumulators take 128 registers).
template <int D, int QT, bool KREG, bool BF, bool DROP>
__global__ void __launch_bounds__(128, (QT == 32 && D <= 64) ? 3 : 1) flash_bwd(const b16* __restrict__ Q,
        const b16* __restrict__ K,
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
    const GridYX blk = grid_y_fastest();   // causal: a head's first key block is its longest
    const int Hk = H / rep, bk = blk.y, b = bk / Hk, hk = bk % Hk;
    K += b * kv_sb + hk * kv_sh; V += b * kv_sb + hk * kv_sh;
    dK += b * g_sb + hk * g_sh; dV += b * g_sb + hk * g_sh;
    const int kblock = blk.x * 64;
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
                for (int r = 0; r < 4; ++r) {
                    k0a[r] = ka[kc][r]; k1a[r] = ka[kc + 1][r]; v0a[r] = va[kc][r]; v1a[r] = va[kc + 1][r];
                }
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
#pragma unroll
        for (int nt = 0; nt < QT / 8; ++nt) {
            bool kp[4] = {true, true, true, true};
            if constexpr (DROP) keep_col_block(kp, kw0, qt + nt * 8 + tig * 2, Tk, ebase, doff, dseed, drop_p);
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int ql = nt * 8 + tig * 2 + (c & 1);
                const int key = kw0 + gid + (c >> 1) * 8;
                float p = exp2_fast(fmaf(st[nt][c], scale_log2, -lse_t[ql] * LOG2E));
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
