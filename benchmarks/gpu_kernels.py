"""Device time of our CUDA kernels against PyTorch's, side by side in one run: attention, LayerNorm, GELU, bias-GELU and
cross-entropy (and one matmul and one Linear with its bias for reference), each in float32, float16 and bfloat16.

    python3 benchmarks/gpu_kernels.py                    # full shapes (GPT-2 124M / 355M, T 1024 and 4096, ...)
    python3 benchmarks/gpu_kernels.py --small            # small shapes, a quick check that every row runs
    python3 benchmarks/gpu_kernels.py --only attention --dtypes bfloat16 --json out.jsonl

Rows. Attention (causal, forward and forward+backward) at (B, H, T, D): GPT-2 124M (8, 12, 1024, 64), 355M
(8, 16, 1024, 64), both at T 4096 with B 2, head size 128 (4, 16, 1024, 128), nanoGPT's baby GPT (64, 6, 256, 64);
ours are the registered kernels ``attention_forward`` / ``attention_backward`` called directly (the path that
served, flash or GEMM, is named in the row); PyTorch's is ``scaled_dot_product_attention`` with ``torch.autograd.grad``
for the backward. float32: ours with TF32 on, PyTorch with TF32 allowed. LayerNorm (8192 x 768) forward and backward
(PyTorch: ``aten.native_layer_norm`` / ``native_layer_norm_backward``), GELU (tanh) and bias-GELU (8192 x 3072)
forward and backward (PyTorch: ``gelu`` / ``aten.gelu_backward``; bias-GELU is PyTorch eager's add + gelu, and
gelu_backward + a column sum), cross-entropy forward+backward (8192 x 50304; PyTorch: ``cross_entropy`` and
``torch.autograd.grad``). Both sides get the same fresh random values (standard normal, drawn on the GPU in float32
and cast to the row's dtype).

Timing: device time, not launch time. ``--calls`` calls of one row are captured into one CUDA graph (ours:
``autograd.cuda.graph.CUDAGraph``; PyTorch: ``torch.cuda.CUDAGraph``) after two eager warm-up calls; each of
``--reps`` replays is timed between CUDA events; the median divided by ``--calls`` is the ms per call. A side that
cannot be captured is timed as ``--calls`` eager back-to-back calls between events instead (marked "ev" in the
``timing`` column; host launch gaps may then count). The ``speed`` column is PyTorch ms / ours ms: >= 1.0 means ours
is at least as fast; ``bar`` is the target speed (0.9 for attention, 1.0 for the others) and ``ok`` says whether the
row meets it. ``rel err`` is ||ours - torch|| / ||torch|| over the outputs both return (float32 norms): a fast
kernel that computes something else shows here. A side whose kernel does not take the dtype (or is missing) prints
n/a, with the reason under the table. Rates: TFLOP/s for attention (causal: half the scores; backward counted as
2.5x the forward), GB/s for the memory-bound kernels (bytes read + written once).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ATTENTION_SHAPES = {   # name: (B, H, T, D)
    "full": [("124M", 8, 12, 1024, 64), ("355M", 8, 16, 1024, 64), ("124M T4096", 2, 12, 4096, 64),
             ("355M T4096", 2, 16, 4096, 64), ("D128", 4, 16, 1024, 128), ("baby", 64, 6, 256, 64)],
    "small": [("small", 2, 4, 256, 64), ("small D128", 1, 2, 256, 128), ("small T197", 1, 2, 197, 64)],
}
ROWS = {"full": dict(ln=(8192, 768), gelu=(8192, 3072), ce=(8192, 50304)),
        "small": dict(ln=(1024, 768), gelu=(1024, 3072), ce=(1024, 8192))}
DTYPES = ("float32", "float16", "bfloat16")
ATTENTION_BAR, KERNEL_BAR = 0.9, 1.0
_SAME = (lambda o: o, lambda t: t)     # which outputs rel err compares: every output both sides return


# ---------------------------------------------------------------------------------------------------- timing
def _median_ms(record_pair, run, reps: int, calls: int) -> float:
    ts = []
    for _ in range(reps):
        a, b, elapsed = record_pair()
        a.record()
        run()
        b.record()
        b.synchronize()
        ts.append(elapsed(a, b) / calls)
    return float(np.median(ts))


def time_ours(fn, calls: int, reps: int, graph: bool = True) -> tuple[float, str]:
    """(ms per call, 'graph' | 'ev') of ``fn`` on CuPy's current stream."""
    import cupy as cp
    from autograd.cuda.graph import CUDAGraph

    def loop():
        for _ in range(calls):
            fn()
    for _ in range(2):
        fn()
    cp.cuda.Device().synchronize()
    g, run, kind = None, loop, "ev"
    if graph:
        try:
            g = CUDAGraph(name="gpu_kernels")
            with g.capture():
                loop()
            run, kind = g.replay, "graph"
        except Exception as e:   # the row is timed eagerly instead; say why once
            print(f"    (ours not captured, timed eagerly: {str(e).splitlines()[0][:160]})", flush=True)
            g = None
    run()
    cp.cuda.Device().synchronize()
    pair = lambda: (cp.cuda.Event(), cp.cuda.Event(), cp.cuda.get_elapsed_time)
    ms = _median_ms(pair, run, reps, calls)
    if g is not None:      # drop the recording and give its private pool back before the next row
        g.graph = None
        g.pool.free_all_blocks()
    return ms, kind


