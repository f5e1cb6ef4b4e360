"""Hopper's warpgroup tensor-core products (wgmma, sm_90a) for kernels written as CUDA source strings.

A warpgroup (4 consecutive warps, 128 threads) multiplies a 64-row A by a B of N columns, 16 deep, with float32
accumulators in registers: ``wgmma.mma_async`` reads B (and A, or A from registers) straight from shared memory
through 64-bit matrix descriptors, so no ldmatrix instructions are issued and each B byte serves 64 rows.

Shared-memory tiles use the 128-byte swizzle: a tile is rows of 64 16-bit values (128 bytes), row r's 16-byte chunk c
stored at chunk c ^ (r % 8), 8-row groups of 1024 bytes, the tile 1024-byte aligned. Such a (rows, 64) tile serves
as a "K-major" operand (the product reduces along its 64 columns: Q or K in Q K^T) and as an "MN-major" one (it
reduces along its rows: V in P V) with the transpose flag. Wider tiles (D = 128) are column blocks of 64, one after
the other.

Accumulators: thread t of the warpgroup holds, for each 8-column block j of the (64, N) result, the four values at
rows 16 w + g and 16 w + g + 8, columns 8 j + 2 q and 8 j + 2 q + 1 (w = warp in the group, g = lane / 4,
q = lane % 4): the mma.sync m16n8 layout, so per-row softmax code carries over, and two neighbouring 8-column
blocks packed to 16 bits are the A-register fragment of one 16-deep step.

The module is compiled by NVRTC for sm_90a (the "a" features are not in CuPy's default sm_90 target) into a cubin
loaded with ``cupy.RawModule(path=...)``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

from ._common import LazyModule, require_cupy


def _mma_fn(n: int, a_regs: bool) -> str:
    """CUDA source of ``wg_mma_{rs|ss}<BF, TA, TB>`` for m64n{n}k16: d (n / 2 floats) (+)= A B."""
    nacc = n // 2
    dlist = ", ".join(f"%{i}" for i in range(nacc))
    outs = ", ".join(f'"+f"(d[{i}])' for i in range(nacc))
    if a_regs:
        a_ops, a_in, sig, flags = (f"{{%{nacc}, %{nacc + 1}, %{nacc + 2}, %{nacc + 3}}}",
                                   '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), ', "const u32* a", "1, 1, {TB}")
        b_op, p_op = f"%{nacc + 4}", f"%{nacc + 5}"
    else:
        a_ops, a_in, sig, flags = f"%{nacc}", '"l"(da), ', "unsigned long long da", "1, 1, {TA}, {TB}"
        b_op, p_op = f"%{nacc + 1}", f"%{nacc + 2}"
    name = f"wg_mma_{'rs' if a_regs else 'ss'}_n{n}"
    body = []
    for bf in (0, 1):
        for ta in ((0,) if a_regs else (0, 1)):
            for tb in (0, 1):
                ty = "bf16" if bf else "f16"
                fl = flags.format(TA=ta, TB=tb)
                body.append(
                    f"    if constexpr (BF == {'true' if bf else 'false'} && TA == {ta} && TB == {tb})\n"
                    f'        asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, {p_op}, 0;\\n"\n'
                    f'                     "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty} '
                    f'{{{dlist}}}, {a_ops}, {b_op}, p, {fl};\\n}}\\n"\n'
                    f"                     : {outs}\n"
                    f'                     : {a_in}"l"(db), "r"(acc));')
    return (f"template <bool BF, int TA, int TB>\n__device__ __forceinline__ void {name}(float* d, {sig}, "
            f"unsigned long long db, int acc) {{\n" + "\n".join(body) + "\n}\n")


WGMMA_SRC = r"""
typedef unsigned int u32;
// order register writes (accumulators, A fragments) before the warpgroup's next products
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// wait until at most N committed groups of this thread are still running
template <int N> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}
// make this thread's generic-proxy shared-memory writes (st.shared, cp.async) visible to wgmma's async proxy
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// keep the compiler from moving accumulator reads or writes across a product still in flight
__device__ __forceinline__ void wg_pin(float& x) { asm volatile("" : "+f"(x) :: "memory"); }
// give an accumulator that a product's first k-step overwrites (scale-d 0) a definition of its own, before the fence:
// left undefined, the compiler copies one register into all of them between the products, which serialises them
__device__ __forceinline__ void wg_undef(float& x) { asm volatile("" : "=f"(x)); }
__device__ __forceinline__ u32 smem_u32(const void* p) {
    unsigned long long a; asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p)); return (u32)a;
}
// matrix descriptor of a 128-byte-swizzled operand starting at shared address s: lbo / sbo in bytes (the distance
// between 64-value column blocks, and between 8-row groups)
__device__ __forceinline__ unsigned long long wg_desc(u32 s, u32 lbo, u32 sbo) {
    return (unsigned long long)((s & 0x3FFFF) >> 4) | ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16)
         | ((unsigned long long)((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}
// byte offset of 16-byte chunk c (0..7) of row r in a 128-byte-swizzled tile
__device__ __forceinline__ u32 sw128(int r, int c) { return (u32)(r * 128 + ((c ^ (r & 7)) << 4)); }
""" + "".join(_mma_fn(n, a) for n in (64, 128) for a in (False, True))


class Sm90aModule(LazyModule):
    """A ``LazyModule`` compiled by NVRTC for sm_90a into a cubin (cached on disk by source hash)."""

    def _load(self):
        cp = require_cupy()
        from cupy_backends.cuda.libs import nvrtc

        # the cubin depends on the source, the instantiations and the compiler that built it
        key = hashlib.sha1((self.source + "|".join(self.names) + repr(nvrtc.getVersion())).encode()).hexdigest()[:20]
        folder = os.path.join(tempfile.gettempdir(), f"tinygrad_llm_sm90a_{os.getuid()}")
        os.makedirs(folder, exist_ok=True)
        path, names_path = os.path.join(folder, key + ".cubin"), os.path.join(folder, key + ".names")
        if not (os.path.exists(path) and os.path.exists(names_path)):
            prog = nvrtc.createProgram(self.source, "wgmma.cu", (), ())
            try:
                for n in self.names:
                    nvrtc.addNameExpression(prog, n)
                try:
                    nvrtc.compileProgram(prog, ("-arch=sm_90a", "--std=c++17", "--device-as-default-execution-space"))
                except nvrtc.NVRTCError as e:
                    raise RuntimeError(f"NVRTC (sm_90a) failed:\n{nvrtc.getProgramLog(prog)}") from e
                lowered = [nvrtc.getLoweredName(prog, n) for n in self.names]
                cubin = nvrtc.getCUBIN(prog)
            finally:
                nvrtc.destroyProgram(prog)
            tmp = path + f".{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(cubin)
            with open(names_path + f".{os.getpid()}.tmp", "w") as f:
                f.write("\n".join(lowered))
            os.replace(names_path + f".{os.getpid()}.tmp", names_path)
            os.replace(tmp, path)
        with open(names_path) as f:
            lowered = dict(zip(self.names, f.read().split("\n")))
        return cp.RawModule(path=path), lowered
