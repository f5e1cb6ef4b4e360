"""Data-parallel scaling: GPT-2 124M training throughput on 1 vs N GPUs at the same per-GPU batch.

    python benchmarks/dp_scaling.py --gpus 1,2                       # launcher ranks (TCP rendezvous, NCCL)
    python benchmarks/dp_scaling.py --gpus 1,2 --via mpi             # mpiexec ranks (Open MPI: adds
                                                                     #   --allow-run-as-root when run as root)
    python benchmarks/dp_scaling.py --gpus 1,2,4,8 --preset gpt2-355m --batch 4
    python benchmarks/dp_scaling.py --gpus 1,2 --device cpu --preset micro --batch 2 --block 32   # smoke test
    python benchmarks/dp_scaling.py --gpus 4 --backend tcp --batch 2 --block 256     # 4 ranks sharing 2 GPUs

For each GPU count n the script starts n ranks of itself (``--worker``); each rank trains the model for
``--warmup + --steps`` steps on random tokens (its own per-rank batch of ``--batch`` x ``--block``), with
``DataParallel`` (25 MB buckets, all-reduce overlapped with backward on a separate CUDA stream) when n > 1.
Rank 0 writes the median step time; the table gives tokens/s over all ranks, the scaling against 1 GPU and the
efficiency (scaling / n). ``--no-overlap`` starts every bucket after backward instead (to see what overlap buys).
``--markdown`` prints rows to paste into benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(args) -> None:
    import tinygrad_llm as tl
    from tinygrad_llm import optim
    from tinygrad_llm.distributed import DataParallel, gpu_device_for_rank, init_distributed

    comm = init_distributed(args.backend, timeout=600, device=args.device)
    device = args.device
    if device.startswith("cuda"):
        import cupy as cp
        device = gpu_device_for_rank(args.device) if comm.world_size > 1 else "cuda:0"
        cp.cuda.Device(int(device.split(":")[1])).use()
    cfg = tl.GPTConfig.preset(args.preset, dropout=0.0)
    if args.block > cfg.context_length:
        raise SystemExit(f"--block {args.block} exceeds the preset's context length {cfg.context_length}")
    model = tl.GPT(cfg, seed=0, device=device)
    dp = DataParallel(model, comm, bucket_mb=args.bucket_mb, overlap=not args.no_overlap) \
        if comm.world_size > 1 else None
    opt = optim.AdamW(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))
    rng = np.random.default_rng(comm.rank)
    V, B, T = cfg.vocab_size, args.batch, args.block
    batches = [tuple(_to(a, device) for a in (rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))))
               for _ in range(2)]
    times = []
    for i in range(args.warmup + args.steps):
        x, y = batches[i % 2]
        t0 = time.perf_counter()
        loss = model.loss(x, y)
        loss.backward()
        if dp is not None:
            dp.finish()
        opt.step()
        opt.zero_grad()
        loss_value = float(loss.item())          # synchronises the device
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    if comm.rank == 0:
        res = {"world_size": comm.world_size, "step_s": step, "tokens_per_s": comm.world_size * B * T / step,
               "batch": B, "block": T, "preset": args.preset, "device": args.device, "loss": loss_value,
               "backend": comm.backend, "buckets": len(dp.buckets) if dp is not None else 0,
               "overlap": not args.no_overlap, "params": model.num_parameters()}
        with open(args.out, "w") as f:
            json.dump(res, f)
    comm.barrier()


def _to(a, device):
    from autograd import backend
    return backend.to_device(a, device) if device != "cpu" else a


def run_one(n: int, args, out: str) -> dict:
    me = [os.path.abspath(__file__), "--worker", "--out", out, "--preset", args.preset, "--batch", str(args.batch),
          "--block", str(args.block), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device",
          args.device, "--bucket-mb", str(args.bucket_mb), "--backend", args.backend] + (["--no-overlap"] if args.no_overlap else [])
    if n == 1:
        cmd = [sys.executable, *me]
    elif args.via == "mpi":
        cmd = ["mpiexec", "-n", str(n)]
        if os.geteuid() == 0 and _is_open_mpi():
            cmd.append("--allow-run-as-root")
        cmd += [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "tinygrad_llm.distributed.launch", "--nproc", str(n), *me]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("NCCL_NVLS_ENABLE", "0")   # NVLink multicast stays off on the shared GPU hosts here
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TINYGRAD_LLM_LAUNCHER"):
        env.pop(k, None)
    if n > 1 and args.via == "mpi":   # as the launcher does: one BLAS pool per rank must not take every core
        share = str(max(1, (os.cpu_count() or 1) // n))
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, share)
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    with open(out) as f:
        return json.load(f)


def _is_open_mpi() -> bool:
    try:
        p = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True)
        return "Open MPI" in p.stdout + p.stderr or "OpenRTE" in p.stdout + p.stderr
    except OSError:
        return False


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", default="1,2", help="comma-separated rank counts to compare (default 1,2)")
    ap.add_argument("--via", choices=("launch", "mpi"), default="launch", help="how to start the ranks")
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--batch", type=int, default=8, help="sequences per GPU per step (default 8)")
    ap.add_argument("--block", type=int, default=1024, help="tokens per sequence (default 1024)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--backend", default="auto", choices=("auto", "nccl", "mpi", "tcp"),
                    help="auto: NCCL on GPUs; mpi/tcp stage GPU arrays through the host, so more ranks than GPUs "
                         "can share them (exercises the code path; not a speed figure)")
    ap.add_argument("--no-overlap", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="print markdown table rows for RESULTS.md")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.via == "mpi" and shutil.which("mpiexec") is None:
        raise SystemExit("--via mpi needs mpiexec on PATH")
    counts = [int(n) for n in args.gpus.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            results.append(run_one(n, args, os.path.join(tmp, f"r{n}.json")))
    base = next((r for r in results if r["world_size"] == 1), None)
    per = base["tokens_per_s"] if base is not None else float("nan")   # no 1-rank run: no scaling figure
    print(f"\n{args.preset} ({results[0]['params']:,} params), per-GPU batch {args.batch} x {args.block} tokens, "
          f"{args.steps} timed steps (median), device {args.device}, ranks via {args.via}, "
          f"overlap {'off' if args.no_overlap else 'on'}")
    print(f"{'ranks':>5} {'tokens/s':>12} {'ms/step':>9} {'scaling':>8} {'efficiency':>10} {'buckets':>7}")
    for r in results:
        scale = r["tokens_per_s"] / per
        print(f"{r['world_size']:>5} {r['tokens_per_s']:>12,.0f} {1000 * r['step_s']:>9.1f} {scale:>7.2f}x "
              f"{scale / r['world_size']:>10.3f} {r['buckets']:>7}")
    if args.markdown:
        print("\n| model | ranks | per-GPU batch | tokens/s | ms/step | scaling | efficiency | via |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            scale = r["tokens_per_s"] / per
            print(f"| {args.preset} | {r['world_size']} | {args.batch}x{args.block} | {r['tokens_per_s']:,.0f} | "
                  f"{1000 * r['step_s']:.1f} | {scale:.2f}x | {scale / r['world_size']:.3f} | {args.via} |")


if __name__ == "__main__":
    main()
