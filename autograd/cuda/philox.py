"""Counter-based random numbers on the GPU (Philox4x32-10) whose state lives in device memory: dropout masks that a
CUDA graph redraws at every replay.

    gen = PhiloxGenerator(seed)               # state = [seed, offset] as a device int64 array
    keep = gen.keep_mask((B, T, C), p)        # bool, True with probability 1 - p; advances the offset on the device

Element e of a draw takes word e % 4 of Philox4x32-10(counter = offset + e // 4, key = seed), as a float
``(word >> 8) * 2**-24`` in [0, 1); keep = u >= p. The offset is read by the mask kernel and advanced by a second
one-thread kernel, both on the current stream, so a graph that contains the draw reads the offset that the previous
replay left and advances it: a new mask every replay, and the same masks as eager code that starts from the same
seed and offset (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011; the same generator as
cuRAND's and PyTorch's Philox).

``generator_for(rng)``: the generator that dropout uses for a ``numpy.random.Generator`` (seeded once from one draw
of it, like the CuPy generator it replaces), kept while that Generator lives. ``get_state()``/``set_state()``
copy the device state without a host sync (activation checkpointing replays draws with them).
"""
from __future__ import annotations

import weakref

import numpy as np

from ._common import PRELUDE, require_cupy
from .registry import register

__all__ = ["PhiloxGenerator", "generator_for", "philox4x32", "keep_mask_reference", "all_generators",
           "PHILOX_DEVICE", "keep_mask_at"]

THREADS = 256

# Philox4x32-10 in CUDA C, shared with the kernels that draw their own dropout masks (flash attention)
PHILOX_DEVICE = r"""
__device__ __forceinline__ void philox_round(unsigned int c[4], unsigned int k0, unsigned int k1) {
    const unsigned int M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const unsigned int hi0 = __umulhi(M0, c[0]), lo0 = M0 * c[0];
    const unsigned int hi1 = __umulhi(M1, c[2]), lo1 = M1 * c[2];
    const unsigned int n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
}
// the 4 words of Philox4x32-10(counter = (ctr, 0), key) in c
__device__ __forceinline__ void philox4(unsigned long long ctr, unsigned long long key, unsigned int c[4]) {
    c[0] = (unsigned int)ctr; c[1] = (unsigned int)(ctr >> 32); c[2] = 0u; c[3] = 0u;
    unsigned int k0 = (unsigned int)key, k1 = (unsigned int)(key >> 32);
    #pragma unroll
    for (int r = 0; r < 10; ++r) {
        philox_round(c, k0, k1);
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
}
// element e of a draw from state [seed, offset] is kept when its uniform (word >> 8) * 2^-24 is >= p
__device__ __forceinline__ bool philox_word_keeps(unsigned int w, float p) {
    return (float)(w >> 8) * 5.9604644775390625e-08f >= p;
}
"""

_SRC = PHILOX_DEVICE + r"""

// one thread per 4 elements: counter = offset + block-of-4 index, key = seed
extern "C" __global__ void philox_keep(const i64* __restrict__ state, float p, bool* __restrict__ keep, i64 n) {
    const i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * b >= n) return;
    unsigned int c[4];
    philox4((unsigned long long)state[1] + (unsigned long long)b, (unsigned long long)state[0], c);
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
        const i64 e = 4 * b + j;
        if (e < n) keep[e] = philox_word_keeps(c[j], p);
    }
}

extern "C" __global__ void philox_advance(i64* state, i64 blocks) { state[1] += blocks; }
"""
_kernels: dict = {}


def _kernel(name: str):
    """A kernel of _SRC (compiled on first use, per GPU)."""
    cp = require_cupy()
    key = (name, cp.cuda.runtime.getDevice())
    k = _kernels.get(key)
    if k is None:
        mod = _kernels.get(("module", key[1]))
        if mod is None:
            mod = _kernels[("module", key[1])] = cp.RawModule(code=PRELUDE + _SRC, options=("--std=c++17",))
        k = _kernels[key] = mod.get_function(name)
    return k


_generators: "weakref.WeakSet[PhiloxGenerator]" = weakref.WeakSet()