def time_torch(fn, calls: int, reps: int, graph: bool = True) -> tuple[float, str]:
    """(ms per call, 'graph' | 'ev') of ``fn`` on PyTorch's current stream (warm-up on a side stream, as
    torch.cuda.graphs asks before a capture)."""
    import torch

    def loop():
        for _ in range(calls):
            fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g, run, kind = None, loop, "ev"
    if graph:
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                loop()
            run, kind = g.replay, "graph"
        except Exception as e:
            print(f"    (torch not captured, timed eagerly: {str(e).splitlines()[0][:160]})", flush=True)
            g = None
            torch.cuda.synchronize()
    run()
    torch.cuda.synchronize()
    pair = lambda: (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),
                    lambda a, b: a.elapsed_time(b))
    ms = _median_ms(pair, run, reps, calls)
    del g
    return ms, kind


# ---------------------------------------------------------------------------------------------------- inputs
class Inputs:
    """The same random values for both sides: drawn in float32 by CuPy, cast to the row's dtype for ours, shared
    with PyTorch through DLPack and cast there."""

    def __init__(self, seed: int):
        import cupy as cp
        import torch
        from autograd.dtypes import bfloat16
        self.cp, self.torch = cp, torch
        self.rs = cp.random.RandomState(seed)
        self.np_dtype = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": bfloat16}
        self.torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        self.missing: set[str] = set()

    def normal(self, shape, dtype: str, scale: float = 1.0):
        """(ours CuPy array, PyTorch tensor) of one standard-normal draw times ``scale``; ours is None when this
        install has no such dtype (no ml_dtypes for bfloat16, or a CuPy that cannot cast to it)."""
        base = self.rs.standard_normal(shape, dtype=np.float32)
        if scale != 1.0:
            base *= np.float32(scale)
        tensor = self.torch.from_dlpack(base).to(self.torch_dtype[dtype], copy=True)
        dt, ours = self.np_dtype[dtype], None
        if dt is not None:
            try:
                ours = base.astype(dt)
            except Exception as e:
                if dtype not in self.missing:
                    print(f"  ours has no {dtype} arrays here: {type(e).__name__}: {e}", flush=True)
                self.missing.add(dtype)
        return ours, tensor

    def targets(self, n: int, vocab: int):
        t = self.rs.randint(0, vocab, n).astype(np.int64)
        return t, self.torch.from_dlpack(t).clone()


def rel_err(ours, ref) -> float:
    """||ours - ref|| / ||ref|| over the outputs both sides return (ours CuPy arrays, ref PyTorch tensors)."""
    import cupy as cp
    ours = ours if isinstance(ours, (tuple, list)) else (ours,)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    num = den = 0.0
    for a, b in zip(ours, ref):
        if a is None or b is None:
            continue
        a = cp.asarray(a).astype(np.float32).ravel()
        b = cp.from_dlpack(b.detach().float().contiguous()).ravel()
        num += float(cp.sum((a - b) ** 2))
        den += float(cp.sum(b * b))
    return math.sqrt(num / den) if den > 0 else float("nan")


# ---------------------------------------------------------------------------------------------------- the rows
def attention_path(q, k, v, backward: bool) -> str:
    """Which of our attention implementations takes these inputs: flash (float16/bfloat16), tf32-flash, gemm."""
    if q is None:
        return "-"
    try:
        from autograd.cuda import flash_attention as fl
        if (fl.supports_backward if backward else fl.supports)(q, k, v):
            return "flash"
        try:
            from autograd.cuda import flash_attention_tf32 as ft
        except ImportError:
            return "gemm"
        supports = getattr(ft, "supports_backward" if backward else "supports", getattr(ft, "supports", None))
        return "tf32-flash" if supports is not None and supports(q, k, v) else "gemm"
    except Exception as e:       # a label only: never stop the run for it
        return f"? {type(e).__name__}"


