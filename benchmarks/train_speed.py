"""Training speed: tinygrad-llm against PyTorch eager on the same model, same machine, same run.

    python benchmarks/train_speed.py --mode cpu              # 2-core CPU config (vocab 512, ctx 128, 4x4x256, B 16)
    python benchmarks/train_speed.py --mode tf32             # GPT-2 124M, batch 8 x 1024, one GPU
    python benchmarks/train_speed.py --mode mixed            # float16 compute (ours) vs bf16 autocast (PyTorch)
    python benchmarks/train_speed.py --mode fp32 --steps 10 --no-torch
    python benchmarks/train_speed.py --mode tf32 --compile   # also torch.compile (its compile time is not counted)

One step = forward, backward, AdamW update (lr 6e-4, weight decay 0.1, no clipping), on random token batches.
On a GPU ours runs twice: eager (one launch at a time from Python) and as a CUDA graph (``GraphTrainStep``: the
whole step recorded once and replayed; ``--no-graph`` leaves it out). Each step ends with a host read of the loss
(both frameworks), so ms/step is the time from issuing a step to having its loss. Also printed for ours: the host
time to issue one step (until the call returns) and the device time of the step (CUDA events around it).
Printed for each framework: tokens/s, ms/step (median of the timed steps), MFU and peak memory, then the ratio
ours / PyTorch. MFU counts 6N + 12·L·C·T FLOPs per token (N = parameters without the position table) against
``--peak-tflops`` (default: the mode's ceiling measured with CuPy on an H100; on the CPU none is printed).
PyTorch is a reference only: it is imported here, never by the package.
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
    "gpu": dict(vocab_size=50304, context_length=1024, n_layer=12, n_head=12, n_embd=768, batch=8),
}
PEAK_TFLOPS = {"fp32": 51.6, "tf32": 429.0, "mixed": 790.0}  # CuPy GEMM ceilings measured on one H100


def _config(c):
    import tinygrad_llm as tl
    return tl.GPTConfig(vocab_size=c["vocab_size"], context_length=c["context_length"], n_layer=c["n_layer"],
                        n_head=c["n_head"], n_embd=c["n_embd"], dropout=0.0, qkv_bias=True, bias=True,
                        tie_weights=True)


def flops_per_token(c) -> float:
    from tinygrad_llm.bench import flops_per_token as fpt
    return fpt(_config(c))


# ---------------------------------------------------------------------------------------------------- ours
def bench_ours(c, mode, steps, warmup, seed=0):
    """The package's own measurement (tinygrad_llm.bench, also `tinygrad-llm bench`)."""
    from tinygrad_llm.bench import measure_training_speed
    device = "cpu" if mode == "cpu" else "cuda"
    precision = "tf32" if mode == "cpu" else mode
    return measure_training_speed(_config(c), c["batch"], device, precision, steps, warmup, seed)


def bench_ours_graph(c, mode, steps, warmup, seed=0):
    """The step as one CUDA graph (tinygrad_llm.train.graph_step.GraphTrainStep), same model and optimizer."""
    import cupy as cp

    import autograd as ag
    import tinygrad_llm as tl
    from autograd import cuda as agcuda
    from tinygrad_llm.train.graph_step import GraphTrainStep

    agcuda.set_tf32(mode != "fp32")
    cfg = _config(c)
    model = tl.GPT(cfg, seed=seed, device="cuda")
    opt = tl.optim.AdamW(model, lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))
    scaler = ag.amp.GradScaler() if mode == "mixed" else None
    step_fn = GraphTrainStep(model, opt, lambda s: 6e-4, autocast_dtype="float16" if scaler else None,
                             loss_scaler=scaler)
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


def bench_ours_eager_split(c, mode, steps, seed=0):
    """Host issue time and device time of one eager step (events around it; the host clock until the step's
    Python returns, before the loss read), for the comparison with the graph."""
    import cupy as cp

    import autograd as ag
    import tinygrad_llm as tl
    from autograd import cuda as agcuda
    from tinygrad_llm.train.step import TrainStep

    agcuda.set_tf32(mode != "fp32")
    model = tl.GPT(_config(c), seed=seed, device="cuda")
    opt = tl.optim.AdamW(model, lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))
    scaler = ag.amp.GradScaler() if mode == "mixed" else None
    step_fn = TrainStep(model, opt, lambda s: 6e-4, autocast_dtype="float16" if scaler else None, loss_scaler=scaler)
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