class PhiloxGenerator:
    """Philox4x32-10 with state ``[seed, offset]`` in device memory (an int64 CuPy array of 2, on the GPU that was
    current at creation). Create it outside graph capture (its state is written from the host once)."""

    def __init__(self, seed: int):
        cp = require_cupy()
        from .graph import GraphCaptureError, is_capturing
        if is_capturing():
            raise GraphCaptureError("PhiloxGenerator: created while capturing a CUDA graph (its state is copied "
                                    "from the host); draw once before capturing so the generator exists")
        self.seed = int(seed) & (2 ** 63 - 1)
        self.state = cp.asarray(np.array([self.seed, 0], np.int64))
        _generators.add(self)

    def keep_mask(self, shape, p: float):
        """A bool array of ``shape``, True with probability 1 - p; advances the offset by ceil(n / 4) on the device."""
        keep = keep_mask_at(self.state, shape, p)
        self.reserve(keep.size)
        return keep

    def reserve(self, n: int):
        """The state a draw of ``n`` elements starts from (a device copy), advancing the offset past it as
        ``keep_mask`` would: a kernel that makes its own mask from that copy draws what ``keep_mask`` would have."""
        cp = require_cupy()
        start = self.state.copy()
        blocks = (int(n) + 3) // 4
        if blocks:
            with cp.cuda.Device(self.state.device.id):
                _kernel("philox_advance")((1,), (1,), (self.state, np.int64(blocks)))
        return start

    def get_state(self):
        """A device copy of ``[seed, offset]`` (no host sync)."""
        return self.state.copy()

    def set_state(self, state) -> None:
        """Restore a ``get_state()`` copy (device or host array of 2 int64)."""
        cp = require_cupy()
        if isinstance(state, cp.ndarray):
            self.state[...] = state
        else:
            self.state.set(np.asarray(state, np.int64))

    @property
    def offset(self) -> int:
        """The current offset (reads the device: a host sync)."""
        return int(self.state[1].get())


def keep_mask_at(state, shape, p: float):
    """What ``keep_mask(shape, p)`` draws from the device state ``state`` ([seed, offset], e.g. a ``reserve()``
    copy), without advancing anything."""
    cp = require_cupy()
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    keep = cp.empty(shape, dtype=np.bool_)
    blocks = (n + 3) // 4
    if n:
        with cp.cuda.Device(state.device.id):
            _kernel("philox_keep")(((blocks + THREADS - 1) // THREADS,), (THREADS,),
                                   (state, np.float32(p), keep, np.int64(n)))
    return keep


_by_rng: dict[int, tuple] = {}   # id(numpy Generator) -> (the Generator, its PhiloxGenerator)


def generator_for(rng: np.random.Generator) -> PhiloxGenerator:
    """The PhiloxGenerator that stands for ``rng`` on the current GPU: seeded from one draw of ``rng`` at first use."""
    cp = require_cupy()
    key = (id(rng), cp.cuda.runtime.getDevice())
    entry = _by_rng.get(key)
    if entry is None or entry[0] is not rng:
        entry = (rng, PhiloxGenerator(int(rng.integers(0, 2 ** 63 - 1))))
        _by_rng[key] = entry
    return entry[1]


def all_generators() -> list[PhiloxGenerator]:
    """Every live generator (a graph's warm-up saves and restores their states so it draws nothing for real)."""
    return list(_generators)


# ------------------------------------------------------------------------------------------------ NumPy reference
def philox4x32(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 on the host: counter (n, 4) uint32, key (k0, k1) -> (n, 4) uint32 (the reference for tests)."""
    c = np.asarray(counter, dtype=np.uint64).copy()
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    m0, m1, mask = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57), np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0, p1 = m0 * c[:, 0], m1 * c[:, 2]
        hi0, lo0, hi1, lo1 = p0 >> np.uint64(32), p0 & mask, p1 >> np.uint64(32), p1 & mask
        c = np.stack([hi1 ^ c[:, 1] ^ k0, lo1, hi0 ^ c[:, 3] ^ k1, lo0], axis=1)
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return c.astype(np.uint32)


def keep_mask_reference(seed: int, offset: int, n: int, p: float) -> np.ndarray:
    """What ``keep_mask`` draws for n elements from state [seed, offset], computed in NumPy."""
    blocks = (n + 3) // 4
    ctr = np.uint64(offset) + np.arange(blocks, dtype=np.uint64)
    counter = np.stack([ctr & np.uint64(0xFFFFFFFF), ctr >> np.uint64(32), np.zeros_like(ctr), np.zeros_like(ctr)], 1)
    words = philox4x32(counter, (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)).reshape(-1)[:n]
    u = (words >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)
    return u >= np.float32(p)


register("philox_generator", generator_for)
