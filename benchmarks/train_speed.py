"""Training speed: tinygrad-llm against PyTorch eager on the same model, same machine, same run.

    python benchmarks/train_speed.py --mode cpu              # 2-core CPU config (vocab 512, ctx 128, 4x4x256, B 16)
    python benchmarks/train_speed.py --mode tf32             # GPT-2 124M, batch 8 x 1024, one GPU
    python benchmarks/train_speed.py --mode mixed            # float16 compute (ours) vs bf16 autocast (PyTorch)
    python benchmarks/train_speed.py --mode bf16             # bfloat16 autocast on both sides, no loss scaling
    python benchmarks/train_speed.py --mode bf16 --model gpt2-355m --compile
    python benchmarks/train_speed.py --mode fp32 --steps 10 --no-torch

One step = forward, backward, AdamW update (lr 6e-4, weight decay 0.1, no clipping), on random token batches.
Precision, ours: the trainer's own setting (``train.step.precision_setup``: "tf32" float32 with TF32 matrix
products, "mixed" float16 autocast with a GradScaler, "bf16" bfloat16 autocast without loss scaling, float32 master
weights in every mode; when this install's trainer does not take the mode, ours is skipped with the reason).
PyTorch: TF32 allowed (tf32, mixed, bf16), ``torch.autocast(bfloat16)`` for mixed and bf16, SDPA attention and
``AdamW(fused=True)`` on the GPU. ``--model gpt2-124m`` (12 x 768, default) or ``gpt2-355m`` (24 x 1024), vocabulary
50304, context 1024, batch 8.

On a GPU ours runs twice: eager (one launch at a time from Python) and as a CUDA graph (``GraphTrainStep``: the
whole step recorded once and replayed; ``--no-graph`` leaves it out). ``--compile`` adds torch.compile (its compile
time is not counted). Each step ends with a host read of the loss (both frameworks), so ms/step is the time from
issuing a step to having its loss. Also printed for ours: the host time to issue one step (until the call returns)
and the device time of the step (CUDA events around it). Printed for each: tokens/s, ms/step (median of the timed
steps), MFU and peak memory (ours: CuPy's pool, the graph's private pool included; PyTorch:
``torch.cuda.max_memory_allocated``), then the speed ratio ours / PyTorch (tokens/s; >= 1.0: ours at least as fast)
and the memory ratio. MFU counts 6N + 12·L·C·T FLOPs per token (N the parameters without the position table, the
tied head once: 6N for the matrix products forward and backward; 12·L·C·T for attention's two T x T products,
forward and backward, the causal half not subtracted; PaLM's and nanoGPT's estimate) against ``--peak-tflops``
(default: bf16 and mixed 989, the H100/H200 SXM datasheet's dense bf16/fp16 peak; tf32 and fp32 the CuPy GEMM
ceilings measured on an H100; on the CPU none is printed). PyTorch is a reference only, never imported by the package.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CONFIGS = {
    "cpu": dict(vocab_size=512, context_length=128, n_layer=4, n_head=4, n_embd=256, batch=16),
    "gpt2-124m": dict(vocab_size=50304, context_length=1024, n_layer=12, n_head=12, n_embd=768, batch=8),
    "gpt2-355m": dict(vocab_size=50304, context_length=1024, n_layer=24, n_head=16, n_embd=1024, batch=8),
}
# TFLOP/s for MFU: (value, where it comes from)
PEAK_TFLOPS = {"fp32": (51.6, "CuPy float32 GEMM ceiling measured on an H100"),
               "tf32": (429.0, "CuPy TF32 GEMM ceiling measured on an H100"),
               "mixed": (989.0, "H100/H200 SXM datasheet, dense fp16/bf16"),
               "bf16": (989.0, "H100/H200 SXM datasheet, dense bf16")}
MFU_FORMULA = "6N + 12*L*C*T FLOPs per token (PaLM / nanoGPT; attention's causal half not subtracted)"


def _config(c):
    import tinygrad_llm as tl
    return tl.GPTConfig(vocab_size=c["vocab_size"], context_length=c["context_length"], n_layer=c["n_layer"],
                        n_head=c["n_head"], n_embd=c["n_embd"], dropout=0.0, qkv_bias=True, bias=True,
                        tie_weights=True)


def flops_per_token(c) -> float:
    from tinygrad_llm.bench import flops_per_token as fpt
    return fpt(_config(c))


# ---------------------------------------------------------------------------------------------------- ours
def ours_precision(mode: str):
    """(autocast dtype, GradScaler) of the trainer's precision for ``mode``; raises why ours cannot run it (a
    precision the trainer's config refuses, or one that would not compute in the mode's dtype)."""
    from tinygrad_llm.train.config import TrainConfig
    from tinygrad_llm.train.step import precision_setup
    precision = "tf32" if mode == "cpu" else mode
    device = "cpu" if mode == "cpu" else "cuda"
    TrainConfig(precision=precision, device=device).validate()
    autocast_dtype, scaler = precision_setup(precision, device)
    want = {"mixed": "float16", "bf16": "bfloat16"}.get(mode)
    if (str(autocast_dtype) if autocast_dtype is not None else None) != want or (scaler is None) != (mode != "mixed"):
        raise RuntimeError(f"precision {precision!r} sets autocast {autocast_dtype!r} and loss scaler "
                           f"{type(scaler).__name__ if scaler else None}; mode {mode} needs autocast {want!r}"
                           f"{' with' if mode == 'mixed' else ' without'} loss scaling")
    return autocast_dtype, scaler


def _model_and_optimizer(c, device: str, seed: int):
    import tinygrad_llm as tl
    model = tl.GPT(_config(c), seed=seed, device=device)
    return model, tl.optim.AdamW(model, lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))


def bench_ours(c, mode, steps, warmup, seed=0):
    """The package's own measurement (tinygrad_llm.bench, also `tinygrad-llm bench`): ms/step and peak memory."""
    from tinygrad_llm.bench import measure_training_speed
    ours_precision(mode)
    device = "cpu" if mode == "cpu" else "cuda"
    precision = "tf32" if mode == "cpu" else mode
    return measure_training_speed(_config(c), c["batch"], device, precision, steps, warmup, seed)


