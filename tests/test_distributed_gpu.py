"""NCCL data parallel on 2+ GPUs (skipped without CuPy and two GPUs): collectives, float64/float32 equivalence,
and the dead-rank timeout, through the launcher and (when present) mpiexec."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi_scripts" / "nccl_equivalence.py"


def _gpus() -> int:
    from autograd import backend
    if not backend.cuda_available():
        return 0
    try:
        from cupy.cuda import nccl  # noqa: F401
    except ImportError:
        return 0
    return backend.cupy_module().cuda.runtime.getDeviceCount()


needs_two_gpus = pytest.mark.skipif(_gpus() < 2, reason="needs CuPy with NCCL and at least 2 GPUs")
pytestmark = [pytest.mark.gpu, needs_two_gpus]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("NCCL_NVLS_ENABLE", "0")   # NVLink multicast stays off on the shared GPU hosts here
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TINYGRAD_LLM_LAUNCHER"):
        env.pop(k, None)
    return env


def _launch(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tinygrad_llm.distributed.launch", "--nproc", "2", str(SCRIPT),
                           *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_nccl_equivalence_via_launcher():
    res = _launch()
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "OK nccl all rank 0" in out and "OK nccl all rank 1" in out, out


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec")
def test_nccl_equivalence_via_mpiexec():
    cmd = ["mpiexec", "-n", "2", sys.executable, str(SCRIPT)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")   # Open MPI refuses root without it (MPICH does not know the flag)
        probe = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True)
        if "Open MPI" not in probe.stdout + probe.stderr and "OpenRTE" not in probe.stdout + probe.stderr:
            cmd.remove("--allow-run-as-root")
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "OK nccl all rank 0" in out and "OK nccl all rank 1" in out, out


def test_nccl_dead_rank_times_out():
    res = _launch("timeout", timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "CAUGHT DistributedTimeoutError" in out and "nccl all_reduce on rank 0" in out, out


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_over_two_gpus_matches_one_device(schedule):
    """Stages on cuda:0 and cuda:1 (tied embedding crossing GPUs), float64: loss and grads equal one GPU's."""
    import numpy as np

    import tinygrad_llm as tl
    from tinygrad_llm.distributed.pipeline import PipelineParallel
    cfg = tl.GPTConfig(vocab_size=101, context_length=32, n_layer=4, n_head=4, n_embd=64, dropout=0.0)
    ref = tl.GPT(cfg, seed=2, dtype=np.float64, device="cuda:0")
    model = tl.GPT(cfg, seed=2, dtype=np.float64)
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, 101, (8, 32)), rng.integers(0, 101, (8, 32))
    ref_loss = ref.loss(idx, tgt)
    ref_loss.backward()
    pipe = PipelineParallel(model, ["cuda:0", "cuda:1"], n_micro=4, schedule=schedule)
    assert model.lm_head.weight is model.tok_emb.weight and model.tok_emb.weight.device == "cuda:0"
    loss = pipe.train_step(idx, tgt)
    assert abs(loss - ref_loss.item()) < 1e-10
    for (name, a), b in zip(ref.named_parameters(), model.parameters()):
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=0, atol=1e-10, err_msg=name)