def attention_rows(inp, shapes, dtype: str):
    """(name, ours fn | error, torch fn, amount, unit, bar) for forward and forward+backward at each shape."""
    import torch.nn.functional as tF

    from autograd.cuda import get_kernel
    fwd, bwd = get_kernel("attention_forward"), get_kernel("attention_backward")
    for label, B, H, T, D in shapes:
        shape = (B, H, T, D)
        (q, tq), (k, tk), (v, tv), (do, tdo) = (inp.normal(shape, dtype) for _ in range(4))
        sc = 1.0 / math.sqrt(D)
        flops = 4 * B * H * T * T * D / 2        # causal: half of the scores are computed
        tq_, tk_, tv_ = (t.detach().requires_grad_() for t in (tq, tk, tv))
        name = f"attention {label} {shape}"

        def ours_f(q=q, k=k, v=v, sc=sc):
            return fwd(q, k, v, True, sc)

        def ours_fb(q=q, k=k, v=v, do=do, sc=sc):
            o, lse = fwd(q, k, v, True, sc)
            return bwd(q, k, v, o, lse, do, True, sc)

        def torch_f(tq=tq, tk=tk, tv=tv):
            return tF.scaled_dot_product_attention(tq, tk, tv, is_causal=True)

        def torch_fb(tq_=tq_, tk_=tk_, tv_=tv_, tdo=tdo):
            o = tF.scaled_dot_product_attention(tq_, tk_, tv_, is_causal=True)
            return inp.torch.autograd.grad(o, (tq_, tk_, tv_), tdo)

        ok = q is not None and fwd is not None
        path_f, path_b = attention_path(q, k, v, False), attention_path(q, k, v, True)
        yield (f"{name} fwd [{path_f}]", ours_f if ok else None, torch_f, flops, "TFLOP/s",
               ATTENTION_BAR, (lambda o: o[0], lambda t: t))
        path_fb = path_f if path_f == path_b else f"{path_f}/{path_b}"
        yield (f"{name} fwd+bwd [{path_fb}]", ours_fb if ok else None, torch_fb, 3.5 * flops,
               "TFLOP/s", ATTENTION_BAR, _SAME)


def row_families(inp, small: bool, dtype: str) -> list:
    """(name, generator of rows) per op family; each family draws its own inputs (so no closure sees another
    family's arrays) and one that fails to build its rows ends only itself."""
    from autograd.cuda import get_kernel
    sizes = ROWS["small" if small else "full"]
    itemsize = 4 if dtype == "float32" else 2
    out = [("attention", attention_rows(inp, ATTENTION_SHAPES["small" if small else "full"], dtype))]
    for name, family in (("matmul", _matmul_rows), ("layer_norm", _layer_norm_rows), ("gelu", _gelu_rows),
                         ("cross_entropy", _cross_entropy_rows)):
        out.append((name, family(inp, sizes, dtype, get_kernel, itemsize)))
    return out


def _matmul_rows(inp, sizes, dtype, K, itemsize):
    import torch.nn.functional as tF
    N, C = sizes["ln"]
    (a, ta), (w, tw) = inp.normal((N, C), dtype), inp.normal((C, 4 * C), dtype, 1 / math.sqrt(C))
    yield (f"matmul ({N}, {C}) @ ({C}, {4 * C})", (lambda: K("matmul")(a, w)) if a is not None else None,
           lambda: ta @ tw, 2 * N * C * 4 * C, "TFLOP/s", None, _SAME)
    # Linear's forward with its bias (ours: inside the GEMM's epilogue; PyTorch: F.linear), weight (out, in)
    (wl, twl), (b, tb) = inp.normal((4 * C, C), dtype, 1 / math.sqrt(C)), inp.normal((4 * C,), dtype)
    yield (f"linear+bias ({N}, {C}) -> {4 * C}", (lambda: K("linear_bias")(a, wl, b)) if a is not None else None,
           lambda: tF.linear(ta, twl, tb), 2 * N * C * 4 * C, "TFLOP/s", None, _SAME)