def bench_ours_eager_split(c, mode, steps, seed=0):
    """Host issue time and device time of one eager step (events around it; the host clock until the step's
    Python returns, before the loss read), for the comparison with the graph."""
    import cupy as cp

    from tinygrad_llm.train.step import TrainStep

    autocast_dtype, scaler = ours_precision(mode)
    model, opt = _model_and_optimizer(c, "cuda", seed)
    step_fn = TrainStep(model, opt, lambda s: 6e-4, autocast_dtype=autocast_dtype, loss_scaler=scaler)
    rng = np.random.default_rng(seed)
    B, T, V = c["batch"], c["context_length"], c["vocab_size"]
    start, end = cp.cuda.Event(), cp.cuda.Event()
    host, dev = [], []
    for i in range(steps + 2):
        x, y = (cp.asarray(rng.integers(0, V, (B, T))) for _ in range(2))
        t0 = time.perf_counter()
        start.record()
        out = step_fn([(x, y)], i)
        end.record()
        t1 = time.perf_counter()
        float(out.loss)
        if i >= 2:
            host.append(t1 - t0)
            dev.append(cp.cuda.get_elapsed_time(start, end) / 1000)
    return dict(host_s=statistics.median(host), device_s=statistics.median(dev))


def bench_ours_graph(c, mode, steps, warmup, seed=0):
    """The step as one CUDA graph (tinygrad_llm.train.graph_step.GraphTrainStep), same model and optimizer."""
    import cupy as cp

    from tinygrad_llm.train.graph_step import GraphTrainStep

    autocast_dtype, scaler = ours_precision(mode)
    model, opt = _model_and_optimizer(c, "cuda", seed)
    step_fn = GraphTrainStep(model, opt, lambda s: 6e-4, autocast_dtype=autocast_dtype, loss_scaler=scaler)
    rng = np.random.default_rng(seed)
    B, T, V = c["batch"], c["context_length"], c["vocab_size"]
    batches = [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(4)]
    times, host, dev, losses = [], [], [], []
    start, end = cp.cuda.Event(), cp.cuda.Event()
    for i in range(warmup + steps):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        start.record()
        out = step_fn([(x, y)], i)
        end.record()
        t1 = time.perf_counter()
        losses.append(float(out.loss))       # host read: synchronises
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            host.append(t1 - t0)
            dev.append(cp.cuda.get_elapsed_time(start, end) / 1000)
    cp.cuda.Device().synchronize()
    used = cp.get_default_memory_pool().used_bytes()
    peak = used + step_fn.graph.pool.total_bytes()      # what the graph holds (all of it is written by a replay)
    return dict(step_s=statistics.median(times), peak_bytes=peak, losses=losses,
                host_s=statistics.median(host), device_s=statistics.median(dev))


