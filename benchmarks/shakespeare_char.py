"""nanoGPT's baby GPT on Shakespeare characters: tinygrad-llm against the same recipe in plain PyTorch, one GPU.

    python benchmarks/shakespeare_char.py --data PATH/tinyshakespeare.txt            # both, 5000 steps each
    python benchmarks/shakespeare_char.py --data ... --max-iters 500 --no-torch      # a short run of ours

The recipe (nanoGPT config/train_shakespeare_char.py): characters of the text (65 symbols), the first 90% for
training, the rest for validation; 6 layers, 6 heads, width 384, context 256, dropout 0.2, batch 64, AdamW lr 1e-3,
betas (0.9, 0.99), weight decay 0.1 on matrices, 100 warm-up steps then cosine decay to 1e-4 at step 5000, gradient
clipping at 1.0, GPT-2 style blocks (LayerNorm, GELU, biases, tied embedding). Batches are random windows drawn by
one seeded NumPy generator (the same windows for both frameworks), built on the host and copied to the GPU.
Precision: ``--precision mixed`` (default): ours float16 autocast with a GradScaler, PyTorch bf16 autocast;
``bf16``: bfloat16 autocast for both, no loss scaling (ours: the trainer's "bf16"); ``tf32``: float32 with TF32
matrix products for both. Ours takes the trainer's precision setting (``train.step.precision_setup``). Ours runs
its step as a CUDA graph (``--eager`` for the eager step) and evaluates from a graph too.

Evaluation: every ``--eval-every`` steps (and at the end) the mean loss over the same ``--eval-iters`` validation
batches for both. Printed: both curves (step, train loss, val loss, wall seconds), then the time at which each
first reached its best validation loss and the time to ``--target`` (1.48), and the wall time of the whole run
(evaluations included; model construction and the first step's compile/capture happen before the clock starts).
PyTorch is a reference only, imported here, never by the package.
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

RECIPE = dict(n_layer=6, n_head=6, n_embd=384, block=256, batch=64, dropout=0.2, lr=1e-3, min_lr=1e-4,
              warmup=100, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0)


def load(path: str):
    text = open(path, encoding="utf-8").read()
    chars = sorted(set(text))
    lut = {c: i for i, c in enumerate(chars)}
    data = np.fromiter((lut[c] for c in text), np.int64, len(text))
    n = int(0.9 * len(data))
    return data[:n], data[n:], len(chars)


def lr_at(step: int, max_iters: int) -> float:
    r = RECIPE
    if step < r["warmup"]:
        return r["lr"] * (step + 1) / r["warmup"]
    if step >= max_iters:
        return r["min_lr"]
    t = (step - r["warmup"]) / (max_iters - r["warmup"])
    return r["min_lr"] + 0.5 * (1 + math.cos(math.pi * t)) * (r["lr"] - r["min_lr"])


def batches(data, n: int, seed: int):
    """n random (x, y) windows of the recipe's shape, as NumPy int64 arrays."""
    rng = np.random.default_rng(seed)
    B, T = RECIPE["batch"], RECIPE["block"]
    idx = np.arange(T + 1)
    for _ in range(n):
        seq = data[rng.integers(0, len(data) - T - 1, B)[:, None] + idx]
        yield seq[:, :-1], seq[:, 1:]


# ---------------------------------------------------------------------------------------------------- ours
def run_ours(train, val, vocab, args):
    import autograd as ag
    import tinygrad_llm as tl
    from tinygrad_llm.train.graph_step import GraphEval, GraphTrainStep
    from tinygrad_llm.train.step import TrainStep, lm_loss, precision_setup

    r = RECIPE
    ac, scaler = precision_setup(args.precision, args.device)    # also turns TF32 on for the GPU
    cfg = tl.GPTConfig(vocab_size=vocab, context_length=r["block"], n_layer=r["n_layer"], n_head=r["n_head"],
                       n_embd=r["n_embd"], dropout=r["dropout"], qkv_bias=True, bias=True, tie_weights=True)
    model = tl.GPT(cfg, seed=args.seed, device=args.device)
    opt = tl.optim.AdamW(model, lr=r["lr"], betas=r["betas"], weight_decay=r["weight_decay"])
    Step = TrainStep if args.eager else GraphTrainStep
    step_fn = Step(model, opt, lambda s: lr_at(s, args.max_iters), grad_clip=r["grad_clip"], autocast_dtype=ac,
                   loss_scaler=scaler)
    val_b = list(batches(val, args.eval_iters, 12345))
    ev = None if args.eager else GraphEval(model, autocast_dtype=ac)

    def evaluate():
        if ev is not None:
            return ev.mean_loss(val_b)
        model.eval()
        with ag.no_grad(), ag.amp.autocast(ac):
            v = float(np.mean([float(lm_loss(model, x, y).item()) for x, y in val_b]))
        model.train()
        return v

    return _loop(lambda b, i: step_fn([b], i), evaluate, train, args)