def _layer_norm_rows(inp, sizes, dtype, K, itemsize):
    import torch
    aten = torch.ops.aten
    N, C = sizes["ln"]
    (x, tx), (w, tw), (b, tb), (gy, tgy) = (inp.normal((N, C), dtype), inp.normal((C,), dtype),
                                            inp.normal((C,), dtype), inp.normal((N, C), dtype))
    stats = None                         # ours' (mean, rstd) for the backward, or why there are none
    if x is not None and K("layer_norm_forward") is not None:
        try:
            stats = K("layer_norm_forward")(x, w, b, 1e-5)[1:]
        except Exception as e:
            stats = e
    _, tmean, trstd = aten.native_layer_norm(tx, [C], tw, tb, 1e-5)
    yield (f"layer_norm fwd ({N}, {C})", (lambda: K("layer_norm_forward")(x, w, b, 1e-5)) if x is not None else None,
           lambda: aten.native_layer_norm(tx, [C], tw, tb, 1e-5), 2 * N * C * itemsize, "GB/s", KERNEL_BAR, _SAME)
    yield (f"layer_norm bwd ({N}, {C})",
           (lambda: K("layer_norm_backward")(gy, x, w, *stats)) if isinstance(stats, tuple) else stats,
           lambda: aten.native_layer_norm_backward(tgy, tx, [C], tmean, trstd, tw, tb, [True, True, True]),
           3 * N * C * itemsize, "GB/s", KERNEL_BAR, _SAME)


def _gelu_rows(inp, sizes, dtype, K, itemsize):
    import torch
    import torch.nn.functional as tF
    aten = torch.ops.aten
    N, C = sizes["gelu"]
    (x, tx), (b, tb), (gy, tgy) = inp.normal((N, C), dtype), inp.normal((C,), dtype), inp.normal((N, C), dtype)
    txb = tx + tb                       # what PyTorch's autograd keeps for the backward of gelu(x + b)
    have = x is not None
    nbytes = N * C * itemsize
    yield (f"gelu fwd ({N}, {C})", (lambda: K("gelu_forward")(x)) if have else None,
           lambda: tF.gelu(tx, approximate="tanh"), 2 * nbytes, "GB/s", KERNEL_BAR, _SAME)
    yield (f"gelu bwd ({N}, {C})", (lambda: K("gelu_backward")(x, gy)) if have else None,
           lambda: aten.gelu_backward(tgy, tx, approximate="tanh"), 3 * nbytes, "GB/s", KERNEL_BAR, _SAME)
    yield (f"bias_gelu fwd ({N}, {C})", (lambda: K("bias_gelu_forward")(x, b)) if have else None,
           lambda: tF.gelu(tx + tb, approximate="tanh"), 2 * nbytes, "GB/s", KERNEL_BAR, _SAME)

    def torch_bias_gelu_bwd():
        gx = aten.gelu_backward(tgy, txb, approximate="tanh")
        return gx, gx.sum(0)
    yield (f"bias_gelu bwd ({N}, {C})", (lambda: K("bias_gelu_backward")(x, b, gy)) if have else None,
           torch_bias_gelu_bwd, 3 * nbytes, "GB/s", KERNEL_BAR, _SAME)


def _cross_entropy_rows(inp, sizes, dtype, K, itemsize):
    import torch
    import torch.nn.functional as tF
    N, V = sizes["ce"]
    logits, tlogits = inp.normal((N, V), dtype)
    tgt, ttgt = inp.targets(N, V)
    tl_ = tlogits.detach().requires_grad_()

    def ours_ce():
        loss_sum, lse, count = K("cross_entropy_forward")(logits, tgt, -100)
        return K("cross_entropy_backward")(logits, tgt, lse, 1.0 / count, -100)

    def torch_ce():
        return torch.autograd.grad(tF.cross_entropy(tl_, ttgt), tl_)
    yield (f"cross_entropy fwd+bwd ({N}, {V})", ours_ce if logits is not None else None, torch_ce,
           3 * N * V * itemsize, "GB/s", KERNEL_BAR, _SAME)