# ---------------------------------------------------------------------------------------------------- PyTorch
def bench_torch(c, mode, steps, warmup, seed=0, compile=False):
    import torch
    from torch_gpt import torch_gpt

    device = "cpu" if mode == "cpu" else "cuda"
    torch.manual_seed(seed)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = mode in ("tf32", "mixed", "bf16")
        torch.backends.cudnn.allow_tf32 = mode in ("tf32", "mixed", "bf16")
    T, V = c["context_length"], c["vocab_size"]
    model = torch_gpt(V, T, c["n_layer"], c["n_head"], c["n_embd"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95),
                            fused=device == "cuda")
    if compile:
        model = torch.compile(model)
    rng = np.random.default_rng(seed)
    B = c["batch"]
    batches = [(torch.from_numpy(rng.integers(0, V, (B, T))), torch.from_numpy(rng.integers(0, V, (B, T))))
               for _ in range(4)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps + (3 if compile else 0)):     # compile: more warm-up (recompiles)
        if compile and i == warmup + 3:
            times = []
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        x, y = x.to(device), y.to(device)
        if mode in ("mixed", "bf16"):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x, y)
        else:
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return dict(step_s=statistics.median(times), peak_bytes=peak)


def _free_gpu():
    """Give the CuPy pools' cached blocks back, so the next framework measures its own peak."""
    try:
        import gc

        import cupy as cp
        gc.collect()
        cp.get_default_memory_pool().free_all_blocks()
    except ImportError:
        pass


def _skip(name: str, e: BaseException) -> None:
    """Report a framework that could not run this mode and go on with the others."""
    import traceback
    traceback.print_exc()
    print(f"{name} skipped: {type(e).__name__}: {e}", file=sys.stderr)


