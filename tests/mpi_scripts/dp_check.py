"""Data-parallel checks run by tests/test_distributed.py under ``mpiexec -n 2`` (or as one plain process).

    python dp_check.py equiv            N ranks with batch b == one process with batch N*b (float64, 1e-10)
    python dp_check.py accum            no_sync accumulation: one communication per step, same result
    python dp_check.py timeout          rank 1 exits early; rank 0 must raise DistributedTimeoutError
    python dp_check.py hang             rank 1 hangs; rank 0 raises, then MPI_Abort ends both
    python dp_check.py ckpt_save DIR    train 4 steps, rank 0 checkpoints after step 2 and saves the final params
    python dp_check.py ckpt_resume DIR  resume from DIR's checkpoint (any number of ranks), compare the final params
    python dp_check.py collectives      broadcast / all_gather / reduce_scatter / barrier / metrics helpers

Every check prints ``OK <name> rank <r>`` on success and exits non-zero otherwise.
"""
from __future__ import annotations

import sys
import time

from _common import TinyMLP, flat, global_batch, mse  # also puts the repo root on sys.path

import numpy as np

from tinygrad_llm import optim
from tinygrad_llm.distributed import (DataParallel, DistributedTimeoutError, all_reduce_mean, init_distributed,
                                      reduce_metrics, shard_batch)

B = 3          # rows per rank
TOL = 1e-10


def backend() -> str:
    return sys.argv[3] if len(sys.argv) > 3 else "auto"


def check_equiv(comm, accumulate: int = 1, overlap: bool = True, steps: int = 3):
    """Train ``steps`` steps data-parallel and, in the same process, the single-process reference."""
    W, r = comm.world_size, comm.rank
    model = TinyMLP(seed=100 + r)            # different on each rank: the broadcast must fix it
    calls = count_calls(comm)
    dp = DataParallel(model, comm, bucket_mb=0.0002, overlap=overlap)   # ~26 float64 per bucket: several buckets
    assert len(dp.buckets) >= 3, len(dp.buckets)
    # AdamW: weight decay would move a parameter whose gradient became zeros instead of None (the unused one)
    opt = optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    ref = TinyMLP(seed=100)
    ref_opt = optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.1)
    for step in range(steps):
        x, y = global_batch(step, B * W * accumulate)
        calls[0] = 0
        losses = []
        for k in range(accumulate):
            # micro-step k covers rows [k*B*W, (k+1)*B*W) of the global batch; this rank takes its slice of those
            xk, yk = (a[k * B * W:(k + 1) * B * W] for a in (x, y))
            xs, ys = shard_batch((xk, yk), r, W)
            loss = mse(dp, xs, ys) * (1.0 / accumulate)
            losses.append(loss.item())
            if k < accumulate - 1:
                with dp.no_sync():
                    loss.backward()
            else:
                loss.backward()
        dp.finish()
        expect = len(dp.buckets) if W > 1 else 0       # one all-reduce per bucket per step, none in a world of 1
        assert calls[0] == expect, f"expected {expect} all-reduces in a step, got {calls[0]}"
        opt.step()
        opt.zero_grad()
        ref_loss = mse(ref, x, y)
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        global_loss = all_reduce_mean(sum(losses) * B, B, comm)  # each rank's mean over its B rows, averaged
        assert abs(global_loss - ref_loss.item()) < TOL, (global_loss, ref_loss.item())
    diff = np.abs(flat(model) - flat(ref)).max()
    everyone = comm.all_gather(flat(model))
    spread = np.abs(everyone - everyone[0]).max()
    assert diff < TOL and spread == 0.0, f"rank {r}: max |dp - single| = {diff:.3e}, spread over ranks {spread:.3e}"
    return diff


