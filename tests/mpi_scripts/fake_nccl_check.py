"""NCCLCommunicator and DataParallel's CUDA-stream path on the CPU, against a FAKE CuPy/NCCL (tests only).

    python -m tinygrad_llm.distributed.launch --nproc 2 tests/mpi_scripts/fake_nccl_check.py [timeout]

fake_cupy/ mimics the CuPy calls nccl.py makes (streams as worker threads, events, NCCL collectives over TCP on
raw pointers). This checks our pointer/count/dtype bookkeeping, the event ordering between the compute and comm
streams, bucketed async all-reduce with DataParallel, and the timeout + abort path. It cannot check real CuPy:
tests/mpi_scripts/nccl_equivalence.py does that on GPUs.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "fake_cupy"))
sys.path.insert(1, os.path.dirname(os.path.dirname(HERE)))

import cupy as cp  # noqa: E402  (the fake)
import numpy as np  # noqa: E402

assert getattr(cp, "FAKE", False), "fake_nccl_check must run against tests/mpi_scripts/fake_cupy"

import autograd as ag  # noqa: E402
from tinygrad_llm.distributed import DataParallel, DistributedTimeoutError, init_distributed, shard_batch  # noqa

from nccl_equivalence import check_collectives  # noqa: E402


def model_params(xp, seed=0):
    rng = np.random.default_rng(seed)
    return [ag.Tensor(xp.asarray(rng.standard_normal(s)), requires_grad=True) for s in [(6,), (6,), (6,), (1,), (3,)]]


def loss_fn(ps, x, y):
    w1, b1, w2, b2, _unused = ps
    f = ((ag.Tensor(x) * w1 + b1).tanh() * w2).sum(axis=1) + b2
    d = f - ag.Tensor(y)
    return (d * d).mean()


def check_dp(comm):
    W, r = comm.world_size, comm.rank
    ps = model_params(cp, seed=10 + r)
    dp = DataParallel(ps, comm, bucket_mb=100 / 2 ** 20)     # ~12 float64 per bucket: 3+ buckets
    assert all(b.device == "cuda:0" or b.device.startswith("cuda") for b in dp.buckets)
    ref = model_params(np, seed=10)
    for step in range(3):
        rng = np.random.default_rng([3, step])
        x, y = rng.standard_normal((4 * W, 6)), rng.standard_normal(4 * W)
        xs, ys = shard_batch((x, y), r, W)
        loss_fn(ps, cp.asarray(xs), cp.asarray(ys)).backward()
        dp.finish()
        loss_fn(ref, x, y).backward()
        for p, q in zip(ps, ref):
            if q.grad is None:
                assert p.grad is None
                continue
            assert np.abs(np.asarray(p.grad.data) - q.grad.data).max() < 1e-12
            p.data[...] -= 0.1 * p.grad.data
            q.data[...] -= 0.1 * q.grad.data
            p.grad = q.grad = None
    print(f"OK fake-nccl dp rank {r} ({len(dp.buckets)} buckets)", flush=True)


def check_zero(comm):
    """ZeRO-1 over NCCL's reduce-scatter and all-gather: sharded SGD with momentum == one process, full batch."""
    from tinygrad_llm import optim
    from tinygrad_llm.distributed import ShardedOptimizer
    W, r = comm.world_size, comm.rank
    ps = model_params(cp, seed=20 + r)
    dp = DataParallel(ps, comm, bucket_mb=100 / 2 ** 20, shard_optimizer=True)
    opt = ShardedOptimizer(optim.SGD(ps, lr=0.1, momentum=0.9), dp)
    ref = model_params(np, seed=20)
    ref_opt = optim.SGD(ref, lr=0.1, momentum=0.9)
    for step in range(3):
        rng = np.random.default_rng([4, step])
        x, y = rng.standard_normal((4 * W, 6)), rng.standard_normal(4 * W)
        xs, ys = shard_batch((x, y), r, W)
        loss_fn(ps, cp.asarray(xs), cp.asarray(ys)).backward()
        dp.finish()
        opt.step()
        opt.zero_grad()
        loss_fn(ref, x, y).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    for p, q in zip(ps, ref):
        assert np.abs(np.asarray(p.data) - q.data).max() < 1e-12
    print(f"OK fake-nccl zero1 rank {r}", flush=True)


def check_timeout(comm):
    ps = model_params(cp)
    dp = DataParallel(ps, comm)
    if comm.rank == 1:
        os._exit(0)
    x = cp.asarray(np.ones((2, 6)))
    loss_fn(ps, x, cp.asarray(np.ones(2))).backward()
    t0 = time.perf_counter()
    try:
        dp.finish()
    except DistributedTimeoutError as e:
        print(f"CAUGHT DistributedTimeoutError after {time.perf_counter() - t0:.2f} s: {e}", flush=True)
        assert comm._aborted
        os._exit(3)
    os._exit(1)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "all"
    comm = init_distributed("nccl", timeout=2.0 if mode == "timeout" else 30.0, device="cuda")
    assert comm.backend == "nccl"
    if mode == "timeout":
        check_timeout(comm)
    check_collectives(comm, cp)
    check_dp(comm)
    check_zero(comm)
    comm.barrier()
    print(f"OK fake-nccl all rank {comm.rank}", flush=True)


if __name__ == "__main__":
    main()
