"""The flash-attention kernels for Hopper (sm_90a; CUDA source): the same algorithm as forward.py / backward.py with
the products on warpgroup tensor cores (``autograd/cuda/wgmma.py``): operands read by the tensor cores straight from
128-byte-swizzled shared-memory tiles (no ldmatrix), 64 rows of a warpgroup per product.

Forward: a block of NWG warpgroups (128 threads each) takes 64 queries per warpgroup of one (batch, head); the Q
tiles are loaded once, K/V tiles of BN keys, shared by the warpgroups, stream through two shared-memory stages
(cp.async, V one tile behind K). Per tile S = Q K^T (both operands from shared memory), the online softmax in
registers (the accumulator rows are the mma.sync ones), O += P V with P from registers and V read transposed by the
tensor cores. The products overlap the softmax within a warpgroup (FlashAttention-3's intra-warpgroup pipelining):
step kt issues S of tile kt, then P V of tile kt - 1, and runs tile kt's softmax while that product is in flight.
Every warpgroup takes each of its block's tiles (the first one's last causal tile is all masked), so that no
product sits on a branch that differs between warpgroups.

Backward: a block takes 64 keys of one key/value head and walks the 64-query tiles of every query head of its group
in two shared-memory stages: Q and dO copied by the tensor memory accelerator (``tensor_map.py``: the maps' 128-byte
swizzle is the tiles' layout; one thread issues them, each stage's mbarrier says when they are in), lse and delta by
cp.async. Per tile: S^T = K Q^T and dP^T = V dO^T from shared memory, P^T and dS^T = P^T (dP^T - delta) in
registers, dS^T stored to shared memory, dQ = dS K with dS read transposed, then dV += P^T dO and dK += dS^T Q with
P^T / dS^T as register operands, which run while dQ is added to the float32 dQ buffer: for D 64 each warp writes its
16 rows into a swizzled float32 image (conflict-free stores) that the TMA adds to global memory
(``cp.reduce.async.bulk.tensor``); for D 128 (whose shared memory would then admit one block per SM) by vector
reductions from registers.

Both kernels number a head's tiles longest first (causal) and walk the grid heads fastest (``grid_y_fastest``), so
that the long tiles of every head start in the first waves.

Dropout: the keep bits of the mma.sync kernels (``drop_row_block`` / ``keep_col_block`` in device.py: the accumulator
rows are the same), so both families drop exactly what ``PhiloxGenerator.keep_mask`` would.
"""
from __future__ import annotations

