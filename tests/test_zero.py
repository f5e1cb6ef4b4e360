"""ZeRO-1 (ShardedOptimizer): sharded AdamW equals plain data parallel on CPU ranks (MPI and the TCP launcher), each
rank holds its share of the state, and a gathered checkpoint resumes on another number of ranks."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import autograd as ag
from tinygrad_llm import optim
from tinygrad_llm.distributed import DataParallel, ShardedOptimizer, SingleProcess

from test_distributed import SCRIPTS, assert_ok, launch, mpirun, run


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_mpi_zero1_equals_plain_data_parallel(n):
    res = mpirun(n, "zero_check.py", "equiv")
    assert_ok(res, "equiv", n)
    for r in range(n):
        assert f"optimizer state rank {r}:" in res.stdout


def test_launcher_tcp_zero1_equals_plain_data_parallel():
    assert_ok(launch(2, "zero_check.py", "equiv"), "equiv", 2)


@pytest.mark.mpi
def test_zero1_checkpoint_resumes_on_other_rank_counts(tmp_path):
    assert_ok(mpirun(2, "zero_check.py", "save", str(tmp_path)), "save", 2)
    assert_ok(mpirun(3, "zero_check.py", "resume", str(tmp_path)), "resume", 3)
    assert_ok(run([sys.executable, str(SCRIPTS / "zero_check.py"), "resume", str(tmp_path)]), "resume", 1)


def _mlp(seed):
    rng = np.random.default_rng(seed)
    return [ag.Tensor(rng.standard_normal(s), requires_grad=True) for s in ((4, 6), (6,), (6, 2), (3,))]


def test_world_of_one_sharded_equals_plain_and_state_round_trips():
    x, y = np.random.default_rng(0).standard_normal((5, 4)), np.random.default_rng(1).standard_normal((5, 2))
    runs = []
    for shard in (False, True):
        params = _mlp(7)
        dp = DataParallel(params, SingleProcess(), bucket_mb=0.0001, shard_optimizer=shard)
        opt = optim.AdamW(params, lr=0.1, weight_decay=0.1)
        if shard:
            opt = ShardedOptimizer(opt, dp)
        for _ in range(3):
            out = (ag.Tensor(x) @ params[0] + params[1]).tanh() @ params[2]
            ((out - ag.Tensor(y)) ** 2).mean().backward()    # params[3] gets no gradient: skipped
            dp.finish()
            opt.clip_grad_norm(0.1) if shard else optim.clip_grad_norm(params, 0.1)
            opt.step()
            opt.zero_grad()
        runs.append((params, opt))
    (plain, p_opt), (sharded, s_opt) = runs
    for a, b in zip(plain, sharded):
        np.testing.assert_allclose(a.data, b.data, rtol=0, atol=1e-13)
    sd, ref = s_opt.state_dict(), p_opt.state_dict()
    assert sorted(sd["state"]) == sorted(ref["state"]) == [0, 1, 2]
    fresh = ShardedOptimizer(optim.AdamW(sharded, lr=0.1, weight_decay=0.1),
                             DataParallel(sharded, SingleProcess(), shard_optimizer=True))
    fresh.load_state_dict(sd)
    again = fresh.state_dict()
    for i in sd["state"]:
        for k in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(sd["state"][i][k], again["state"][i][k])


def test_step_without_finish_is_a_clear_error():
    params = _mlp(0)
    dp = DataParallel(params, SingleProcess(), shard_optimizer=True)
    opt = ShardedOptimizer(optim.AdamW(params), dp)
    (params[0].sum() + params[1].sum()).backward()
    with pytest.raises(RuntimeError, match="call dp.finish"):
        opt.step()


_TRAIN = ["--preset", "micro", "--tokenizer", "char", "--block-size", "32", "--batch-size", "4", "--eval-every", "0",
          "--eval-iters", "1", "--sample-tokens", "1", "--dtype", "float64", "--no-progress"]


def _tensors(folder):
    from safetensors.numpy import load_file
    step = sorted(p for p in folder.iterdir() if p.name.startswith("step_"))[-1]
    return {f: load_file(str(step / f"{f}.safetensors")) for f in ("model", "optimizer")}


def test_trainer_shard_optimizer_equals_plain_data_parallel_and_resumes_on_one_rank(tmp_path):
    """`train --shard-optimizer` on 2 ranks: the same weights and the same (gathered) optimizer state as plain data
    parallel, to float64 rounding; its checkpoint then resumes in a single process."""
    cmd = [sys.executable, "-m", "tinygrad_llm", "launch", "--nproc", "2", "train", *_TRAIN, "--steps", "5"]
    for name, extra in (("zero", ["--shard-optimizer"]), ("plain", [])):
        res = run(cmd + ["--out-dir", str(tmp_path / name), *extra], timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
    zero, plain = _tensors(tmp_path / "zero"), _tensors(tmp_path / "plain")
    for what in ("model", "optimizer"):
        assert zero[what].keys() == plain[what].keys()
        for k in plain[what]:
            np.testing.assert_allclose(zero[what][k], plain[what][k], rtol=0, atol=1e-12, err_msg=f"{what} {k}")
    res = run([sys.executable, "-m", "tinygrad_llm", "train", *_TRAIN, "--steps", "7", "--resume",
               str(tmp_path / "zero")], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "zero" / "step_000007").is_dir()
