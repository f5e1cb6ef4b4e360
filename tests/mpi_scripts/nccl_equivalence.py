"""NCCL checks on 2+ GPUs (one process per GPU), run by tests/test_distributed_gpu.py or by hand:

    mpiexec --allow-run-as-root -n 2 python tests/mpi_scripts/nccl_equivalence.py            # Open MPI
    python -m tinygrad_llm.distributed.launch --nproc 2 tests/mpi_scripts/nccl_equivalence.py  # no MPI needed
    ... nccl_equivalence.py timeout                                                           # dead-rank check

Default mode, in order:
1. every collective of NCCLCommunicator on CuPy arrays (sum / avg / max, broadcast, all_gather, reduce_scatter,
   barrier, broadcast_object, metrics);
2. GPT data parallel in float64: N ranks x batch b == one process x batch N*b after 3 AdamW steps, to 1e-10
   (float64 has no TF32; only the order of the batch sums differs, ~1e-15);
3. the same in float32 with TF32 off: the averaged gradients after one backward match the single-process ones
   to 1e-4 of their largest magnitude. Why that tolerance: float32 keeps 24 bits (eps 1.2e-7); a gradient
   entry is a sum over B*T rows whose order differs between the runs (per-rank sums, then NCCL's average), so
   the expected difference is ~eps*sqrt(B*T) relative, ~1e-6 here; 1e-4 leaves room for cancellation in small
   entries while still catching a wrong scale (avg vs sum), a missing bucket or stale data (errors of O(1)).
Prints ``OK nccl <check> rank r`` lines; exits non-zero on the first failure.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# NVLink multicast (NVLS) stays off on the shared GPU hosts here: it can take their GPUs out of service
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import numpy as np  # noqa: E402

import tinygrad_llm as tl  # noqa: E402
from tinygrad_llm import optim  # noqa: E402
from tinygrad_llm.distributed import (DataParallel, DistributedTimeoutError, init_distributed, reduce_metrics,  # noqa
                                      shard_batch)


def say(comm, msg):
    print(f"OK nccl {msg} rank {comm.rank} of {comm.world_size}", flush=True)


def check_collectives(comm, cp):
    W, r = comm.world_size, comm.rank
    a = cp.full(1000, float(r + 1), dtype=cp.float32)
    comm.all_reduce(a, "sum")
    assert float(a[0]) == W * (W + 1) / 2 and bool((a == a[0]).all())
    b = cp.full(7, float(r), dtype=cp.float64)
    comm.all_reduce(b, "avg")
    assert abs(float(b[3]) - (W - 1) / 2) < 1e-12
    c = cp.array([r], dtype=cp.int64)
    comm.all_reduce(c, "max")
    assert int(c[0]) == W - 1
    d = cp.arange(5, dtype=cp.float32) * (r + 1)
    comm.broadcast(d, root=W - 1)
    assert bool((d == cp.arange(5, dtype=cp.float32) * W).all())
    g = comm.all_gather(cp.array([r, 2 * r], dtype=cp.int32))
    assert g.shape == (W, 2) and g[:, 0].get().tolist() == list(range(W))
    rs = comm.reduce_scatter(cp.arange(3 * W, dtype=cp.float32) + r, "sum")
    full = sum(np.arange(3 * W, dtype=np.float32) + k for k in range(W))
    assert np.array_equal(rs.get(), full[3 * r:3 * r + 3])
    comm.barrier()
    assert comm.broadcast_object({"id": 42} if r == 0 else None) == {"id": 42}
    assert reduce_metrics({"x": float(r)}, comm)["x"] == (W - 1) / 2
    # async: the all-reduce runs on the comm stream while this stream keeps working
    e = cp.ones(1 << 20, dtype=cp.float32)
    work = comm.all_reduce_async(e, "sum")
    busy = cp.ones((512, 512), dtype=cp.float32) @ cp.ones((512, 512), dtype=cp.float32)
    work.wait()
    assert float(e[123]) == W and float(busy[0, 0]) == 512
    say(comm, "collectives")


def _gpt(cfg, seed, dtype, device):
    return tl.GPT(cfg, seed=seed, dtype=dtype, device=device)


def check_gpt_float64(comm, device):
    W, r = comm.world_size, comm.rank
    cfg = tl.GPTConfig(vocab_size=97, context_length=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    model = _gpt(cfg, 100 + r, np.float64, device)        # different per rank: the broadcast must fix it
    dp = DataParallel(model, comm, bucket_mb=0.05)          # several buckets
    ref = _gpt(cfg, 100, np.float64, device)
    opt, ref_opt = optim.AdamW(model, lr=1e-2), optim.AdamW(ref, lr=1e-2)
    for step in range(3):
        rng = np.random.default_rng([7, step])
        x, y = rng.integers(0, 97, (2 * W, 16)), rng.integers(0, 97, (2 * W, 16))
        model.loss(*shard_batch((x, y), r, W)).backward()
        dp.finish()
        opt.step()
        opt.zero_grad()
        ref.loss(x, y).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    diff = max(float(abs(a.data - b.data).max()) for a, b in zip(model.parameters(), ref.parameters()))
    assert diff < 1e-10, f"rank {r}: float64 GPT data parallel differs from one process by {diff:.3e}"
    say(comm, f"gpt float64 max diff {diff:.2e} ({len(dp.buckets)} buckets)")


def check_gpt_float32(comm, device):
    from autograd.cuda import set_tf32
    set_tf32(False)
    W, r = comm.world_size, comm.rank
    cfg = tl.GPTConfig(vocab_size=257, context_length=64, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
    model = _gpt(cfg, 5, np.float32, device)
    dp = DataParallel(model, comm)
    ref = _gpt(cfg, 5, np.float32, device)
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 257, (4 * W, 64)), rng.integers(0, 257, (4 * W, 64))
    model.loss(*shard_batch((x, y), r, W)).backward()
    dp.finish()
    ref.loss(x, y).backward()
    worst = 0.0
    for (n, a), b in zip(model.named_parameters(), ref.parameters()):
        scale = float(abs(b.grad.data).max()) or 1.0
        worst = max(worst, float(abs(a.grad.data - b.grad.data).max()) / scale)
    assert worst < 1e-4, f"rank {r}: float32 gradients differ by {worst:.2e} of their scale"
    set_tf32(True)
    say(comm, f"gpt float32 grads worst relative diff {worst:.2e}")


def check_timeout(comm, cp, device):
    model = _gpt(tl.GPTConfig(vocab_size=31, context_length=8, n_layer=1, n_head=2, n_embd=16), 0, np.float32,
                 device)
    dp = DataParallel(model, comm)
    if comm.rank == 1:
        print("rank 1 exits early", flush=True)
        os._exit(0)   # no MPI_Finalize, no NCCL teardown: like a crash that the launcher does not notice (code 0)
    model.loss(np.zeros((1, 8), np.int64), np.zeros((1, 8), np.int64)).backward()
    t0 = time.perf_counter()
    try:
        dp.finish()
    except DistributedTimeoutError as e:
        print(f"CAUGHT DistributedTimeoutError after {time.perf_counter() - t0:.2f} s: {e}", flush=True)
        os._exit(3)
    print("no error raised", flush=True)
    os._exit(1)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "all"
    comm = init_distributed("nccl", timeout=5.0 if mode == "timeout" else 120.0, device="cuda")
    import cupy as cp
    device = f"cuda:{comm.device}"
    print(f"rank {comm.rank} of {comm.world_size}: NCCL on {device}", flush=True)
    if mode == "timeout":
        check_timeout(comm, cp, device)
    check_collectives(comm, cp)
    check_gpt_float64(comm, device)
    check_gpt_float32(comm, device)
    comm.barrier()
    print(f"OK nccl all rank {comm.rank}", flush=True)


if __name__ == "__main__":
    main()
