"""Distributed training on the CPU: MPI (mpiexec -n 2) and launcher (TCP) runs of tests/mpi_scripts, plus
in-process checks of sharding, SingleProcess, DataParallel bookkeeping and the launcher's failure handling."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autograd as ag
from tinygrad_llm import distributed as dist
from tinygrad_llm.distributed import DataParallel, SingleProcess, shard_batch, shard_indices, shard_range

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "mpi_scripts"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # the test process may itself run under a launcher: never let the children think they are its ranks
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TINYGRAD_LLM_LAUNCHER", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        env.pop(k, None)
    return env


def run(cmd, timeout=60):
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def mpirun(n, *args, timeout=60):
    return run(["mpiexec", "-n", str(n), sys.executable, str(SCRIPTS / args[0]), *args[1:]], timeout)


def launch(n, *args, timeout=60):
    return run([sys.executable, "-m", "tinygrad_llm.distributed.launch", "--nproc", str(n),
                str(SCRIPTS / args[0]), *args[1:]], timeout)


def assert_ok(res, mode, n):
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for r in range(n):
        assert f"OK {mode} rank {r} of {n}" in out, out


# ---------------------------------------------------------------------------------------------- MPI runs
@pytest.mark.mpi
@pytest.mark.parametrize("mode", ["equiv", "accum", "collectives", "gpt"])
def test_mpi_two_ranks_match_one_process(mode):
    """2 ranks x batch b == 1 process x batch 2b (float64, 1e-10); no_sync accumulation; every collective."""
    assert_ok(mpirun(2, "dp_check.py", mode), mode, 2)


@pytest.mark.mpi
def test_mpi_dead_rank_raises_timeout_error():
    res = mpirun(2, "dp_check.py", "timeout", timeout=40)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "CAUGHT DistributedTimeoutError" in out, out
    assert "all_reduce on rank 0 (world size 2) did not complete within 2 s" in out, out


@pytest.mark.mpi
def test_mpi_hung_rank_raises_and_abort_ends_the_job():
    # rank 1 sleeps 120 s: only rank 0's comm.abort() (MPI_Abort) can end the job within the 30 s allowed here
    res = mpirun(2, "dp_check.py", "hang", timeout=30)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "CAUGHT DistributedTimeoutError" in out and "rank 1 exits early" not in out, out


@pytest.mark.mpi
def test_mpi_checkpoint_resume_with_other_rank_counts(tmp_path):
    """Save after 2 of 4 steps with 2 ranks; resuming with 1 rank and with 3 ranks ends at the same parameters."""
    assert_ok(mpirun(2, "dp_check.py", "ckpt_save", str(tmp_path)), "ckpt_save", 2)
    assert_ok(run([sys.executable, str(SCRIPTS / "dp_check.py"), "ckpt_resume", str(tmp_path)]), "ckpt_resume", 1)
    assert_ok(mpirun(3, "dp_check.py", "ckpt_resume", str(tmp_path)), "ckpt_resume", 3)


# ---------------------------------------------------------------------------------------------- launcher runs
def test_launcher_tcp_equivalence_and_collectives():
    for mode in ("equiv", "collectives"):
        res = launch(2, "dp_check.py", mode)
        assert_ok(res, mode, 2)
        assert "[rank 0] OK" in res.stdout and "[rank 1] OK" in res.stdout


def test_launcher_stops_other_ranks_when_one_fails():
    res = launch(2, "launch_fail.py", timeout=30)
    assert res.returncode == 7, res.stdout + res.stderr
    assert "[rank 1] hello from rank 1 of 2 local 1" in res.stdout
    assert "rank 1 exited with code 7; stopping the other ranks" in res.stderr
    assert "rank 0 was not stopped" not in res.stdout


def test_tcp_dead_peer_gives_clear_error():
    res = launch(2, "dp_check.py", "timeout", timeout=30)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "rank 1 closed its connection" in out or "DistributedTimeoutError" in out, out


# ---------------------------------------------------------------------------------------------- in process
def test_shard_helpers_are_disjoint_and_cover():
    for n, w in [(10, 3), (7, 2), (4, 4)]:
        ranges = [shard_range(n, r, w) for r in range(w)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        idx = [shard_indices(n, r, w, seed=3, epoch=1) for r in range(w)]
        allidx = np.concatenate(idx)
        assert len(set(allidx.tolist())) == len(allidx) == (n // w) * w
    x = np.arange(12).reshape(6, 2)
    assert np.array_equal(np.concatenate([shard_batch(x, r, 3) for r in range(3)]), x)
    with pytest.raises(ValueError, match="does not split evenly"):
        shard_batch(x, 0, 4)


def test_single_process_communicator_is_identity():
    c = SingleProcess()
    a = np.arange(4.0)
    assert c.all_reduce(a, "avg") is a and c.broadcast(a) is a
    assert c.all_gather(a).shape == (1, 4) and np.array_equal(c.reduce_scatter(a), a)
    assert c.broadcast_object({"k": 1}) == {"k": 1}
    assert dist.all_reduce_mean(6.0, 3.0, c) == 2.0
    with pytest.raises(ValueError, match="unknown reduction op"):
        c.all_reduce(a, "prod")
    with pytest.raises(TypeError, match="reduce_scatter op 'avg' needs a floating-point array, got int64"):
        c.reduce_scatter(np.arange(4), "avg")


def test_init_distributed_without_launcher_is_single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "TINYGRAD_LLM_LAUNCHER", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK",
              "MPI_LOCALRANKID"):
        monkeypatch.delenv(k, raising=False)
    dist.set_communicator(None)
    try:
        comm = dist.init_distributed()
        assert isinstance(comm, SingleProcess) and dist.get_world_size() == 1 and dist.is_main_process()
    finally:
        dist.set_communicator(None)
    with pytest.raises(ValueError, match="unknown distributed backend"):
        dist.init_distributed("gloo")


class _FakeComm(SingleProcess):
    """World of 2 in which the 'other rank' contributes zeros: avg halves every gradient."""

    def __init__(self):
        super().__init__()
        self.world_size = 2
        self.calls = []

    def all_reduce(self, array, op="sum"):
        self.calls.append((op, array.size))
        if op == "avg":
            array /= 2
        return array


def test_data_parallel_buckets_order_and_unused_params():
    rng = np.random.default_rng(0)
    ps = [ag.Tensor(rng.standard_normal(s), requires_grad=True) for s in [(3, 4), (4,), (4, 2), (2,), (5,)]]
    comm = _FakeComm()
    dp = DataParallel(ps, comm, bucket_mb=100 / 2 ** 20)   # 100 bytes: several buckets
    assert [p for b in dp.buckets for p in b.params] == ps[::-1]           # reverse order
    x = ag.Tensor(rng.standard_normal((2, 3)))
    loss = ((x @ ps[0] + ps[1]) @ ps[2] + ps[3]).sum()     # ps[4] unused
    loss.backward()
    ref = [p.grad.numpy().copy() for p in ps[:4]]
    dp.finish()
    assert len(comm.calls) == len(dp.buckets)
    for p, g in zip(ps[:4], ref):
        np.testing.assert_allclose(p.grad.numpy(), g / 2)
    assert ps[4].grad is None                               # unused on every rank: stays None
    with pytest.raises(RuntimeError, match="no_sync"):
        loss = (x @ ps[0]).sum()
        loss.backward()
        loss2 = (x @ ps[0]).sum()
        loss2.backward()


def test_data_parallel_world_of_one_is_a_no_op():
    p = ag.Tensor(np.ones(3), requires_grad=True)
    dp = DataParallel([p], SingleProcess())
    (p * 2).sum().backward()
    dp.finish()
    np.testing.assert_array_equal(p.grad.numpy(), [2, 2, 2])
    with dp.no_sync():
        pass


# ---------------------------------------------------------------------------------------------- NCCL code path
def test_nccl_code_path_against_fake_cupy():
    """nccl.py + DataParallel's stream/event path on a fake CuPy/NCCL (CPU threads as streams, TCP as NCCL)."""
    res = launch(2, "fake_nccl_check.py")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "OK fake-nccl all rank 0" in out and "OK fake-nccl all rank 1" in out, out
    assert "OK fake-nccl zero1 rank 0" in out and "OK fake-nccl zero1 rank 1" in out, out   # ZeRO-1 over NCCL