# ---------------------------------------------------------------------------------------------------- PyTorch
def bench_torch(c, mode, steps, warmup, seed=0, compile=False):
    import torch
    from torch_gpt import torch_gpt

    device = "cpu" if mode == "cpu" else "cuda"
    torch.manual_seed(seed)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = mode in ("tf32", "mixed")
        torch.backends.cudnn.allow_tf32 = mode in ("tf32", "mixed")
    T, V = c["context_length"], c["vocab_size"]
    model = torch_gpt(V, T, c["n_layer"], c["n_head"], c["n_embd"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))
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
        if mode == "mixed":
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["cpu", "fp32", "tf32", "mixed"], default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--no-graph", action="store_true", help="leave out our CUDA-graph step (GPU modes)")
    ap.add_argument("--no-eager", action="store_true", help="leave out our eager step (GPU modes)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both frameworks (cpu mode)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args(argv)

    c = dict(CONFIGS["cpu" if args.mode == "cpu" else "gpu"])
    if args.batch:
        c["batch"] = args.batch
    tokens = c["batch"] * c["context_length"]
    fpt = flops_per_token(c)
    peak_tflops = args.peak_tflops or PEAK_TFLOPS.get(args.mode)
    if args.mode == "cpu":
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            pass

    results = {}
    gpu = args.mode != "cpu"
    if not args.no_ours and not (gpu and args.no_eager):
        results["tinygrad-llm"] = bench_ours(c, args.mode, args.steps, args.warmup)
        if gpu:
            results["tinygrad-llm"].update(bench_ours_eager_split(c, args.mode, min(args.steps, 5)))
        _free_gpu()
    if not args.no_ours and gpu and not args.no_graph:
        try:
            results["tinygrad-llm graph"] = bench_ours_graph(c, args.mode, args.steps, args.warmup)
        except Exception as e:     # report and go on with the reference columns
            import traceback
            traceback.print_exc()
            print(f"the CUDA-graph step failed: {type(e).__name__}: {e}", file=sys.stderr)
        _free_gpu()
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            results["pytorch"] = bench_torch(c, args.mode, args.steps, args.warmup)
            if args.compile and gpu:
                results["torch.compile"] = bench_torch(c, args.mode, args.steps, args.warmup, compile=True)
        except ImportError:
            print("PyTorch is not importable here: no reference column", file=sys.stderr)

    print(f"\nmode {args.mode}: {c}  ({tokens} tokens/step, {fpt / 1e6:.1f} MFLOP/token)")
    print(f"{'framework':20s} {'tokens/s':>10s} {'ms/step':>9s} {'MFU':>7s} {'peak MiB':>9s} {'host ms':>8s} "
          f"{'device ms':>9s}")
    for name, r in results.items():
        tps = tokens / r["step_s"]
        mfu = f"{100 * tps * fpt / (peak_tflops * 1e12):6.1f}%" if peak_tflops and args.mode != "cpu" else "    -"
        mem = f"{r['peak_bytes'] / 2**20:9.0f}" if r.get("peak_bytes") else "        -"
        hs = f"{1000 * r['host_s']:8.1f}" if "host_s" in r else "       -"
        ds = f"{1000 * r['device_s']:9.1f}" if "device_s" in r else "        -"
        r["tokens_per_s"] = tps
        print(f"{name:20s} {tps:10.0f} {1000 * r['step_s']:9.1f} {mfu:>7s} {mem} {hs} {ds}")
    if "pytorch" in results:
        for name in [k for k in results if k.startswith("tinygrad-llm")]:
            for ref in [k for k in ("pytorch", "torch.compile") if k in results]:
                ratio = results[name]["tokens_per_s"] / results[ref]["tokens_per_s"]
                print(f"ratio {name} / {ref}: {ratio:.3f}")
                results[f"ratio {name} / {ref}"] = ratio
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"mode": args.mode, "config": c, **{k: (v if not isinstance(v, dict) else
                                {kk: vv for kk, vv in v.items() if kk != "losses"}) for k, v in results.items()}})
                    + "\n")


if __name__ == "__main__":
    main()
