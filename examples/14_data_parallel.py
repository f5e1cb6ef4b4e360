"""Data-parallel training of a small GPT, written out so every distributed step is visible.

    python examples/14_data_parallel.py                    # the lesson: 2 CPU ranks vs 1 process, same losses
    python -m tinygrad_llm.distributed.launch --nproc 2 examples/14_data_parallel.py          # CPU ranks (TCP)
    python -m tinygrad_llm.distributed.launch --nproc 2 examples/14_data_parallel.py --device cuda   # NCCL
    mpiexec -n 2 python examples/14_data_parallel.py                                           # MPI ranks
    python examples/14_data_parallel.py --single                                               # one process

Run bare, the lesson starts the training twice: as 2 ranks (each rank is one process; on GPUs one per GPU) through
the launcher, and as one process with the same global batch, and compares their losses.

What each rank does:
1. ``init_distributed`` picks the backend from how it was started (MPI, the launcher's TCP store, NCCL for GPUs);
2. ``DataParallel`` copies rank 0's weights to every rank and hooks every parameter;
3. the DataLoader with ``rank``/``world_size`` gives each rank its own slice of every global batch;
4. backward starts all-reducing gradient buckets while it runs; ``finish()`` waits, so every rank steps with the
   average gradient; ``no_sync()`` skips communication on the accumulation micro-steps;
5. evaluation is sharded and its loss averaged over ranks; only rank 0 prints and writes checkpoints.
Resume (``--resume``) works with any number of ranks as long as the global batch stays the same.

What to expect: the same train and val losses, step by step, from 2 ranks and from one process (the global batch
is the same, so the whole training is: the tests check it to 1e-10 in float64; here, float32, to ~1e-6), 30 steps
(fast setting: 5) in a few seconds each.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

from course import FAST, done, lesson, section  # (also puts the repository on the path)

import tinygrad_llm as tl
from tinygrad_llm import distributed as dist
from tinygrad_llm.distributed.runtime import launched_by_launcher, launched_by_mpi
from tinygrad_llm.data import DataLoader, SlidingWindowDataset, default_corpus, train_val_split
from tinygrad_llm.optim import AdamW
from tinygrad_llm.tokenizer import CharTokenizer
from tinygrad_llm.train.checkpoint import load_checkpoint, save_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--global-batch", type=int, default=8, help="sequences per step over all ranks")
    ap.add_argument("--accum", type=int, default=1, help="micro-steps per optimizer step")
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--out", default="out/data_parallel")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a stuck collective fails")
    ap.add_argument("--single", action="store_true", help="train in this one process (no comparison)")
    ap.add_argument("--ranks", type=int, default=2, help="ranks of the comparison run (run bare)")
    args = ap.parse_args()
    if FAST and args.steps == 30:
        args.steps = 5
    if not (args.single or launched_by_mpi() or launched_by_launcher()):
        compare(args)
        return

    comm = dist.init_distributed("auto", timeout=args.timeout, device=args.device)
    rank, world = comm.rank, comm.world_size
    device = dist.gpu_device_for_rank(args.device) if args.device.startswith("cuda") else "cpu"
    if args.global_batch % (world * args.accum):
        raise SystemExit(f"--global-batch {args.global_batch} must divide by ranks x accum = {world * args.accum}")
    per_rank = args.global_batch // (world * args.accum)

    def log(msg: str) -> None:
        if dist.is_main_process():
            print(msg, flush=True)

    # data: the same token stream on every rank; the loader hands out disjoint per-rank slices
    text = default_corpus()[:200_000]
    tok = CharTokenizer.train(text)
    train_ids, val_ids = train_val_split(np.asarray(tok.encode(text)), 0.1)
    train = DataLoader(SlidingWindowDataset(train_ids, args.block, args.block), per_rank, seed=0,
                       rank=rank, world_size=world)
    val = DataLoader(SlidingWindowDataset(val_ids, args.block, args.block), per_rank, shuffle=False,
                     rank=rank, world_size=world)

    cfg = tl.GPTConfig.preset("micro", vocab_size=tok.vocab_size, context_length=args.block, dropout=0.0)
    model = tl.GPT(cfg, seed=0, device=device)
    opt = AdamW(model, lr=3e-3, weight_decay=0.1)
    start = 0
    if args.resume and os.path.exists(os.path.join(args.out, "latest")):
        ck = load_checkpoint(args.out)                      # every rank reads the same files
        model.load_state_dict(ck.model)
        opt.load_state_dict(ck["optimizer"])
        start = ck.step
        # the position is counted in global batches, so it is valid for any number of ranks
        train.epoch, train.index = int(ck["epoch"]), int(ck["index"])
        log(f"resumed from {ck.path} at step {start} (saved with {ck['world_size']} ranks, now {world})")
    dp = dist.DataParallel(model, comm, bucket_mb=25, broadcast_parameters=start == 0)
    log(f"{world} rank(s) ({comm.backend}), {model.num_parameters():,} parameters, global batch "
        f"{args.global_batch} = {world} ranks x {args.accum} micro-steps x {per_rank} sequences")

    t0 = time.time()
    for step in range(start, args.steps):
        total = 0.0
        for k in range(args.accum):
            x, y = train.next_batch()
            x, y = _to(x, device), _to(y, device)
            last = k == args.accum - 1
            with (dp.no_sync() if not last else contextlib.nullcontext()):
                loss = model.loss(x, y) * (1.0 / args.accum)
                loss.backward()
            total += loss.item()
        dp.finish()                                          # grads are now averaged over ranks
        tl.optim.clip_grad_norm(model.parameters(), 1.0)     # same norm on every rank: grads are identical
        opt.step()
        opt.zero_grad()
        train_loss = dist.reduce_metrics({"loss": total}, comm)["loss"]
        if step % 10 == 0 or step == args.steps - 1:
            log(f"step {step:4d}  train loss {train_loss:.4f}  val loss {evaluate(model, val, comm, device):.4f}  "
                f"{time.time() - t0:.1f} s")
    if dist.is_main_process():
        path = save_checkpoint(args.out, args.steps, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                      "epoch": train.epoch, "index": train.index,
                                                      "world_size": world})
        print(f"checkpoint: {path}")
    log(f"final train loss {train_loss:.6f}")
    comm.barrier()                                           # nobody exits while rank 0 is still writing


def compare(args) -> None:
    """The lesson: the same training as ``args.ranks`` ranks and as one process; their losses side by side."""
    import re
    import subprocess
    import tempfile
    lesson("Lesson 14: data parallelism (CPU ranks)",
           "ranks, sharded batches, gradient all-reduce during backward, why N ranks = one process with N x the batch",
           f"{args.ranks} ranks and 1 process print the same losses at every step (float32: to ~1e-6)")
    here = os.path.abspath(__file__)
    common = ["--steps", str(args.steps), "--global-batch", str(args.global_batch), "--block", str(args.block)]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in [(f"{args.ranks} ranks", [sys.executable, "-m", "tinygrad_llm.distributed.launch",
                                                   "--nproc", str(args.ranks), here]),
                          ("1 process", [sys.executable, here, "--single"])]:
            section(name)
            out = subprocess.run(cmd + common + ["--out", os.path.join(tmp, name.replace(" ", "_"))],
                                 capture_output=True, text=True, timeout=600, env={**os.environ, "COURSE_FAST": "0"})
            if out.returncode != 0:
                raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
            text = re.sub(r"^\[rank 0\] ", "", out.stdout, flags=re.M)
            print(text.rstrip())
            runs[name] = [float(v) for v in re.findall(r"train loss ([0-9.]+)", text)]
    a, b = runs.values()
    diff = max(abs(x - y) for x, y in zip(a, b))
    section("compared")
    print(f"largest difference between the {args.ranks}-rank and the 1-process losses: {diff:.1e}")
    done(f"{args.ranks} ranks = 1 process (losses differ by {diff:.1e})")


def evaluate(model, val, comm, device, batches: int = 4) -> float:
    """Each rank scores its own val slices; the mean over all tokens comes from one all-reduce of (sum, count)."""
    import autograd as ag
    s, n = 0.0, 0
    with ag.no_grad():
        for i in range(min(batches, len(val))):
            x, y = val._fetch(val.batch_indices(0, i))
            s += model.loss(_to(x, device), _to(y, device)).item() * y.size
            n += y.size
    return dist.all_reduce_mean(s, n, comm)


def _to(a, device):
    from autograd import backend
    return backend.to_device(a, device) if device != "cpu" else a


if __name__ == "__main__":
    main()