def _device_name(gpu: bool) -> str:
    if not gpu:
        return "cpu"
    try:
        import cupy as cp
        name = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception as e:     # the name is a label only
        return f"unknown GPU ({type(e).__name__})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["cpu", "fp32", "tf32", "mixed", "bf16"], default="cpu")
    ap.add_argument("--model", choices=["gpt2-124m", "gpt2-355m"], default="gpt2-124m",
                    help="the GPU model (the cpu mode has its own small configuration)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--no-graph", action="store_true", help="leave out our CUDA-graph step (GPU modes)")
    ap.add_argument("--no-eager", action="store_true", help="leave out our eager step (GPU modes)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both frameworks (cpu mode)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU (default: see above)")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args(argv)

    gpu = args.mode != "cpu"
    model_name = args.model if gpu else "cpu"
    c = dict(CONFIGS[model_name])
    if args.batch:
        c["batch"] = args.batch
    tokens = c["batch"] * c["context_length"]
    fpt = flops_per_token(c)
    attn_fpt = 12 * c["n_layer"] * c["n_embd"] * c["context_length"]
    n_params = (fpt - attn_fpt) / 6
    peak_tflops, peak_source = ((args.peak_tflops, "--peak-tflops") if args.peak_tflops else
                                PEAK_TFLOPS.get(args.mode, (None, None)))
    if not gpu:
        peak_tflops = None
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            pass

    results, skipped = {}, {}
    if not args.no_ours and not (gpu and args.no_eager):
        try:
            results["tinygrad-llm"] = bench_ours(c, args.mode, args.steps, args.warmup)
            if gpu:
                _free_gpu()
                results["tinygrad-llm"].update(bench_ours_eager_split(c, args.mode, min(args.steps, 5)))
        except Exception as e:     # e.g. a precision this install's trainer does not take
            _skip("tinygrad-llm", e)
            skipped["tinygrad-llm"] = f"{type(e).__name__}: {e}"
        _free_gpu()
    if not args.no_ours and gpu and not args.no_graph:
        try:
            results["tinygrad-llm graph"] = bench_ours_graph(c, args.mode, args.steps, args.warmup)
        except Exception as e:     # report and go on with the reference columns
            _skip("tinygrad-llm graph", e)
            skipped["tinygrad-llm graph"] = f"{type(e).__name__}: {e}"
        _free_gpu()
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            results["pytorch"] = bench_torch(c, args.mode, args.steps, args.warmup)
            if args.compile and gpu:
                results["torch.compile"] = bench_torch(c, args.mode, args.steps, args.warmup, compile=True)
        except ImportError:
            print("PyTorch is not importable here: no reference column", file=sys.stderr)

    device = _device_name(gpu)
    print(f"\nmode {args.mode}, model {model_name} on {device}: {c}  ({tokens} tokens/step)")
    print(f"MFU: {MFU_FORMULA}; N = {n_params / 1e6:.1f}M -> {fpt / 1e6:.1f} MFLOP/token "
          f"({6 * n_params / 1e6:.1f} matrix products + {attn_fpt / 1e6:.1f} attention)"
          + (f"; peak {peak_tflops:g} TFLOP/s ({peak_source})" if peak_tflops else "; no peak on the CPU"))
    print(f"{'framework':20s} {'tokens/s':>10s} {'ms/step':>9s} {'MFU':>7s} {'peak MiB':>9s} {'host ms':>8s} "
          f"{'device ms':>9s}")
    for name, r in results.items():
        tps = tokens / r["step_s"]
        r["tokens_per_s"] = tps
        if peak_tflops:
            r["mfu"] = tps * fpt / (peak_tflops * 1e12)
        mfu = f"{100 * r['mfu']:6.1f}%" if "mfu" in r else "    -"
        mem = f"{r['peak_bytes'] / 2**20:9.0f}" if r.get("peak_bytes") else "        -"
        hs = f"{1000 * r['host_s']:8.1f}" if "host_s" in r else "       -"
        ds = f"{1000 * r['device_s']:9.1f}" if "device_s" in r else "        -"
        print(f"{name:20s} {tps:10.0f} {1000 * r['step_s']:9.1f} {mfu:>7s} {mem} {hs} {ds}")
    for name, why in skipped.items():
        print(f"{name:20s} skipped: {why}")
    ratios = {}
    for name in [k for k in results if k.startswith("tinygrad-llm")]:
        for ref in [k for k in ("pytorch", "torch.compile") if k in results]:
            ratio = results[name]["tokens_per_s"] / results[ref]["tokens_per_s"]
            line = f"speed {name} / {ref}: {ratio:.3f} (tokens/s; >= 1.0: ours at least as fast)"
            ratios[f"speed {name} / {ref}"] = ratio
            if results[name].get("peak_bytes") and results[ref].get("peak_bytes"):
                mem = results[name]["peak_bytes"] / results[ref]["peak_bytes"]
                ratios[f"memory {name} / {ref}"] = mem
                line += f"; peak memory {mem:.3f} (<= 1.0: ours uses no more)"
            print(line)
    if args.json:
        import platform
        try:
            import torch
            torch_version = torch.__version__
        except ImportError:
            torch_version = None
        with open(args.json, "a") as f:
            f.write(json.dumps({"mode": args.mode, "model": model_name, "config": c, "device": device,
                                "host": platform.node(), "torch": torch_version, "tokens_per_step": tokens,
                                "flops_per_token": fpt, "mfu_formula": MFU_FORMULA, "peak_tflops": peak_tflops,
                                "peak_source": peak_source, "skipped": skipped, "ratios": ratios,
                                **{k: {kk: vv for kk, vv in v.items() if kk not in ("losses", "memory")}
                                   for k, v in results.items()}}) + "\n")


if __name__ == "__main__":
    main()
