"""ZeRO-1 checks run by tests/test_zero.py under ``mpiexec -n N`` or the TCP launcher (or as one plain process).

    python zero_check.py equiv            sharded AdamW == plain data parallel (float64), with clipping, an unused
                                          parameter and several buckets; prints each rank's share of the state
    python zero_check.py save DIR         train 3 sharded steps, write the gathered optimizer state + params to DIR
    python zero_check.py resume DIR       load DIR (saved with any number of ranks), train 2 more sharded steps and
                                          compare with an unsharded run of all 5 steps

Every check prints ``OK <name> rank <r> of <n>`` on success and exits non-zero otherwise.
"""
from __future__ import annotations

import os
import sys

from _common import TinyMLP, flat, global_batch, mse  # also puts the repo root on sys.path

import numpy as np
from safetensors.numpy import load_file, save_file

from tinygrad_llm import optim
from tinygrad_llm.distributed import DataParallel, ShardedOptimizer, init_distributed, shard_batch
from tinygrad_llm.optim.optimizer import merge_state_dict, split_state_dict

ROWS = 12        # global batch: the same for 1, 2, 3 or 4 ranks, so runs of any size compare
TOL = 1e-12
CLIP = 0.5       # small enough that clipping acts on every step


def make(comm, shard: bool, seed: int = 100):
    model = TinyMLP(seed=seed + comm.rank)         # different on each rank: the broadcast must fix it
    dp = DataParallel(model, comm, bucket_mb=0.0002, shard_optimizer=shard)
    # named: AdamW's two groups (matrices decay, vectors do not), so shards span groups
    opt = optim.AdamW(list(zip(("w1", "b1", "w2", "b2", "unused"), model.parameters())), lr=0.05, weight_decay=0.1)
    return model, dp, (ShardedOptimizer(opt, dp) if shard else opt)


def step(comm, model, dp, opt, k: int) -> float:
    x, y = global_batch(k, ROWS)
    xs, ys = shard_batch((x, y), comm.rank, comm.world_size)
    loss = mse(dp, xs, ys)
    loss.backward()
    dp.finish()
    if isinstance(opt, ShardedOptimizer):
        norm = opt.clip_grad_norm(CLIP)
    else:
        norm = optim.clip_grad_norm(model.parameters(), CLIP)
    opt.step()
    opt.zero_grad()
    return norm


def check_equiv(comm):
    plain = make(comm, shard=False)
    sharded = make(comm, shard=True)
    assert len(sharded[1].buckets) >= 3
    for k in range(4):
        n_plain = step(comm, *plain, k)
        n_shard = step(comm, *sharded, k)
        assert abs(n_plain - n_shard) < TOL * max(1.0, n_plain), (k, n_plain, n_shard)
    diff = np.abs(flat(plain[0]) - flat(sharded[0])).max()
    assert diff < TOL, f"rank {comm.rank}: max |zero1 - plain| = {diff:.3e}"
    everyone = comm.all_gather(flat(sharded[0]))
    assert np.abs(everyone - everyone[0]).max() == 0.0, "ranks disagree on the parameters"
    # the gathered state is the plain optimizer's, array for array
    full, ref = sharded[2].state_dict(), plain[2].state_dict()
    assert full["step"] == ref["step"] and sorted(full["state"]) == sorted(ref["state"]), (full["step"], ref["step"])
    for i, s in ref["state"].items():
        assert full["state"][i]["step"] == s["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert np.abs(full["state"][i][key] - s[key]).max() < TOL, (i, key)
    local, total = sharded[2].state_bytes()
    plain_bytes = sum(v.nbytes for s in plain[2].state.values() for v in s.values() if hasattr(v, "nbytes"))
    assert total == plain_bytes, (total, plain_bytes)
    assert local <= -(-plain_bytes // comm.world_size) + 64 * 16, (local, plain_bytes)   # padding of the buckets
    print(f"optimizer state rank {comm.rank}: {local} of {total} bytes ({local / total:.3f}; "
          f"1/world_size = {1 / comm.world_size:.3f})")
    return diff


def check_save(comm, out: str):
    model, dp, opt = make(comm, shard=True)
    for k in range(3):
        step(comm, model, dp, opt, k)
    sd = opt.state_dict()                               # collective: every rank calls it
    if comm.rank == 0:
        os.makedirs(out, exist_ok=True)
        arrays, meta = split_state_dict(sd)
        arrays.update({f"param.{n}": a for n, a in model.named_arrays().items()})
        save_file(arrays, os.path.join(out, "state.safetensors"), metadata={"meta": _json(meta)})
    comm.barrier()


def check_resume(comm, out: str):
    import json
    from safetensors import safe_open
    model, dp, opt = make(comm, shard=True)
    path = os.path.join(out, "state.safetensors")
    with safe_open(path, "np") as f:
        meta = json.loads(f.metadata()["meta"])
    tensors = load_file(path)
    for n, p in zip(("w1", "b1", "w2", "b2", "unused"), model.parameters()):
        p.data[...] = tensors[f"param.{n}"]
    opt.load_state_dict(merge_state_dict({k: v for k, v in tensors.items() if k.startswith("state.")}, meta))
    for k in range(3, 5):
        step(comm, model, dp, opt, k)
    ref_model, ref_dp, ref_opt = make(comm, shard=False)      # the same 5 steps, unsharded, same world size
    for k in range(5):
        step(comm, ref_model, ref_dp, ref_opt, k)
    diff = np.abs(flat(model) - flat(ref_model)).max()
    assert diff < 1e-10, f"rank {comm.rank}: resumed zero1 vs plain: {diff:.3e}"
    return diff


def _json(obj) -> str:
    import json
    return json.dumps(obj)


def main():
    mode = sys.argv[1]
    comm = init_distributed(backend=sys.argv[3] if len(sys.argv) > 3 else "auto")
    if mode == "equiv":
        check_equiv(comm)
    elif mode == "save":
        check_save(comm, sys.argv[2])
    elif mode == "resume":
        check_resume(comm, sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"OK {mode} rank {comm.rank} of {comm.world_size}", flush=True)


if __name__ == "__main__":
    main()