HOPPER_SRC = r"""
template <bool B> struct bool_c { static constexpr bool value = B; };
// rows [row0, row0 + ROWS) of a (T, D) matrix (row stride ld) into a 128-byte-swizzled tile: column blocks of 64
// values (ROWS x 128 bytes each) one after the other; rows >= T zero-filled. With THREADS (the block's threads) thread
// t copies 16-byte chunk t % CPR of rows t / CPR, + RS, + 2 RS, ...: RS is a multiple of 8, so the swizzle is the same
// in each and the shared and global addresses step by constants (a few instructions a copy, and a few registers held
// between tiles); THREADS = 0 goes chunk by chunk over blockDim.x threads (for kernels short of registers)
template <int D, int ROWS, int THREADS = 0>
__device__ __forceinline__ void load_sw_async(unsigned char* dst, const b16* src, i64 ld, int row0, int T) {
    constexpr int CPR = D / 8;   // 16-byte chunks per row
    if constexpr (THREADS == 0) {
        for (int idx = threadIdx.x; idx < ROWS * CPR; idx += blockDim.x) {
            const int r = idx / CPR, cc = idx % CPR;
            const bool ok = row0 + r < T;
            cp_async16(reinterpret_cast<b16*>(dst + (cc >> 3) * (ROWS * 128) + sw128(r, cc & 7)),
                       src + (i64)(ok ? row0 + r : 0) * ld + cc * 8, ok ? 16 : 0);
        }
    } else {
        constexpr int RS = THREADS / CPR, N = ROWS * CPR / THREADS;
        static_assert(THREADS % CPR == 0 && RS % 8 == 0 && ROWS % RS == 0, "load_sw_async: tile and threads must match");
        const int t = threadIdx.x % THREADS, r = t / CPR, cc = t % CPR;
        unsigned char* const d = dst + (cc >> 3) * (ROWS * 128) + sw128(r, cc & 7);
        const b16* const p = src + ((i64)(row0 + r) * ld + cc * 8);
        const i64 step = (i64)RS * ld;
#pragma unroll
        for (int i = 0; i < N; ++i)   // a row past T reads nothing (source size 0), so its address is never used
            cp_async16(reinterpret_cast<b16*>(d + i * RS * 128), p + i * step, row0 + r + i * RS < T ? 16 : 0);
    }
}
// the first 1024-byte boundary in the dynamic shared memory at raw (descriptors address 1024-byte swizzle atoms);
// offsetting the __shared__ array itself keeps the pointer in the shared space (plain ld/st.shared, not generic)
__device__ __forceinline__ unsigned char* align1024(unsigned char* raw) { return raw + ((1024u - (smem_u32(raw) & 1023u)) & 1023u); }
// matrix descriptors: kdesc / mndesc of a K-major / MN-major swizzled tile of ROWS rows at shared address base (its
// 64-value column blocks ROWS x 128 bytes apart), kstep / mnstep the descriptor of its k-step (16 columns / 16 rows):
// the address field is the low 14 bits of address / 16 and shared addresses stay below 2^18, so a byte offset is
// added to the descriptor as offset / 16
__device__ __forceinline__ unsigned long long kdesc(u32 base) { return wg_desc(base, 16, 1024); }
template <int ROWS>
__device__ __forceinline__ unsigned long long mndesc(u32 base) { return wg_desc(base, ROWS * 128, 1024); }
template <int ROWS>
__device__ __forceinline__ unsigned long long kstep(unsigned long long d, int ks) {
    return d + (u32)(((ks >> 2) * (ROWS * 128) + (ks & 3) * 32) >> 4);
}
__device__ __forceinline__ unsigned long long mnstep(unsigned long long d, int kc) { return d + (u32)(kc * 2048 >> 4); }
// p[0] += a, p[1] += b in one vector reduction (sm_90; p 8-byte aligned)
__device__ __forceinline__ void red_add2(float* p, float a, float b) {
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" :: "l"(p), "f"(a), "f"(b) : "memory");
}
// rows [row, row + 64) of head (head, batch) of a (B, H, T, D) 16-bit tensor into the swizzled tile at dst (the
// layout of load_sw_async: D / 64 boxes of 64 rows x 128 bytes, rows past T zero-filled), by the TMA; completes on bar
template <int D>
__device__ __forceinline__ void tma_tile(unsigned char* dst, const TensorMap* map, int row, int head, int batch,
                                         unsigned long long* bar) {
#pragma unroll
    for (int cb = 0; cb < D / 64; ++cb)
        asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];"
                     :: "r"(smem_u32(dst + cb * 64 * 128)), "l"(reinterpret_cast<unsigned long long>(map)), "r"(cb * 64),
                        "r"(row), "r"(head), "r"(batch), "r"(smem_u32(bar)) : "memory");
}
template <int N, bool BF, int TA, int TB>
__device__ __forceinline__ void wg_ss(float* d, unsigned long long da, unsigned long long db, int acc) {
    if constexpr (N == 64) wg_mma_ss_n64<BF, TA, TB>(d, da, db, acc);
    else wg_mma_ss_n128<BF, TA, TB>(d, da, db, acc);
}
template <int N, bool BF, int TB>
__device__ __forceinline__ void wg_rs(float* d, const u32* a, unsigned long long db, int acc) {
    if constexpr (N == 64) wg_mma_rs_n64<BF, 0, TB>(d, a, db, acc);
    else wg_mma_rs_n128<BF, 0, TB>(d, a, db, acc);
}

template <int D, int BN, int NWG, bool BF, bool DROP>
__global__ void __launch_bounds__(128 * NWG) flash_fwd_wg(const b16* __restrict__ Q, const b16* __restrict__ K,
        const b16* __restrict__ V, b16* __restrict__ O, float* __restrict__ L, int Tq, int Tk, int H, int rep,
        i64 q_sb, i64 q_sh, i64 q_st, i64 kv_sb, i64 kv_sh, i64 kv_st, i64 o_sb, i64 o_sh, i64 o_st,
        float scale_log2, int causal, float drop_p, float drop_scale, const long long* __restrict__ drop_state) {
    // NWG warpgroups, 64 queries each, share the K/V tiles
    constexpr int QB = 64 * D * 2, KB = BN * D * 2;   // tile bytes
    extern __shared__ unsigned char fa_raw[];
    // descriptors address swizzle atoms of 1024 bytes: align the tiles to that
    unsigned char* const sm = align1024(fa_raw);
    unsigned char* const Qs = sm;                 // NWG tiles
    unsigned char* const Ks = sm + NWG * QB;      // two stages
    unsigned char* const Vs = Ks + 2 * KB;        // two stages
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, gid = lane >> 2,
              tig = lane & 3;
    const GridYX blk = grid_y_fastest();
    const int bh = blk.y, b = bh / H, h = bh % H, hk = h / rep;
    Q += b * q_sb + h * q_sh; O += b * o_sb + h * o_sh; L += (i64)bh * Tq;
    K += b * kv_sb + hk * kv_sh; V += b * kv_sb + hk * kv_sh;
    const int qblock = (gridDim.x - 1 - blk.x) * 64 * NWG;   // causal: the longest rows start first
    const int qw = qblock + 64 * wg;                                // this warpgroup's first query
    const int r0 = qw + warp * 16 + gid;                            // this thread's rows: r0 and r0 + 8
    const int shift = Tk - Tq;
    int kend = Tk;
    if (causal) kend = min(Tk, min(qblock + 64 * NWG - 1, Tq - 1) + shift + 1);
    const int ntiles = (kend + BN - 1) / BN;
    unsigned long long dseed = 0, doff = 0;
    const long long ebase = (long long)bh * Tq * Tk;   // dropout: the draw element of (row, key) is ebase + row Tk + key
    if constexpr (DROP) {
        dseed = (unsigned long long)drop_state[0];
        doff = (unsigned long long)drop_state[1];
    }
#pragma unroll
    for (int w = 0; w < NWG; ++w) load_sw_async<D, 64, 128 * NWG>(Qs + w * QB, Q, q_st, qblock + 64 * w, Tq);
    load_sw_async<D, BN, 128 * NWG>(Ks, K, kv_st, 0, Tk);
    cp_async_commit();
    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) { o[i] = 0.f; wg_pin(o[i]); }
    float m[2] = {neg_inf_f(), neg_inf_f()}, l[2] = {0.f, 0.f};
    const unsigned long long qd = kdesc(smem_u32(Qs + wg * QB));
    u32 pa[BN / 16][4];   // P of the previous tile (16-bit A fragments), multiplied by its V in this step
    // Step kt: S of tile kt is issued, then P V of tile kt - 1, whose product runs on the tensor cores while this
    // tile's softmax runs; o is rescaled once that product has completed. K runs one tile ahead of V: step kt reads
    // K tile kt and V tile kt - 1 while K tile kt + 1 and V tile kt stream in.
    // one step: FIRST has no previous tile (the loop's steps are unconditional, so that ptxas can tell which
    // products are in flight at each read of their registers)
    auto step = [&](int kt, auto first) {
        constexpr bool FIRST = decltype(first)::value;
        const int k0 = kt * BN, buf = kt & 1;
        cp_async_wait<0>();
        fence_async_smem();
        __syncthreads();   // K tile kt and V tile kt - 1 are in; every product of step kt - 1 has completed
        if (kt + 1 < ntiles) load_sw_async<D, BN, 128 * NWG>(Ks + (buf ^ 1) * KB, K, kv_st, k0 + BN, Tk);
        load_sw_async<D, BN, 128 * NWG>(Vs + buf * KB, V, kv_st, k0, Tk);
        cp_async_commit();
        // the first k-step overwrites s (clearing it would make ptxas wait for the product before)
        float s[BN / 2];
        const unsigned long long kd = kdesc(smem_u32(Ks + buf * KB));
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) wg_undef(s[i]);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) wg_ss<BN, BF, 0, 0>(s, kstep<64>(qd, ks), kstep<BN>(kd, ks), ks > 0);
        wg_commit();
        if constexpr (!FIRST) {
            const unsigned long long vd = mndesc<BN>(smem_u32(Vs + (buf ^ 1) * KB));
#pragma unroll
            for (int kc = 0; kc < BN / 16; ++kc) wg_rs<D, BF, 1>(o, pa[kc], mnstep(vd, kc), 1);
            wg_commit();
            wg_wait<1>();   // S is in; P V still runs
        } else {
            wg_wait<0>();
        }
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) wg_pin(s[i]);
        if ((k0 + BN > Tk) || (causal && k0 + BN - 1 > qw + shift)) mask_tile<BN / 8>(s, r0, k0 + tig * 2, Tk, causal, shift);
        float alpha[2];
        online_softmax_p<BN / 8>(s, m, l, alpha, scale_log2);
        if constexpr (DROP) {   // the normaliser l counts every probability; only the kept ones reach O
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) drop_row_block(s + 4 * j, r0, k0 + 8 * j + 2 * tig, Tk, ebase, doff, dseed, drop_p);
        }
        if constexpr (!FIRST) {
            wg_wait<0>();   // P V of tile kt - 1 has completed: o and pa are free
#pragma unroll
            for (int i = 0; i < D / 2; ++i) wg_pin(o[i]);
            rescale_rows<D / 8>(o, alpha);
        }
#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc) {
            pa[kc][0] = pack2<BF>(s[8 * kc + 0], s[8 * kc + 1]);
            pa[kc][1] = pack2<BF>(s[8 * kc + 2], s[8 * kc + 3]);
            pa[kc][2] = pack2<BF>(s[8 * kc + 4], s[8 * kc + 5]);
            pa[kc][3] = pack2<BF>(s[8 * kc + 6], s[8 * kc + 7]);
        }
    };
    step(0, bool_c<true>());
    for (int kt = 1; kt < ntiles; ++kt) step(kt, bool_c<false>());
    cp_async_wait<0>();
    fence_async_smem();
    __syncthreads();   // the last V tile is in (ntiles >= 1: a block's first row sees key 0)
    {
        const unsigned long long vd = mndesc<BN>(smem_u32(Vs + ((ntiles - 1) & 1) * KB));
        wg_fence();
#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc) wg_rs<D, BF, 1>(o, pa[kc], mnstep(vd, kc), 1);
        wg_commit();
        wg_wait<0>();
#pragma unroll
        for (int i = 0; i < D / 2; ++i) wg_pin(o[i]);
    }
    store_out_rows<D, BF>(O, L, o, m, l, r0, Tq, o_st, scale_log2, drop_scale);
}

template <int D, int MINB, bool BF, bool DROP>
__global__ void __launch_bounds__(128, MINB) flash_bwd_wg(const b16* __restrict__ Q, const b16* __restrict__ K,
        const b16* __restrict__ V, const b16* __restrict__ dO, const float* __restrict__ L,
        const float* __restrict__ Dl, float* __restrict__ dQ, b16* __restrict__ dK, b16* __restrict__ dV,
        int Tq, int Tk, int H, int rep,
        i64 q_sb, i64 q_sh, i64 q_st, i64 kv_sb, i64 kv_sh, i64 kv_st, i64 do_sb, i64 do_sh, i64 do_st,
        i64 g_sb, i64 g_sh, i64 g_st, float scale, int causal, float drop_p, float drop_scale,
        const long long* __restrict__ drop_state, const __grid_constant__ TensorMap dq_map,
        const __grid_constant__ TensorMap q_map, const __grid_constant__ TensorMap do_map) {
    // Q and dO are read through q_map / do_map (their tiles copied by the TMA; Q, dO and their strides are unused)
    constexpr int TB = 64 * D * 2;   // bytes of a 64-row tile
    // D 64: dQ goes through a float32 shared tile added to global memory by the TMA (dq_map: dQ as (B H, Tq, D) in
    // boxes of 16 rows x 32 columns; 16 KB more shared memory, still 3 blocks per SM); D 128 would fit one block per
    // SM, so it adds from registers
    constexpr bool BULK_DQ = D == 64;
    extern __shared__ unsigned char fa_raw[];
    unsigned char* const sm = align1024(fa_raw);
    unsigned char* const Ks = sm;
    unsigned char* const Vs = sm + TB;
    unsigned char* const Qst = sm + 2 * TB;       // two stages
    unsigned char* const dOst = sm + 4 * TB;      // two stages
    unsigned char* const dSs = sm + 6 * TB;       // dS^T: 64 keys x 64 queries
    float* const lse_s = reinterpret_cast<float*>(dSs + 64 * 128);   // two stages of 64
    float* const del_s = lse_s + 128;
    // BULK_DQ: dQ's float32 tile, 4 KB a warp (its 16 rows): the images of two boxes (columns 0-31, 32-63) of 16 rows
    // x 128 bytes in the 128-byte swizzle (1024-byte aligned: 6 TB + 9 KB from sm)
    unsigned char* const dq_s = reinterpret_cast<unsigned char*>(lse_s + 256);
    // the two stages' mbarriers, after dq_s
    unsigned long long* const bars = reinterpret_cast<unsigned long long*>(dq_s + (BULK_DQ ? 64 * D * 4 : 0));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const GridYX blk = grid_y_fastest();   // causal: a head's first key block is its longest
    const int Hk = H / rep, bk = blk.y, b = bk / Hk, hk = bk % Hk;
    K += b * kv_sb + hk * kv_sh; V += b * kv_sb + hk * kv_sh;
    dK += b * g_sb + hk * g_sh; dV += b * g_sb + hk * g_sh;
    const int kblock = blk.x * 64;
    const int kr0 = kblock + warp * 16 + gid;   // this thread's keys: kr0 and kr0 + 8
    const int shift = Tk - Tq;
    const float scale_log2 = scale * LOG2E;
    unsigned long long dseed = 0, doff = 0;
    if constexpr (DROP) {
        dseed = (unsigned long long)drop_state[0];
        doff = (unsigned long long)drop_state[1];
    }
    load_sw_async<D, 64>(Ks, K, kv_st, kblock, Tk);
    load_sw_async<D, 64>(Vs, V, kv_st, kblock, Tk);
    float dv[D / 2], dk[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) { dv[i] = 0.f; dk[i] = 0.f; }
    int qstart = 0;
    if (causal) qstart = max(0, kblock - shift) / 64 * 64;
    const int ntq = qstart < Tq ? (Tq - qstart + 63) / 64 : 0;
    const int total = rep * ntq;   // tiles of every query head of the group, one after the other
    if (total > 0) {
        const int h0 = hk * rep;
        if (threadIdx.x == 0) {
            mbar_init(bars, 1);
            mbar_init(bars + 1, 1);
            mbar_expect_tx(bars, 2 * TB);
            tma_tile<D>(Qst, &q_map, qstart, h0, b, bars);
            tma_tile<D>(dOst, &do_map, qstart, h0, b, bars);
        }
        load_rows_async<64, 128>(lse_s, del_s, L, Dl, ((i64)b * H + h0) * Tq, qstart, Tq);
    }
    cp_async_commit();
    __syncthreads();   // the mbarriers are initialised before any thread waits on them
    const unsigned long long kd = kdesc(smem_u32(Ks)), vd = kdesc(smem_u32(Vs)), kmn = mndesc<64>(smem_u32(Ks)),
                             dsd = mndesc<64>(smem_u32(dSs));
    for (int it = 0; it < total; ++it) {
        const int buf = it & 1;
        const int h = hk * rep + it / ntq, qt = qstart + (it % ntq) * 64;
        mbar_wait(bars + buf, (it >> 1) & 1);   // Q and dO of tile it are in (stage buf's (it / 2)-th phase)
        cp_async_wait<0>();
        fence_async_smem();
        __syncthreads();   // tile it is in; every product of tile it - 1 has completed
        if (it + 1 < total) {
            const int hn = hk * rep + (it + 1) / ntq, qn = qstart + ((it + 1) % ntq) * 64;
            if (threadIdx.x == 0) {
                mbar_expect_tx(bars + (buf ^ 1), 2 * TB);
                tma_tile<D>(Qst + (buf ^ 1) * TB, &q_map, qn, hn, b, bars + (buf ^ 1));
                tma_tile<D>(dOst + (buf ^ 1) * TB, &do_map, qn, hn, b, bars + (buf ^ 1));
            }
            load_rows_async<64, 128>(lse_s + (buf ^ 1) * 64, del_s + (buf ^ 1) * 64, L, Dl, ((i64)b * H + hn) * Tq, qn, Tq);
            cp_async_commit();
        }
        const u32 qs = smem_u32(Qst + buf * TB), dos = smem_u32(dOst + buf * TB);
        const unsigned long long qd = kdesc(qs), dod = kdesc(dos), qmn = mndesc<64>(qs), domn = mndesc<64>(dos);
        const float* lse_t = lse_s + buf * 64;
        const float* del_t = del_s + buf * 64;
        // S^T = K Q^T and dP^T = V dO^T: 64 keys x 64 queries
        float st[32], dp[32];
#pragma unroll
        for (int i = 0; i < 32; ++i) { st[i] = 0.f; dp[i] = 0.f; }
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            wg_ss<64, BF, 0, 0>(st, kstep<64>(kd, ks), kstep<64>(qd, ks), 1);
            wg_ss<64, BF, 0, 0>(dp, kstep<64>(vd, ks), kstep<64>(dod, ks), 1);
        }
        wg_commit();
        wg_wait<0>();
        // P^T (dropped and rescaled, for dV) and dS^T (unscaled) in place: element c of 8-query block j is key
        // kr0 + 8 (c >> 1), query qt + 8 j + 2 tig + (c & 1)
        const bool edge = kblock + 63 >= Tk || (causal && kblock + 63 > qt + shift);
        const long long ebase = ((long long)b * H + h) * Tq * Tk;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float2 lj = *reinterpret_cast<const float2*>(lse_t + 8 * j + 2 * tig);
            const float2 dj = *reinterpret_cast<const float2*>(del_t + 8 * j + 2 * tig);
            bool kp[4] = {true, true, true, true};
            if constexpr (DROP) keep_col_block(kp, kblock + warp * 16, qt + 8 * j + 2 * tig, Tk, ebase, doff, dseed, drop_p);
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int ql = 8 * j + 2 * tig + (c & 1), key = kr0 + (c >> 1) * 8;
                float p = exp2_fast(fmaf(st[4 * j + c], scale_log2, -((c & 1) ? lj.y : lj.x) * LOG2E));
                if (edge && (key >= Tk || (causal && key > qt + ql + shift))) p = 0.f;
                float g = dp[4 * j + c];
                float pd = p;
                if constexpr (DROP) {
                    pd = kp[c] ? p * drop_scale : 0.f;
                    g = kp[c] ? g * drop_scale : 0.f;
                }
                st[4 * j + c] = pd;
                dp[4 * j + c] = p * (g - ((c & 1) ? dj.y : dj.x));
            }
        }
        u32 pa[4][4], sa[4][4];
#pragma unroll
        for (int kc = 0; kc < 4; ++kc)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                pa[kc][r] = pack2<BF>(st[8 * kc + 2 * r], st[8 * kc + 2 * r + 1]);
                sa[kc][r] = pack2<BF>(dp[8 * kc + 2 * r], dp[8 * kc + 2 * r + 1]);
            }
        // dS^T rows (keys) of this thread -> the swizzled shared tile [key][query]
        {
            const int kl = warp * 16 + gid;
#pragma unroll
            for (int kc = 0; kc < 4; ++kc) {
                *reinterpret_cast<u32*>(dSs + sw128(kl, 2 * kc) + tig * 4) = sa[kc][0];
                *reinterpret_cast<u32*>(dSs + sw128(kl + 8, 2 * kc) + tig * 4) = sa[kc][1];
                *reinterpret_cast<u32*>(dSs + sw128(kl, 2 * kc + 1) + tig * 4) = sa[kc][2];
                *reinterpret_cast<u32*>(dSs + sw128(kl + 8, 2 * kc + 1) + tig * 4) = sa[kc][3];
            }
        }
        fence_async_smem();
        if (BULK_DQ && lane == 0) bulk_wait_read();   // this warp's dQ rows of the last tile have left dq_s
        __syncthreads();   // every warp's dS^T rows are in shared memory
        // dQ (64 queries x D) = dS K over the block's 64 keys (dS read transposed from dS^T), then dV += P^T dO and
        // dK += dS^T Q (the 64 queries are the reduction: dO and Q read transposed), which run while dQ is added
        float dq[D / 2];
#pragma unroll
        for (int i = 0; i < D / 2; ++i) dq[i] = 0.f;
        wg_fence();
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) wg_ss<D, BF, 1, 1>(dq, mnstep(dsd, kc), mnstep(kmn, kc), 1);
        wg_commit();
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
            wg_rs<D, BF, 1>(dv, pa[kc], mnstep(domn, kc), 1);
            wg_rs<D, BF, 1>(dk, sa[kc], mnstep(qmn, kc), 1);
        }
        wg_commit();
        wg_wait<1>();   // dQ's product is in; dV's and dK's run on
        if constexpr (BULK_DQ) {
            // each warp stores its 16 rows into its two box images (row r's 16-byte chunk c at c ^ (r % 8): the 8
            // rows of a store fall in different banks) and adds them with two TMA reductions; rows past Tq are
            // outside the map and skipped
            unsigned char* const img = dq_s + warp * 4096;
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int r = gid + 8 * hh;
#pragma unroll
                for (int j = 0; j < D / 8; ++j) {
                    const int chunk = ((j & 3) << 1) | (tig >> 1);
                    *reinterpret_cast<float2*>(img + (j >> 2) * 2048 + r * 128 + ((chunk ^ gid) << 4) + (tig & 1) * 8) =
                        make_float2(dq[4 * j + 2 * hh] * scale, dq[4 * j + 2 * hh + 1] * scale);
                }
            }
            fence_async_smem();
            __syncwarp();
            if (lane == 0 && qt + warp * 16 < Tq) {
                tma_reduce_add_3d(&dq_map, img, 0, qt + warp * 16, b * H + h);
                tma_reduce_add_3d(&dq_map, img + 2048, 32, qt + warp * 16, b * H + h);
                bulk_commit();
            }
        } else {
            float* dQh = dQ + ((i64)b * H + h) * Tq * D;
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int row = qt + warp * 16 + gid + 8 * hh;
                if (row < Tq) {
#pragma unroll
                    for (int j = 0; j < D / 8; ++j)
                        red_add2(dQh + (i64)row * D + j * 8 + tig * 2, dq[4 * j + 2 * hh] * scale,
                                 dq[4 * j + 2 * hh + 1] * scale);
                }
            }
        }
        wg_wait<0>();   // before the next tile's accumulators are cleared (an open product would serialise them)
    }
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        const int key = kr0 + 8 * hh;
        if (key < Tk) {
#pragma unroll
            for (int j = 0; j < D / 8; ++j) {
                *reinterpret_cast<u32*>(dK + (i64)key * g_st + j * 8 + tig * 2) =
                    pack2<BF>(dk[4 * j + 2 * hh] * scale, dk[4 * j + 2 * hh + 1] * scale);
                *reinterpret_cast<u32*>(dV + (i64)key * g_st + j * 8 + tig * 2) =
                    pack2<BF>(dv[4 * j + 2 * hh], dv[4 * j + 2 * hh + 1]);
            }
        }
    }
    if (BULK_DQ && lane == 0) bulk_wait();
    cp_async_wait<0>();   // no copy may land after the block has gone (total = 0 leaves K and V in flight)
}
"""
