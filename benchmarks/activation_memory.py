"""Activation checkpointing on one GPU: peak memory and step time, ours against PyTorch eager, with the estimate.

    python benchmarks/activation_memory.py --models gpt2-124m,gpt2-355m,gpt2-774m,gpt2-1558m --batch 8

For each model, mixed precision at B x 1024 tokens (ours: float16 autocast + loss scaling; PyTorch: bf16 autocast
with SDPA), four runs: ours without and with checkpointing every block, PyTorch without and with
``torch.utils.checkpoint`` on every block. Printed: peak MiB (ours: CuPy's pool; PyTorch: max_memory_allocated),
ms/step (median), ``GPTConfig.memory_estimate``'s peak and its error against our measured peak, and the two bars:
our checkpointed peak against PyTorch's, and our checkpointed time against 1.33 x our plain time.
PyTorch is a reference only: it is imported here, never by the package.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def ours(name: str, batch: int, checkpointing: bool, steps: int) -> dict:
    import tinygrad_llm as tl
    from tinygrad_llm.bench import measure_training_speed
    cfg = tl.GPTConfig.preset(name, vocab_size=50304, dropout=0.0, activation_checkpointing=1 if checkpointing else 0)
    r = measure_training_speed(cfg, batch, "cuda", "mixed", steps, 2, 0)
    est = cfg.memory_estimate(batch, "mixed", checkpointing=checkpointing)
    import cupy as cp
    cp.get_default_memory_pool().free_all_blocks()
    return dict(step_ms=1e3 * r["step_s"], peak_mib=r["peak_bytes"] / 2 ** 20, estimate_mib=est.total / 2 ** 20)


def torch_run(name: str, batch: int, checkpointing: bool, steps: int) -> dict:
    import torch
    import tinygrad_llm as tl
    from torch_gpt import torch_gpt
    c = tl.GPTConfig.preset(name)
    model = torch_gpt(50304, c.context_length, c.n_layer, c.n_head, c.n_embd, checkpointing=checkpointing)
    T, V = c.context_length, 50304
    torch.manual_seed(0)
    model = model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=True)
    idx = torch.randint(0, V, (batch, T), device="cuda")
    times = []
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20
    del model, opt
    torch.cuda.empty_cache()
    return dict(step_ms=1e3 * statistics.median(times), peak_mib=peak)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt2-124m,gpt2-355m,gpt2-774m,gpt2-1558m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    for name in args.models.split(","):
        row = {"model": name, "batch": args.batch}
        for ck in (False, True):
            key = "ckpt" if ck else "plain"
            row[f"ours_{key}"] = ours(name, args.batch, ck, args.steps)
            if not args.no_torch:
                row[f"torch_{key}"] = torch_run(name, args.batch, ck, args.steps)
        for key in ("plain", "ckpt"):
            o = row[f"ours_{key}"]
            o["estimate_error"] = o["estimate_mib"] / o["peak_mib"] - 1
        o, p = row["ours_ckpt"], row["ours_plain"]
        line = (f"{name}: ours plain {p['peak_mib']:,.0f} MiB {p['step_ms']:.0f} ms | ours ckpt {o['peak_mib']:,.0f} "
                f"MiB {o['step_ms']:.0f} ms (x{o['step_ms'] / p['step_ms']:.2f}; bar <= {1.1 * 1.33:.2f}) | "
                f"estimate error plain {100 * p['estimate_error']:+.1f}% ckpt {100 * o['estimate_error']:+.1f}%")
        if not args.no_torch:
            t = row["torch_ckpt"]
            line += (f" | torch plain {row['torch_plain']['peak_mib']:,.0f} MiB {row['torch_plain']['step_ms']:.0f} "
                     f"ms, ckpt {t['peak_mib']:,.0f} MiB {t['step_ms']:.0f} ms | ours/torch ckpt memory "
                     f"{o['peak_mib'] / t['peak_mib']:.2f}")
        print(line, flush=True)
        print("JSON " + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
