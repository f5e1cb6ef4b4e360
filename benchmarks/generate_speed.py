"""Generation speed with the KV cache: ``tl.generate`` against a PyTorch decode loop with a static KV cache.

    python benchmarks/generate_speed.py                       # GPT-2 124M, batch 1 and 8, prompt 64, 256 new tokens
    python benchmarks/generate_speed.py --batch 1 --new 128 --dtype float16

Both models have GPT-2 124M's shape with random weights (speed does not depend on them), greedy decoding
(temperature 0: argmax), the same prompt. Ours: ``tl.generate(..., use_cache=True)`` (prefill, then one token a
step against the cache; the argmax runs on the host from the last position's logits), twice: the decode step
eager and replayed from a CUDA graph (``tinygrad_llm/model/graph_decode.py``; its capture is inside the timing). PyTorch: the same
architecture with preallocated (B, H, T_max, D) key/value buffers written in place at each position, SDPA over the
filled prefix, argmax on the GPU, no graph, no compile. Reported: new tokens per second over the whole call
(prefill included) and ms per decode step, median of ``--repeat`` runs after one warm-up.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPE = dict(vocab_size=50257, context_length=1024, n_layer=12, n_head=12, n_embd=768)


def bench_ours(batch, prompt, new, repeat, dtype, graphs=True):
    """Ours with the decode step replayed from a CUDA graph (``graphs``) or eager (TINYGRAD_LLM_CUDA_GRAPHS=0)."""
    import cupy as cp

    import tinygrad_llm as tl
    os.environ["TINYGRAD_LLM_CUDA_GRAPHS"] = "1" if graphs else "0"
    cfg = tl.GPTConfig(**SHAPE, dropout=0.0)
    model = tl.GPT(cfg, seed=0, dtype=np.dtype(dtype), device="cuda")
    idx = cp.asarray(np.random.default_rng(0).integers(0, SHAPE["vocab_size"], (batch, prompt)))
    times = []
    for i in range(repeat + 1):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        out = tl.generate(model, idx, new, temperature=0.0, use_cache=True)
        cp.cuda.Device().synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    assert out.shape == (batch, prompt + new)
    return statistics.median(times)


def bench_torch(batch, prompt, new, repeat, dtype):
    import torch
    from torch_gpt import torch_gpt

    torch.manual_seed(0)
    C, H, L, V, Tmax = SHAPE["n_embd"], SHAPE["n_head"], SHAPE["n_layer"], SHAPE["vocab_size"], prompt + new
    D = C // H
    tdt = getattr(torch, dtype)

    model = torch_gpt(V, SHAPE["context_length"], L, H, C).cuda().to(tdt).eval()
    idx0 = torch.from_numpy(np.random.default_rng(0).integers(0, V, (batch, prompt))).cuda()

    @torch.no_grad()
    def run():
        caches = [(torch.empty(batch, H, Tmax, D, device="cuda", dtype=tdt),
                   torch.empty(batch, H, Tmax, D, device="cuda", dtype=tdt)) for _ in range(L)]
        seq = torch.empty(batch, Tmax, dtype=torch.long, device="cuda")
        seq[:, :prompt] = idx0
        logits = model.decode(idx0, caches, 0)
        for t in range(prompt, Tmax):
            nxt = logits[:, -1].argmax(-1)
            seq[:, t] = nxt
            if t + 1 < Tmax:
                logits = model.decode(nxt[:, None], caches, t)
        return seq

    times = []
    for i in range(repeat + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for b in args.batch:
        eager = bench_ours(b, args.prompt, args.new, args.repeat, args.dtype, graphs=False)
        graph = bench_ours(b, args.prompt, args.new, args.repeat, args.dtype, graphs=True)
        ref = None if args.no_torch else bench_torch(b, args.prompt, args.new, args.repeat, args.dtype)
        rows.append((b, eager, graph, ref))
    print(f"\nGPT-2 124M shape, {args.dtype}, prompt {args.prompt}, {args.new} new tokens, greedy, KV cache "
          "(tokens/s over the whole call; ratio: ours graph / torch)")
    print(f"{'batch':>5s} {'ours eager':>11s} {'ours graph':>11s} {'torch':>9s} {'ratio':>6s}")
    for b, eager, graph, ref in rows:
        tok = b * args.new
        r = f"{ref / graph:6.2f}" if ref else "     -"
        rt = f"{tok / ref:9.0f}" if ref else f"{'-':>9s}"
        print(f"{b:5d} {tok / eager:11.0f} {tok / graph:11.0f} {rt} {r}")


if __name__ == "__main__":
    main()