# ---------------------------------------------------------------------------------------------------- main
def measure(row, dtype: str, args) -> dict:
    name, ours, tor, amount, unit, bar, (pick_ours, pick_torch) = row
    r = dict(name=name, dtype=dtype, bar=bar, unit=unit)
    outs = {}
    for side, fn, timer in (("ours", ours, time_ours), ("torch", tor, time_torch)):
        if fn is None or isinstance(fn, Exception):
            r[side] = None
            r[side + "_why"] = (f"{type(fn).__name__}: {fn}" if isinstance(fn, Exception) else
                                "no such dtype or kernel on this install")
            continue
        try:
            outs[side] = fn()
            r[side], r[side + "_timing"] = timer(fn, args.calls, args.reps, graph=not args.no_graph)
            r[side + "_rate"] = amount / (r[side] * 1e-3) / (1e9 if unit == "GB/s" else 1e12)
        except Exception as e:   # a kernel that does not take this dtype (yet): n/a, the script goes on
            r[side] = None
            r[side + "_why"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if "ours" in outs and "torch" in outs:
        try:
            r["rel_err"] = rel_err(pick_ours(outs["ours"]), pick_torch(outs["torch"]))
        except Exception as e:
            r["rel_err_why"] = f"{type(e).__name__}: {e}"
    if r.get("ours") and r.get("torch"):
        r["speed"] = r["torch"] / r["ours"]
    print(f"  {name} {dtype}: ours {_ms(r.get('ours'))} ms, torch {_ms(r.get('torch'))} ms", flush=True)
    return r


def _ms(v) -> str:
    return f"{v:.4f}" if v is not None else "n/a"


def print_table(results: list[dict]) -> None:
    print("\nspeed = PyTorch ms / ours ms (>= 1.0: ours at least as fast); ok = speed >= bar (matmul: no bar)")
    print(f"{'row':58s} {'dtype':8s} {'ours ms':>9s} {'torch ms':>9s} {'speed':>6s} {'bar':>4s} {'ok':>3s} "
          f"{'ours rate':>11s} {'torch rate':>11s} {'rel err':>8s} timing")
    for r in results:
        speed = f"{r['speed']:6.2f}" if "speed" in r else "   n/a"
        ok = ("yes" if r["speed"] >= r["bar"] else " NO") if "speed" in r and r["bar"] else "  -"
        bar = f"{r['bar']:4.1f}" if r["bar"] else "   -"
        unit = "TF/s" if r["unit"] == "TFLOP/s" else "GB/s"
        rates = [f"{r[s + '_rate']:6.1f} {unit}" if r.get(s) else "        n/a" for s in ("ours", "torch")]
        err = f"{r['rel_err']:8.1e}" if "rel_err" in r else "       -"
        timing = "/".join(r.get(s + "_timing", "-") for s in ("ours", "torch"))
        print(f"{r['name']:58s} {r['dtype']:8s} {_ms(r.get('ours')):>9s} {_ms(r.get('torch')):>9s} {speed} "
              f"{bar} {ok} {rates[0]:>11s} {rates[1]:>11s} {err} {timing}")
    whys = [(r["name"], r["dtype"], s, r[s + "_why"]) for r in results for s in ("ours", "torch", "rel_err")
            if s + "_why" in r]
    if whys:
        print("\nn/a:")
        for name, dt, side, why in whys:
            print(f"  {name} {dt} {side}: {why}")
    rated = [r for r in results if "speed" in r and r["bar"]]
    if rated:
        print(f"\n{sum(r['speed'] >= r['bar'] for r in rated)} of {len(rated)} measured rows meet their bar")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="small shapes (a quick check that every row runs)")
    ap.add_argument("--calls", type=int, default=10, help="calls captured into one graph (default 10)")
    ap.add_argument("--reps", type=int, default=5, help="timed replays per row; the median counts (default 5)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of " + ", ".join(DTYPES))
    ap.add_argument("--only", default=None, help="only rows whose name contains this text (e.g. attention, gelu)")
    ap.add_argument("--no-graph", action="store_true", help="time eager back-to-back calls instead of graph replays")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="append the rows as one JSON line to this file")
    args = ap.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        ap.error(f"--dtypes: unknown {bad}; choose from {', '.join(DTYPES)}")
    t_start = time.perf_counter()

    try:
        import cupy as cp
        import torch
        if not torch.cuda.is_available() or cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device visible to CuPy and PyTorch")
    except Exception as e:
        print(f"gpu_kernels.py needs CuPy, PyTorch with CUDA and a GPU: {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    from autograd import cuda as agcuda
    agcuda.set_tf32(True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = cp.cuda.runtime.getDeviceProperties(0)["name"]
    device = device.decode() if isinstance(device, bytes) else str(device)
    print(f"device {device}; CuPy {cp.__version__}, torch {torch.__version__}; ours TF32 {agcuda.tf32_enabled()}; "
          f"{args.calls} calls per graph, median of {args.reps} replays", flush=True)
    inp = Inputs(args.seed)
    results = []
    for dtype in dtypes:
        for family, rows in row_families(inp, args.small, dtype):
            while True:
                try:
                    row = next(rows)        # draws the row's inputs
                except StopIteration:
                    break
                except Exception as e:      # e.g. a dtype this install cannot make: the other families go on
                    print(f"  {family} {dtype}: rows not built: {type(e).__name__}: {e}", flush=True)
                    break
                if not args.only or args.only in row[0]:
                    results.append(measure(row, dtype, args))
                del row
            del rows
            cp.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
    print_table(results)
    wall = time.perf_counter() - t_start
    print(f"\nwall {wall:.1f} s")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(dict(device=device, small=args.small, calls=args.calls, reps=args.reps,
                                    torch=torch.__version__, wall_s=wall, rows=results)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