def test_nccl_timeout_aborts_against_fake_cupy():
    res = launch(2, "fake_nccl_check.py", "timeout", timeout=30)
    out = res.stdout + res.stderr
    assert res.returncode == 3, out
    assert "CAUGHT DistributedTimeoutError" in out and "nccl all_reduce on rank 0 (world size 2)" in out, out


def test_launcher_passes_ctrl_c_to_every_rank():
    import signal
    import time
    p = subprocess.Popen([sys.executable, "-m", "tinygrad_llm.distributed.launch", "--nproc", "2",
                          str(SCRIPTS / "launch_sigint.py")], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60   # generous: rank start-up is slow on a loaded 2-core machine
    lines = []
    while sum("ready" in x for x in lines) < 2 and time.time() < deadline:   # both ranks installed their handler
        lines.append(p.stdout.readline())
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    out = "".join(lines) + out
    assert p.returncode == 0, out
    assert "[rank 0] rank 0 got SIGINT, saving" in out and "[rank 1] rank 1 got SIGINT, saving" in out, out


def _tcp_pair(timeout):
    """Two TCPCommunicators in this process (rank 1 connects from a thread)."""
    import threading
    from tinygrad_llm.distributed.launch import free_port
    from tinygrad_llm.distributed.tcp import TCPCommunicator
    port, box = free_port(), {}
    t = threading.Thread(target=lambda: box.setdefault(1, TCPCommunicator(1, 2, port=port, timeout=timeout)))
    t.start()
    c0 = TCPCommunicator(0, 2, port=port, timeout=timeout)
    t.join()
    return c0, box[1]


def test_tcp_hung_peer_times_out_and_mismatched_ops_are_named():
    from tinygrad_llm.distributed import DistributedTimeoutError
    c0, c1 = _tcp_pair(timeout=0.3)
    try:
        with pytest.raises(DistributedTimeoutError, match=r"tcp all_reduce on rank 0 \(world size 2\) did not "
                                                          r"complete within 0.3 s"):
            c0.all_reduce(np.ones(3))          # rank 1 never joins: a hung peer
    finally:
        c0.close()
        c1.close()
    import threading
    c0, c1 = _tcp_pair(timeout=1)

    def other():                               # rank 1 calls another collective
        try:
            c1.all_gather(np.ones(3))
        except dist.DistributedError:
            pass                               # rank 0 never answers: expected
    try:
        t = threading.Thread(target=other)
        t.start()
        with pytest.raises(dist.DistributedError, match="rank 1 called all_gather with 24 bytes, expected "
                                                         "all_reduce with 24 bytes"):
            c0.all_reduce(np.ones(3))
        t.join()
    finally:
        c0.close()
        c1.close()


def test_tcp_avg_of_bfloat16_and_integer_arrays_refused():
    """'avg' takes every floating dtype, ml_dtypes' bfloat16 included (NumPy calls its kind 'V'), and refuses integers
    with the dtype named, on every rank."""
    import threading
    if ag.bfloat16 is None:
        pytest.skip("needs ml_dtypes")
    c0, c1 = _tcp_pair(timeout=5)
    out = {}
    try:
        t = threading.Thread(target=lambda: out.setdefault(1, c1.all_reduce(np.array([3.0, 5.0], ag.bfloat16), "avg")))
        t.start()
        out[0] = c0.all_reduce(np.array([1.0, -1.0], ag.bfloat16), "avg")
        t.join()
        for r in (0, 1):
            assert out[r].dtype == ag.bfloat16
            np.testing.assert_array_equal(out[r].astype(np.float32), [2.0, 2.0])
        with pytest.raises(TypeError, match="all_reduce op 'avg' needs a floating-point array, got int64"):
            c0.all_reduce(np.arange(3), "avg")
    finally:
        c0.close()
        c1.close()
