"""Distributed training: communicators (NCCL, MPI, TCP), data parallel, pipeline parallel, the launcher.

    import tinygrad_llm.distributed as dist
    comm = dist.init_distributed(backend="auto", timeout=300, device="cuda")   # under mpiexec or the launcher
    model = dist.DataParallel(model, comm)          # broadcast from rank 0, bucketed async all-reduce
    loss.backward(); model.finish(); opt.step()     # grads are averaged over ranks after finish()
    if dist.is_main_process(): save_checkpoint(...)

Start ranks with ``mpiexec -n 2 python train.py`` or ``python -m tinygrad_llm.distributed.launch --nproc 2
train.py``. CuPy and mpi4py are imported only when their backend is chosen.
"""
from .comm import (Communicator, DistributedError, DistributedTimeoutError, SingleProcess, Work)
from .data_parallel import DataParallel, unique_parameters
from .zero import ShardedOptimizer
from .runtime import (get_communicator, get_rank, get_world_size, gpu_device_for_rank, init_distributed,
                      is_main_process, launched_by_launcher, launched_by_mpi, local_rank, set_communicator)
from .sharding import all_reduce_mean, reduce_metrics, shard_batch, shard_indices, shard_range


def __getattr__(name):
    # the backends import mpi4py / cupy; load them only when asked for
    if name == "MPICommunicator":
        from .mpi import MPICommunicator
        return MPICommunicator
    if name == "NCCLCommunicator":
        from .nccl import NCCLCommunicator
        return NCCLCommunicator
    if name == "TCPCommunicator":
        from .tcp import TCPCommunicator
        return TCPCommunicator
    if name in ("PipelineParallel", "split_gpt", "balance_by_cost", "schedule_ops"):
        from . import pipeline
        return getattr(pipeline, name)
    if name == "launch":
        from .launch import launch
        return launch
    raise AttributeError(f"module 'tinygrad_llm.distributed' has no attribute {name!r}")


__all__ = [
    "Communicator", "SingleProcess", "Work", "DistributedError", "DistributedTimeoutError", "DataParallel",
    "ShardedOptimizer",
    "unique_parameters", "init_distributed", "get_communicator", "set_communicator", "get_rank",
    "get_world_size", "is_main_process", "local_rank", "gpu_device_for_rank", "launched_by_mpi",
    "launched_by_launcher", "shard_range", "shard_batch", "shard_indices",
    "all_reduce_mean", "reduce_metrics", "MPICommunicator", "NCCLCommunicator", "TCPCommunicator",
    "PipelineParallel", "split_gpt", "balance_by_cost", "schedule_ops", "launch",
]
