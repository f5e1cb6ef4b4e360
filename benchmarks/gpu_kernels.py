"""Time each autograd.cuda kernel against the plain CuPy composition (the fused ops' NumPy code) and PyTorch.

    python3 benchmarks/gpu_kernels.py            # GPT-2 124M shapes: B=8, T=1024, C=768, V=50304, H=12
    python3 benchmarks/gpu_kernels.py --small    # quicker, smaller shapes

Times are medians over 10 samples, each a CUDA-event-timed run of 5 back-to-back calls after warm-up (ms per
call). 'cupy' is the xp-generic code the kernel replaces (for attention: the GEMM version); 'torch' is the closest
PyTorch eager call when torch imports (a benchmark reference only). The last column gives achieved GB/s
(memory-bound kernels: bytes read + written once) or TFLOP/s (matrix products, attention).
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np


INNER = 5   # calls between one pair of events: the host runs ahead, so launch gaps mostly vanish


def time_cupy(fn, reps=10, warmup=2):
    import cupy as cp
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    ts = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        for _ in range(INNER):
            fn()
        b.record()
        b.synchronize()
        ts.append(cp.cuda.get_elapsed_time(a, b) / INNER)
    return float(np.median(ts))


def time_torch(fn, reps=10, warmup=2):
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(INNER):
            fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / INNER)
    return float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    import cupy as cp
    import autograd.cuda as gk
    from autograd.ops.fused import attention as fa, cross_entropy as fce, gelu as fg, layer_norm as fln, softmax as fs
    from tinygrad_llm.optim.adam import adamw_update
    from autograd.cuda import attention as at
    try:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        import torch.nn.functional as tF
    except Exception:
        torch = None
    B, T, C, V, H = (8, 1024, 768, 50304, 12) if not args.small else (2, 256, 256, 8192, 4)
    N, D = B * T, C // H
    rows = []
    R = lambda f: time_cupy(f, args.reps)
    Rt = lambda f: time_torch(f, args.reps) if torch is not None else float("nan")
    rs = cp.random.RandomState(0)

    def tt(a):   # a torch copy of a cupy array
        return torch.as_tensor(a.get(), device="cuda") if torch is not None else None

    def add(name, ours, ref, tor, amount, unit):
        rate = amount / (ours * 1e-3) / (1e9 if unit == "GB/s" else 1e12)
        rows.append((name, ours, ref, tor, f"{rate:8.1f} {unit}"))
        print(f"  measured {name}", flush=True)

    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, tf32={gk.tf32_enabled()}", flush=True)
    mm = gk.get_kernel("matmul")
    for dt in (np.float32, np.float16):
        a = rs.standard_normal((N, C)).astype(dt)
        w = rs.standard_normal((C, 4 * C)).astype(dt)
        ta, tw = (tt(a), tt(w)) if torch else (None, None)
        add(f"matmul {N}x{C}x{4*C} {np.dtype(dt).name}", R(lambda: mm(a, w)), R(lambda: cp.matmul(a, w)),
            Rt(lambda: ta @ tw), 2 * N * C * 4 * C, "TFLOP/s")
        q = rs.standard_normal((B * H, T, D)).astype(dt)
        k = rs.standard_normal((B * H, T, D)).astype(dt)
        tq, tk = (tt(q), tt(k)) if torch else (None, None)
        add(f"bmm q@k^T {B*H}x{T}x{D}x{T} {np.dtype(dt).name}", R(lambda: mm(q, k.swapaxes(-1, -2))),
            R(lambda: cp.matmul(q, k.swapaxes(-1, -2))), Rt(lambda: tq @ tk.transpose(-1, -2)),
            2 * B * H * T * T * D, "TFLOP/s")
        a = w = q = k = ta = tw = tq = tk = None

    x = rs.standard_normal((N, 4 * C)).astype(np.float32)
    g = rs.standard_normal((N, 4 * C)).astype(np.float32)
    tx = tt(x) if torch else None
    add("gelu fwd", R(lambda: gk.get_kernel("gelu_forward")(x)), R(lambda: fg.gelu_forward(x)),
        Rt(lambda: tF.gelu(tx, approximate="tanh")), 2 * x.nbytes, "GB/s")
    s_gelu = fg.gelu_forward(x)[1]
    add("gelu bwd", R(lambda: gk.get_kernel("gelu_backward")(x, g)), R(lambda: fg.gelu_backward(x, s_gelu, g)),
        float("nan"), 3 * x.nbytes, "GB/s")
    x = g = tx = s_gelu = None

    x = rs.standard_normal((N, C)).astype(np.float32)
    w = rs.standard_normal((C,)).astype(np.float32)
    b = rs.standard_normal((C,)).astype(np.float32)
    gy = rs.standard_normal((N, C)).astype(np.float32)
    _, mean, rstd = gk.get_kernel("layer_norm_forward")(x, w, b, 1e-5)
    if torch:
        tx, tw, tb = tt(x).requires_grad_(), tt(w).requires_grad_(), tt(b).requires_grad_()
        tgy = tt(gy)
        ty = tF.layer_norm(tx, (C,), tw, tb, 1e-5)
    add("layer_norm fwd", R(lambda: gk.get_kernel("layer_norm_forward")(x, w, b, 1e-5)),
        R(lambda: fln.layer_norm_forward(x, w, b, 1e-5)),
        Rt(lambda: tF.layer_norm(tx, (C,), tw, tb, 1e-5)), 2 * x.nbytes, "GB/s")
    add("layer_norm bwd", R(lambda: gk.get_kernel("layer_norm_backward")(gy, x, w, mean, rstd)),
        R(lambda: fln.layer_norm_backward(gy, x, w, rstd, True)),
        Rt(lambda: torch.autograd.grad(ty, (tx, tw, tb), tgy, retain_graph=True)), 3 * x.nbytes, "GB/s")
    x = gy = None

    s = rs.standard_normal((B * H * T, T)).astype(np.float32)
    ts_ = tt(s) if torch else None
    add("softmax fwd (BHT, T)", R(lambda: gk.get_kernel("softmax_forward")(s)),
        R(lambda: fs.softmax_forward(s)), Rt(lambda: torch.softmax(ts_, -1)), 2 * s.nbytes, "GB/s")
    s = ts_ = None

    logits = rs.standard_normal((N, V)).astype(np.float32)
    tgt = rs.randint(0, V, N).astype(np.int64)
    loss, lse, cnt = gk.get_kernel("cross_entropy_forward")(logits, tgt, -100)

    def ours_ce():
        l_, lse_, c_ = gk.get_kernel("cross_entropy_forward")(logits, tgt, -100)
        return gk.get_kernel("cross_entropy_backward")(logits, tgt, lse_, 1.0 / c_, -100)

    def cupy_ce():
        l_, c_, e_, inv_ = fce.cross_entropy_forward(logits, tgt, -100)
        return fce.cross_entropy_backward(e_, inv_, tgt, 1.0 / c_, -100, logits.dtype)

    if torch:
        tl, ttg = tt(logits).requires_grad_(), tt(tgt)

        def torch_ce():
            return torch.autograd.grad(tF.cross_entropy(tl, ttg), tl)
    add(f"cross_entropy fwd+bwd ({N}, {V})", R(ours_ce), R(cupy_ce), Rt(torch_ce if torch else None),
        3 * logits.nbytes, "GB/s")
    logits = tgt = None

    for dt in (np.float32, np.float16):
        q, k, v, do = (rs.standard_normal((B, H, T, D)).astype(dt) for _ in range(4))
        sc = 1 / math.sqrt(D)
        fl = 4 * B * H * T * T * D / 2   # causal: half the scores
        o, l_ = gk.get_kernel("attention_forward")(q, k, v, True, sc)
        tq, tk, tv = (tt(q), tt(k), tt(v)) if torch else (None, None, None)
        add(f"attention fwd {np.dtype(dt).name}", R(lambda: gk.get_kernel("attention_forward")(q, k, v, True, sc)),
            R(lambda: at.attention_forward_matmul(q, k, v, True, sc)),
            Rt(lambda: tF.scaled_dot_product_attention(tq, tk, tv, is_causal=True)), fl, "TFLOP/s")
        if torch:
            tq_, tk_, tv_ = (t_.detach().requires_grad_() for t_ in (tq, tk, tv))
            tout = tF.scaled_dot_product_attention(tq_, tk_, tv_, is_causal=True)
            tdo = tt(do)
        add(f"attention bwd {np.dtype(dt).name}",
            R(lambda: gk.get_kernel("attention_backward")(q, k, v, o, l_, do, True, sc)),
            R(lambda: at.attention_backward_matmul(q, k, v, o, l_, do, True, sc)),
            Rt(lambda: torch.autograd.grad(tout, (tq_, tk_, tv_), tdo, retain_graph=True)), 2.5 * fl, "TFLOP/s")
        if dt == np.float16:   # the flash kernel against the GEMM version at full size
            o2, l2 = at.attention_forward_matmul(q, k, v, True, sc)
            g1 = gk.get_kernel("attention_backward")(q, k, v, o, l_, do, True, sc)
            g2 = at.attention_backward_matmul(q, k, v, o2, l2, do, True, sc)
            errs = [float(cp.linalg.norm((a_.astype(np.float32) - b_.astype(np.float32)).ravel())
                          / cp.linalg.norm(b_.astype(np.float32).ravel()))
                    for a_, b_ in zip((o, l_) + tuple(g1), (o2, l2) + tuple(g2))]
            print("  flash vs GEMM attention at full size, rel err o, lse, dq, dk, dv: "
                  + ", ".join(f"{e_:.2e}" for e_ in errs), flush=True)
        add(f"attention generic cupy fwd {np.dtype(dt).name}",
            R(lambda: fa.attention_forward(q, k, v, True, sc)), float("nan"), float("nan"), fl, "TFLOP/s")

    # AdamW over GPT-2 124M-like parameter shapes
    shapes = [(V, C), (1024, C)] + [s_ for _ in range(12 if not args.small else 2) for s_ in
                                    [(C,), (C,), (C, 3 * C), (3 * C,), (C, C), (C,), (C,), (C,), (C, 4 * C),
                                     (4 * C,), (4 * C, C), (C,)]] + [(C,), (C,)]
    ps = [rs.standard_normal(s_).astype(np.float32) for s_ in shapes]
    gs = [rs.standard_normal(s_).astype(np.float32) * 1e-2 for s_ in shapes]
    ms = [cp.zeros_like(p) for p in ps]
    vs = [cp.zeros_like(p) for p in ps]
    nbytes = sum(p.nbytes for p in ps) * 7   # read p g m v, write p m v
    add(f"adamw_step {len(ps)} tensors {sum(p.size for p in ps)/1e6:.0f}M",
        R(lambda: gk.get_kernel("adamw_step")(ps, gs, ms, vs, 1e-4, 0.9, 0.95, 1e-8, 0.1, 10)),
        R(lambda: [adamw_update(p, g, m, v, lr=1e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=10)
                   for p, g, m, v in zip(ps, gs, ms, vs)]),
        float("nan"), nbytes, "GB/s")
    if torch:
        tps = [torch.nn.Parameter(tt(p)) for p in ps]
        for tp, g_ in zip(tps, gs):
            tp.grad = tt(g_)
        opt = torch.optim.AdamW(tps, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        rows[-1] = rows[-1][:3] + (Rt(opt.step),) + rows[-1][4:]

    print()
    print(f"{'kernel':44s} {'ours ms':>9s} {'cupy ms':>9s} {'torch ms':>9s} {'x cupy':>7s} {'x torch':>7s}  achieved")
    for name, ours, ref, tor, rate in rows:
        print(f"{name:44s} {ours:9.3f} {ref:9.3f} {tor:9.3f} {ref / ours:7.2f} {tor / ours:7.2f}  {rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
