"""Host (Python + CuPy launch) cost of the calls a training step is made of, in microseconds per call.

    python benchmarks/host_overhead.py

Small arrays, so the GPU is never the limit: the time per call is what the host pays to issue it (measured with
the host clock over many calls, then a synchronize). A profiling aid for the GPU step, not a benchmark.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def per_call_us(fn, n=2000):
    import cupy as cp
    for _ in range(50):
        fn()
    cp.cuda.get_current_stream().synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    cp.cuda.get_current_stream().synchronize()
    return 1e6 * (time.perf_counter() - t0) / n


def main():
    import cupy as cp

    import autograd as ag
    from autograd import functional as F
    from autograd.cuda import get_kernel

    a32 = cp.random.standard_normal((64, 64), dtype=np.float32)
    a16 = a32.astype(np.float16)
    b32 = cp.random.standard_normal((64,), dtype=np.float32)
    mm, cs = get_kernel("matmul"), get_kernel("colsum")
    ln = get_kernel("layer_norm_forward")
    t32 = ag.Tensor(a32, requires_grad=True)
    w32 = ag.Tensor(a32.copy(), requires_grad=True)
    rows = [
        ("cp.empty", lambda: cp.empty((64, 64), np.float32)),
        ("astype f32->f16", lambda: a32.astype(np.float16)),
        ("astype no-op (copy=False)", lambda: a32.astype(np.float32, copy=False)),
        ("a32 + a32", lambda: a32 + a32),
        ("a32 + a16 (mixed)", lambda: a32 + a16),
        ("a16 += b32 (bias)", lambda: a16.__iadd__(b32)),
        ("ascontiguousarray(a.T)", lambda: cp.ascontiguousarray(a32.T)),
        ("matmul 2-D f32", lambda: mm(a32, a32)),
        ("matmul 2-D f16 -> f32", lambda: mm(a16, a16, out_dtype=np.float32)),
        ("colsum", lambda: cs(a32)),
        ("layer_norm_forward kernel", lambda: ln(a32, b32, b32, 1e-5)),
        ("Tensor add (no grad)", lambda: ag.Tensor(a32) + ag.Tensor(a32)),
        ("Tensor add (graph)", lambda: t32 + w32),
        ("F.linear graph f32", lambda: F.linear(t32, w32)),
    ]

    def fwd_bwd():
        y = F.linear(t32, w32)
        y.backward(ag.Tensor(a32))
        t32.grad = w32.grad = None

    def fwd_bwd_amp():
        with ag.amp.autocast("float16"):
            y = F.linear(t32, w32)
        y.backward(ag.Tensor(a16))
        t32.grad = w32.grad = None

    rows += [("F.linear fwd+bwd f32", fwd_bwd), ("F.linear fwd+bwd autocast", fwd_bwd_amp)]
    for name, fn in rows:
        print(f"{name:32s} {per_call_us(fn, 500 if 'bwd' in name else 2000):8.1f} us")


if __name__ == "__main__":
    main()
