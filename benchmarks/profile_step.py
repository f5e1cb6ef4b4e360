"""Where a training step's time goes, per op, on the GPU (or CPU): a profiling aid, not a benchmark.

    python benchmarks/profile_step.py --mode tf32 --steps 3
    python benchmarks/profile_step.py --mode mixed
    python benchmarks/profile_step.py --mode bf16 --model gpt2-355m

Prints (1) the step's wall time and the host time spent issuing work (when the host is slower than the GPU, Python
overhead is the limit), (2) device time per op type, forward and backward separately, measured with CUDA events
around every op (this adds a little overhead of its own), (3) the host's hottest Python functions (cProfile).
Precision is the trainer's (``train.step.precision_setup``): fp32, tf32, mixed (float16 autocast with a GradScaler),
bf16 (bfloat16 autocast, no loss scaling). ``--model``: gpt2-124m (12 x 768) or gpt2-355m (24 x 1024), context 1024.
"""
from __future__ import annotations

import argparse
import cProfile
import collections
import os
import pstats
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MODELS = {"gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768), "gpt2-355m": dict(n_layer=24, n_head=16, n_embd=1024)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["cpu", "fp32", "tf32", "mixed", "bf16"], default="tf32")
    ap.add_argument("--model", choices=list(MODELS), default="gpt2-124m", help="the GPU model")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)

    import autograd as ag
    import tinygrad_llm as tl
    from autograd.function import Function
    from tinygrad_llm.optim import AdamW
    from tinygrad_llm.train.step import precision_setup

    gpu = args.mode != "cpu"
    autocast_dtype, scaler = precision_setup("tf32" if not gpu else args.mode, "cuda" if gpu else "cpu")
    if gpu:
        import cupy as cp
        cfg = tl.GPTConfig(vocab_size=50304, context_length=1024, dropout=0.0, **MODELS[args.model])
    else:
        cfg = tl.GPTConfig(vocab_size=512, context_length=128, n_layer=4, n_head=4, n_embd=256, dropout=0.0)
        args.batch = 16
    model = tl.GPT(cfg, device="cuda" if gpu else "cpu")
    opt = AdamW(model, lr=6e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (args.batch, cfg.context_length))
    y = rng.integers(0, cfg.vocab_size, (args.batch, cfg.context_length))
    sync = (lambda: cp.cuda.get_current_stream().synchronize()) if gpu else (lambda: None)

    def step(marks=None):
        xs, ys = (cp.asarray(x), cp.asarray(y)) if gpu else (x, y)
        with ag.amp.autocast(autocast_dtype):
            _, loss = model(xs, ys)
        if marks is not None:
            marks.append(time.perf_counter())
        (scaler.scale(loss) if scaler else loss).backward()
        if marks is not None:
            marks.append(time.perf_counter())
        if scaler is None or scaler.unscale_and_check(model.parameters()):
            opt.step()
        if scaler:
            scaler.update()
        opt.zero_grad()
        if marks is not None:
            marks.append(time.perf_counter())
        return loss

    for _ in range(2):
        step()
    sync()
    walls, hosts = [], []
    for _ in range(args.steps):
        marks = [time.perf_counter()]
        loss = step(marks)
        sync()
        end = time.perf_counter()
        walls.append(end - marks[0])
        hosts.append([marks[i + 1] - marks[i] for i in range(3)])
    h = np.median(np.array(hosts), axis=0)
    print(f"mode {args.mode}{', ' + args.model if gpu else ''}: wall {1000 * np.median(walls):.1f} ms/step; "
          f"host issue time fwd {1000 * h[0]:.1f} bwd {1000 * h[1]:.1f} opt {1000 * h[2]:.1f} ms "
          f"(loss {float(loss.item()):.3f})")

    if gpu:  # device time per op type, with events around each forward and backward
        times = collections.defaultdict(list)
        orig_apply = Function.apply.__func__

        def timed_apply(cls, *inputs, **params):
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record()
            out = orig_apply(cls, *inputs, **params)
            b.record()
            times["fwd " + cls.__name__].append((a, b))
            fn = out[0].creator if isinstance(out, tuple) else out.creator
            if fn is not None and not getattr(fn, "_timed", False):
                bw = fn.backward

                def timed_backward(*g, _bw=bw, _name=cls.__name__):
                    c, d = cp.cuda.Event(), cp.cuda.Event()
                    c.record()
                    r = _bw(*g)
                    d.record()
                    times["bwd " + _name].append((c, d))
                    return r
                fn.backward = timed_backward
                fn._timed = True
            return out

        Function.apply = classmethod(timed_apply)
        step()
        sync()
        Function.apply = classmethod(orig_apply)
        rows = sorted(((sum(cp.cuda.get_elapsed_time(a, b) for a, b in v), len(v), k) for k, v in times.items()),
                      reverse=True)
        total = sum(r[0] for r in rows)
        print(f"\ndevice time per op (nested ops counted in their parents too), sum {total:.1f} ms:")
        for ms, n, k in rows[:25]:
            print(f"  {k:28s} {ms:8.2f} ms  {n:5d} calls")

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2):
        step()
    sync()
    prof.disable()
    print("\nhost: hottest functions over 2 steps")
    pstats.Stats(prof).sort_stats("tottime").print_stats(int(os.environ.get("PROFILE_ROWS", "18")))
    if os.environ.get("PROFILE_ROWS"):
        pstats.Stats(prof).sort_stats("cumulative").print_stats(int(os.environ["PROFILE_ROWS"]))


if __name__ == "__main__":
    main()
