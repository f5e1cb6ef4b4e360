"""Training speed: tinygrad-llm against PyTorch eager on the same model, same machine, same run.

    python benchmarks/train_speed.py --mode cpu              # 2-core CPU config (vocab 512, ctx 128, 4x4x256, B 16)
    python benchmarks/train_speed.py --mode tf32             # GPT-2 124M, batch 8 x 1024, one GPU
    python benchmarks/train_speed.py --mode mixed            # float16 compute (ours) vs bf16 autocast (PyTorch)
    python benchmarks/train_speed.py --mode fp32 --steps 10 --no-torch

One step = forward, backward, AdamW update (lr 6e-4, weight decay 0.1, no clipping), on random token batches.
Printed for each framework: tokens/s, ms/step (median of the timed steps), MFU and peak memory, then the ratio
ours / PyTorch. MFU counts 6N + 12·L·C·T FLOPs per token (N = parameters without the position table) against
``--peak-tflops`` (default: the mode's ceiling measured with CuPy on an H100, issue 5; on the CPU none is printed).
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
PEAK_TFLOPS = {"fp32": 51.6, "tf32": 429.0, "mixed": 790.0}  # CuPy GEMM ceilings on one H100 (issue 5)


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


# ---------------------------------------------------------------------------------------------------- PyTorch
def bench_torch(c, mode, steps, warmup, seed=0):
    import torch
    import torch.nn as nn
    import torch.nn.functional as Fn

    device = "cpu" if mode == "cpu" else "cuda"
    torch.manual_seed(seed)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = mode in ("tf32", "mixed")
        torch.backends.cudnn.allow_tf32 = mode in ("tf32", "mixed")
    C, H, L, T, V = c["n_embd"], c["n_head"], c["n_layer"], c["context_length"], c["vocab_size"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.fc_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
            y = Fn.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, C))
            return x + self.fc_proj(Fn.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            self.head = nn.Linear(C, V, bias=False)
            self.head.weight = self.wte.weight

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for blk in self.blocks:
                x = blk(x)
            logits = self.head(self.ln_f(x))
            return Fn.cross_entropy(logits.view(-1, V), targets.view(-1))

    model = GPT().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))
    rng = np.random.default_rng(seed)
    B = c["batch"]
    batches = [(torch.from_numpy(rng.integers(0, V, (B, T))), torch.from_numpy(rng.integers(0, V, (B, T))))
               for _ in range(4)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
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
    return dict(step_s=statistics.median(times), peak_bytes=peak)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["cpu", "fp32", "tf32", "mixed"], default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
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
    if not args.no_ours:
        results["tinygrad-llm"] = bench_ours(c, args.mode, args.steps, args.warmup)
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            results["pytorch"] = bench_torch(c, args.mode, args.steps, args.warmup)
        except ImportError:
            print("PyTorch is not importable here: no reference column", file=sys.stderr)

    print(f"\nmode {args.mode}: {c}  ({tokens} tokens/step, {fpt / 1e6:.1f} MFLOP/token)")
    print(f"{'framework':14s} {'tokens/s':>10s} {'ms/step':>9s} {'MFU':>7s} {'peak MiB':>9s}")
    for name, r in results.items():
        tps = tokens / r["step_s"]
        mfu = f"{100 * tps * fpt / (peak_tflops * 1e12):6.1f}%" if peak_tflops and args.mode != "cpu" else "    -"
        mem = f"{r['peak_bytes'] / 2**20:9.0f}" if r.get("peak_bytes") else "        -"
        r["tokens_per_s"] = tps
        print(f"{name:14s} {tps:10.0f} {1000 * r['step_s']:9.1f} {mfu:>7s} {mem}")
    if len(results) == 2:
        ratio = results["tinygrad-llm"]["tokens_per_s"] / results["pytorch"]["tokens_per_s"]
        print(f"ratio tinygrad-llm / pytorch: {ratio:.3f}")
        results["ratio"] = ratio
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"mode": args.mode, "config": c, **{k: (v if not isinstance(v, dict) else
                                {kk: vv for kk, vv in v.items() if kk != "losses"}) for k, v in results.items()}})
                    + "\n")


if __name__ == "__main__":
    main()
