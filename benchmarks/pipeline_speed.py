"""Pipeline-parallel throughput: GPT-2 124M split over p GPUs with m micro-batches, against one GPU.

    python benchmarks/pipeline_speed.py --devices cuda:0,cuda:1 --micro 8 --batch 16
    python benchmarks/pipeline_speed.py --devices cuda:0,cuda:1,cuda:2,cuda:3 --micro 16 --batch 32 --schedule gpipe
    python benchmarks/pipeline_speed.py --devices cpu,cpu --preset micro --batch 8 --block 32 --micro 4  # smoke test

Three runs of ``--steps`` timed training steps (forward, backward, AdamW) on the same global batch:
1. ``single``: the whole batch at once on ``devices[0]`` (plain training);
2. ``1 stage``: PipelineParallel with one stage on ``devices[0]`` and the same m micro-batches (the cost of
   micro-batching alone);
3. ``p stages``: PipelineParallel over all ``--devices``.
Printed: tokens/s, ms/step, the speedup of (3) over (2), and the measured pipeline efficiency
speedup / p next to the ideal m / (m + p - 1) (the GPipe bubble) for a perfectly balanced pipeline.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def bench(make_step, steps: int, warmup: int) -> float:
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        make_step(i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", default="cuda:0,cuda:1")
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--batch", type=int, default=16, help="global batch (sequences per step)")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--micro", type=int, default=8, help="micro-batches per step (m)")
    ap.add_argument("--schedule", choices=("gpipe", "1f1b"), default="1f1b")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--skip-single", action="store_true", help="skip run 1 (e.g. when the batch does not fit)")
    args = ap.parse_args(argv)

    import tinygrad_llm as tl
    from autograd import backend
    from tinygrad_llm import optim
    from tinygrad_llm.distributed.pipeline import PipelineParallel

    devices = args.devices.split(",")
    p, m = len(devices), args.micro
    cfg = tl.GPTConfig.preset(args.preset, dropout=0.0)
    B, T, V = args.batch, args.block, cfg.vocab_size
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    tokens = B * T

    def sync(value):
        return float(backend.to_numpy(value.data if hasattr(value, "data") else np.asarray(value)))

    results = {}
    if not args.skip_single:
        model = tl.GPT(cfg, seed=0, device=devices[0])
        opt = optim.AdamW(model, lr=1e-4)
        xd, yd = backend.to_device(x, devices[0]), backend.to_device(y, devices[0])

        def single(_):
            loss = model.loss(xd, yd)
            loss.backward()
            opt.step()
            opt.zero_grad()
            sync(loss)
        results["single"] = bench(single, args.steps, args.warmup)
        del model, opt

    for name, devs in (("1 stage", devices[:1]), (f"{p} stages", devices)):
        if name == "1 stage" and p == 1:
            continue
        model = tl.GPT(cfg, seed=0)
        pipe = PipelineParallel(model, devs, n_micro=m, schedule=args.schedule)
        opt = optim.AdamW(model, lr=1e-4)

        def step(_):
            pipe.train_step(x, y)        # returns a float: synchronises the last device
            opt.step()
            opt.zero_grad()
        results[name] = bench(step, args.steps, args.warmup)
        del model, pipe, opt

    print(f"{args.preset}: global batch {B} x {T} tokens, m={m} micro-batches, schedule {args.schedule}, "
          f"devices {','.join(devices)}")
    print(f"{'run':>10} {'tokens/s':>12} {'ms/step':>9}")
    for name, t in results.items():
        print(f"{name:>10} {tokens / t:>12,.0f} {1000 * t:>9.1f}")
    if p > 1:
        speed = results["1 stage"] / results[f"{p} stages"]
        print(f"speedup of {p} stages over 1 stage (same micro-batches): {speed:.2f}x; "
              f"efficiency {speed / p:.3f} vs ideal m/(m+p-1) = {m / (m + p - 1):.3f}")


if __name__ == "__main__":
    main()