def check_gpt(comm, steps: int = 2):
    """A small GPT (tied embeddings, float64) data-parallel == one process with the whole batch."""
    import tinygrad_llm as tl
    W, r = comm.world_size, comm.rank
    cfg = tl.GPTConfig(vocab_size=37, context_length=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    model = tl.GPT(cfg, seed=10 + r, dtype=np.float64)
    dp = DataParallel(model, comm, bucket_mb=0.01)
    ref = tl.GPT(cfg, seed=10, dtype=np.float64)
    opt, ref_opt = optim.AdamW(model, lr=1e-2), optim.AdamW(ref, lr=1e-2)
    for step in range(steps):
        rng = np.random.default_rng([5, step])
        x, y = rng.integers(0, 37, (2 * W, 8)), rng.integers(0, 37, (2 * W, 8))
        dp.loss(*shard_batch((x, y), r, W)).backward()      # DataParallel forwards attributes to the model
        dp.finish()
        opt.step()
        opt.zero_grad()
        ref.loss(x, y).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    diff = max(np.abs(a.numpy() - b.numpy()).max() for a, b in zip(model.parameters(), ref.parameters()))
    assert diff < TOL, f"rank {r}: GPT data parallel differs from one process by {diff:.3e}"
    return diff


def count_calls(comm):
    """Count all_reduce_async calls (the gradient buckets) by wrapping the communicator's method."""
    counter = [0]
    orig = comm.all_reduce_async

    def counted(array, op="sum"):
        counter[0] += 1
        return orig(array, op)
    comm.all_reduce_async = counted
    return counter


def check_timeout(comm, hang: bool = False):
    model = TinyMLP(seed=0)
    dp = DataParallel(model, comm)
    if comm.rank == 1:
        if hang:
            print("rank 1 hangs", flush=True)
            time.sleep(120)          # only MPI_Abort from rank 0 ends this early
        print("rank 1 exits early", flush=True)
        sys.exit(0)
    loss = mse(dp, *global_batch(0, B))
    loss.backward()
    t0 = time.perf_counter()
    try:
        dp.finish()
    except DistributedTimeoutError as e:
        print(f"CAUGHT DistributedTimeoutError after {time.perf_counter() - t0:.2f} s: {e}", flush=True)
        time.sleep(1.0)  # let mpiexec forward the line before MPI_Abort tears the job down (lost under load)
        comm.abort()     # MPI: MPI_Abort ends every rank; the pending Iallreduce can never complete
        sys.exit(3)
    print("no error raised", flush=True)
    sys.exit(1)


def train_steps(comm, model, opt, dp, start: int, stop: int):
    W, r = comm.world_size, comm.rank
    for step in range(start, stop):
        x, y = global_batch(step, 12)               # global batch fixed (12): any number of ranks dividing it
        xs, ys = shard_batch((x, y), r, W)
        mse(dp, xs, ys).backward()
        dp.finish()
        opt.step()
        opt.zero_grad()


def check_ckpt_save(comm, out: str):
    from tinygrad_llm.train.checkpoint import save_checkpoint
    model = TinyMLP(seed=7)
    dp = DataParallel(model, comm)
    opt = optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    train_steps(comm, model, opt, dp, 0, 2)
    if comm.rank == 0:
        # "ranks_seen" is only there to move optimizer.safetensors' header length off 0x0380: checkpoint.py's
        # pickle sniffing misreads a header length whose first bytes are 80 02..05 as a pickle (reported)
        save_checkpoint(out, 2, {"model": model.named_arrays(), "optimizer": opt.state_dict(), "step": 2,
                                 "world_size": comm.world_size, "ranks_seen": np.arange(comm.world_size)})
    comm.barrier()
    train_steps(comm, model, opt, dp, 2, 4)
    if comm.rank == 0:
        np.save(f"{out}/final.npy", flat(model))


def check_ckpt_resume(comm, out: str):
    from tinygrad_llm.train.checkpoint import load_checkpoint
    ck = load_checkpoint(out)                       # every rank reads it (or rank 0 reads + DataParallel broadcasts)
    model = TinyMLP(seed=999)                       # garbage init: everything must come from the checkpoint
    for name, p in zip(("w1", "b1", "w2", "b2", "unused"), model.parameters()):
        p.data[...] = ck.model[name]
    dp = DataParallel(model, comm)
    opt = optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    opt.load_state_dict(ck["optimizer"])
    train_steps(comm, model, opt, dp, int(ck["step"]), 4)
    diff = np.abs(flat(model) - np.load(f"{out}/final.npy")).max()
    assert diff < TOL, f"resumed with {comm.world_size} rank(s) (saved with {ck['world_size']}): diff {diff:.3e}"
    return diff


def check_collectives(comm):
    W, r = comm.world_size, comm.rank
    a = np.full(4, float(r))
    comm.broadcast(a, root=W - 1)
    assert (a == W - 1).all(), a
    g = comm.all_gather(np.array([r, 10 * r], dtype=np.int64))
    assert g.shape == (W, 2) and (g[:, 0] == np.arange(W)).all(), g
    rs = comm.reduce_scatter(np.arange(2 * W, dtype=np.float64) + r, "sum")
    full = sum(np.arange(2 * W, dtype=np.float64) + k for k in range(W))
    assert np.array_equal(rs, full[2 * r:2 * r + 2]), (rs, full)
    m = np.array([float(r)])
    comm.all_reduce(m, "max")
    assert m[0] == W - 1
    comm.barrier()
    got = reduce_metrics({"loss": float(r), "acc": 1.0}, comm)
    assert abs(got["loss"] - (W - 1) / 2) < 1e-12 and got["acc"] == 1.0, got
    assert comm.broadcast_object({"step": 5, "name": "x"} if r == 0 else None) == {"step": 5, "name": "x"}


def main():
    mode = sys.argv[1]
    comm = init_distributed(backend(), timeout=2.0 if mode in ("timeout", "hang") else 60.0)
    if mode == "equiv":
        diff = check_equiv(comm)
    elif mode == "accum":
        diff = check_equiv(comm, accumulate=2, overlap=False)
        diff = max(diff, check_equiv(comm, accumulate=3, overlap=True, steps=2))
    elif mode == "gpt":
        diff = check_gpt(comm)
    elif mode in ("timeout", "hang"):
        check_timeout(comm, hang=mode == "hang")
    elif mode == "ckpt_save":
        check_ckpt_save(comm, sys.argv[2])
        diff = 0.0
    elif mode == "ckpt_resume":
        diff = check_ckpt_resume(comm, sys.argv[2])
    elif mode == "collectives":
        check_collectives(comm)
        diff = 0.0
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"OK {mode} rank {comm.rank} of {comm.world_size} ({comm.backend}) max diff {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
