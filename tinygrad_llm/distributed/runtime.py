"""``init_distributed``: find out how this process was started and return the right Communicator.

- under ``mpiexec`` (Open MPI sets ``OMPI_COMM_WORLD_RANK``, MPICH/Hydra ``PMI_RANK``, PMIx ``PMIX_RANK``):
  the MPI backend on CPUs, NCCL on GPUs (MPI broadcasts the NCCL unique id);
- under our launcher (``TINYGRAD_LLM_LAUNCHER=1`` with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``):
  the TCP backend on CPUs, NCCL on GPUs (the TCP connection broadcasts the unique id);
- otherwise: ``SingleProcess`` (world of one), so the same script runs unchanged.

The communicator is kept as the process default: ``get_rank()``, ``get_world_size()``, ``is_main_process()``.
"""
from __future__ import annotations

import os

from .comm import Communicator, DEFAULT_TIMEOUT, SingleProcess

_default: Communicator | None = None

_MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MPI_LOCALRANKID")
_LOCAL_RANK_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK")


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in _MPI_RANK_VARS)


def launched_by_launcher() -> bool:
    return os.environ.get("TINYGRAD_LLM_LAUNCHER") == "1" and "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_rank() -> int:
    """This process's index among the ranks of its node (picks the GPU)."""
    for v in _LOCAL_RANK_VARS:
        if v in os.environ:
            return int(os.environ[v])
    return 0


def _wants_gpu(device: str | None) -> bool:
    return device is not None and str(device).lower().startswith(("cuda", "gpu"))


def init_distributed(backend: str = "auto", timeout: float | None = DEFAULT_TIMEOUT,
                     device: str | None = None) -> Communicator:
    """Create (once) and return this process's communicator.

    backend: ``"auto"`` (NCCL when ``device`` is a GPU and there are several ranks, else MPI under mpiexec, TCP
    under the launcher, else none), ``"mpi"``, ``"nccl"``, ``"tcp"`` or ``"none"``. ``timeout``: seconds before
    a collective raises DistributedTimeoutError. For NCCL the GPU is ``cuda:LOCAL_RANK`` unless ``device`` names one
    (``cuda:N``); the chosen GPU becomes CuPy's current device.
    """
    global _default
    if _default is not None:
        return _default
    backend = backend.lower()
    if backend not in ("auto", "mpi", "nccl", "tcp", "none"):
        raise ValueError(f"unknown distributed backend {backend!r}: expected auto, mpi, nccl, tcp or none")
    by_mpi, by_launcher = launched_by_mpi(), launched_by_launcher()
    if backend == "auto":
        if not (by_mpi or by_launcher):
            backend = "none"
        elif _wants_gpu(device):
            backend = "nccl"
        else:
            backend = "mpi" if by_mpi else "tcp"

    if backend == "none":
        _default = SingleProcess(timeout=timeout)
    elif backend == "mpi":
        from .mpi import MPICommunicator
        _default = MPICommunicator(timeout=timeout)
    elif backend == "tcp":
        _default = _tcp_from_env(timeout)
    else:  # nccl
        from .nccl import NCCLCommunicator
        if by_mpi:
            from .mpi import MPICommunicator
            boot = MPICommunicator(timeout=timeout)
        elif by_launcher:
            boot = _tcp_from_env(timeout)
        else:
            boot = SingleProcess(timeout=timeout)
        if device is not None and ":" in str(device) and boot.world_size == 1:
            gpu = int(str(device).split(":")[1])      # one process: the GPU it asked for
        else:                                          # several: one GPU per rank of this node
            import cupy
            gpu = local_rank() % cupy.cuda.runtime.getDeviceCount()
        _default = NCCLCommunicator.from_bootstrap(boot, device=gpu, timeout=timeout)
    return _default


def _tcp_from_env(timeout):
    from .tcp import TCPCommunicator
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"the tcp backend needs the environment variables {missing}: start the ranks with "
                           "python -m tinygrad_llm.distributed.launch --nproc N script.py")
    return TCPCommunicator(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["MASTER_ADDR"],
                           int(os.environ["MASTER_PORT"]), timeout=timeout)


def set_communicator(comm: Communicator | None) -> None:
    """Make ``comm`` the process default (or forget it with None; tests use this)."""
    global _default
    _default = comm


def get_communicator() -> Communicator:
    """The default communicator; a SingleProcess one when init_distributed was never called."""
    return _default if _default is not None else SingleProcess()


def get_rank() -> int:
    if _default is not None:
        return _default.rank
    for v in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if v in os.environ:
            return int(os.environ[v])
    return 0


def get_world_size() -> int:
    if _default is not None:
        return _default.world_size
    for v in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if v in os.environ:
            return int(os.environ[v])
    return 1


def is_main_process() -> bool:
    """True on rank 0: the one that logs, evaluates to the console and writes checkpoints."""
    return get_rank() == 0


def gpu_device_for_rank(device: str = "cuda") -> str:
    """The device string this rank should put its model on: ``cuda:<local rank mod GPU count>``, or 'cpu'."""
    if not _wants_gpu(device):
        return "cpu"
    if _default is not None and getattr(_default, "device", None) is not None:
        return f"cuda:{_default.device}"
    if ":" in str(device) and get_world_size() == 1:
        return str(device)                      # one process: keep the GPU it asked for
    import cupy
    return f"cuda:{local_rank() % cupy.cuda.runtime.getDeviceCount()}"