# ---------------------------------------------------------------------------------------------------- PyTorch
def run_torch(train, val, vocab, args):
    import torch
    from torch_gpt import torch_gpt

    r = RECIPE
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = torch_gpt(vocab, r["block"], r["n_layer"], r["n_head"], r["n_embd"], r["dropout"],
                      gpt2_init=True).cuda()
    decay = [w for w in model.parameters() if w.ndim >= 2]
    no_decay = [w for w in model.parameters() if w.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r["lr"], betas=r["betas"], fused=True)
    bf16 = args.precision in ("mixed", "bf16")
    val_b = [(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()) for x, y in batches(val, args.eval_iters, 12345)]

    def step(b, i):
        for g in opt.param_groups:
            g["lr"] = lr_at(i, args.max_iters)
        x, y = (torch.from_numpy(a).cuda(non_blocking=True) for a in b)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.no_grad()
    def evaluate():
        model.eval()
        tot = torch.zeros((), device="cuda")
        for x, y in val_b:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                tot += model(x, y).float()
        model.train()
        return float(tot) / len(val_b)

    class Out:
        def __init__(self, loss):
            self.loss = loss

    return _loop(lambda b, i: Out(step(b, i)), evaluate, train, args, sync=torch.cuda.synchronize)


# ---------------------------------------------------------------------------------------------------- the loop
def _loop(step, evaluate, train, args, sync=None):
    """Train args.max_iters steps; returns the curve [(step, train loss, val loss, wall s)] and timings."""
    data = batches(train, args.max_iters, args.seed)
    first = next(data)
    out = step(first, 0)                   # compile / capture outside the clock
    float(out.loss)
    t0 = time.perf_counter()
    curve, pending = [], []
    for i in range(1, args.max_iters):
        out = step(next(data), i)
        pending.append(out.loss)
        if (i + 1) % args.eval_every == 0 or i == args.max_iters - 1:
            train_loss = float(np.mean([float(v) for v in pending]))   # read on the host only here
            pending = []
            v = evaluate()
            curve.append((i + 1, train_loss, v, time.perf_counter() - t0))
            print(f"  step {i + 1:5d}  train {train_loss:.4f}  val {v:.4f}  {curve[-1][3]:7.1f} s", flush=True)
    return curve, time.perf_counter() - t0


def summary(name, curve, wall, target):
    best = min(curve, key=lambda c: c[2])
    hit = next((c for c in curve if c[2] <= target), None)
    return dict(name=name, best_val=best[2], best_step=best[0], time_to_best_s=best[3],
                time_to_target_s=hit[3] if hit else None, wall_s=wall, curve=curve)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the tiny Shakespeare text file")
    ap.add_argument("--max-iters", type=int, default=5000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-iters", type=int, default=40)
    ap.add_argument("--precision", choices=["mixed", "bf16", "tf32"], default="mixed",
                    help="mixed: ours float16 + loss scaling, PyTorch bf16 autocast; bf16: bf16 autocast for both")
    ap.add_argument("--target", type=float, default=1.48)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--eager", action="store_true", help="our eager step instead of the CUDA graph")
    ap.add_argument("--device", default="cuda", help="ours: 'cpu' runs the eager step (a smoke test)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--json", default=None, help="append the results as one JSON line to this file")
    args = ap.parse_args(argv)
    args.eager = args.eager or args.device == "cpu"
    train, val, vocab = load(args.data)
    print(f"{len(train):,} train / {len(val):,} val characters, vocabulary {vocab}; {args.max_iters} steps, "
          f"precision {args.precision}")
    results = []
    if not args.no_ours:
        print("tinygrad-llm" + (" (eager)" if args.eager else " (CUDA graph)"))
        try:
            results.append(summary("tinygrad-llm", *run_ours(train, val, vocab, args), args.target))
        except Exception as e:     # report and go on with the reference
            import traceback
            traceback.print_exc()
            print(f"ours failed: {type(e).__name__}: {e}", file=sys.stderr)
    if not args.no_torch:
        print("pytorch (eager)")
        results.append(summary("pytorch", *run_torch(train, val, vocab, args), args.target))
    print(f"\n{'framework':14s} {'best val':>9s} {'at step':>8s} {'t best s':>9s} {'t<=' + str(args.target):>9s} "
          f"{'wall s':>8s}")
    for r in results:
        tt = f"{r['time_to_target_s']:9.1f}" if r["time_to_target_s"] is not None else "        -"
        print(f"{r['name']:14s} {r['best_val']:9.4f} {r['best_step']:8d} {r['time_to_best_s']:9.1f} {tt} "
              f"{r['wall_s']:8.1f}")
    if len(results) == 2 and results[0]["name"] == "tinygrad-llm":
        print(f"wall-time ratio tinygrad-llm / pytorch: {results[0]['wall_s'] / results[1]['wall_s']:.3f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"args": vars(args), "results": results}) + "\n")


if __name__ == "__main__":
    main()
