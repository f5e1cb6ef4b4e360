"""The flash-attention forward kernel (CUDA source): S = Q K^T, online softmax, O = P V, lse per row; see the
package's description for the tiling."""
from __future__ import annotations

FORWARD_SRC = r"""
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
    const GridYX blk = grid_y_fastest();
    const int bh = blk.y, b = bh / H, h = bh % H, hk = h / rep;
    Q += b * q_sb + h * q_sh; O += b * o_sb + h * o_sh; L += (i64)bh * Tq;
    K += b * kv_sb + hk * kv_sh; V += b * kv_sb + hk * kv_sh;
    const int qblock = (gridDim.x - 1 - blk.x) * QB;   // causal: the longest rows start first
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
            for (int mt = 0; mt < MT; ++mt) mask_tile<8>(&s[mt][0][0], q0 + 16 * mt + gid, k0 + tig * 2, Tk, causal, shift);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) online_softmax_tile<8, D / 8>(&s[mt][0][0], &o[mt][0][0], m[mt], l[mt], scale_log2);
        if constexpr (DROP) {   // the normaliser l counts every probability; only the kept ones reach O
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < 8; ++nt)
                    drop_row_block(s[mt][nt], q0 + 16 * mt + gid, k0 + nt * 8 + tig * 2, Tk, ebase, doff, dseed, drop_p);
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
        store_out_rows<D, BF>(O, L, &o[mt][0][0], m[mt], l[mt], q0 + 16 * mt + gid, Tq, o_st, scale_log2, drop_scale);
}

"""
