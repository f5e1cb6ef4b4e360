"""``MPICommunicator``: collectives over NumPy arrays with mpi4py (one process per rank, started by ``mpiexec``).

Every collective is started non-blocking (``Iallreduce``, ``Ibcast`` ...) and its request is polled with
``Test()`` until it completes or the timeout passes, so a rank whose peer died raises
:class:`DistributedTimeoutError` instead of hanging. ``abort()`` calls ``MPI.COMM_WORLD.Abort``: ``mpiexec`` then
ends every rank, which is the only way to get rid of a collective that will never complete.

CuPy arrays are accepted too (staged through host memory: correct, but slow; use the NCCL backend on GPUs).
"""
from __future__ import annotations

import numpy as np

from autograd.backend import is_cupy_array

from .comm import Communicator, DEFAULT_TIMEOUT, Work, check_op, poll_until, timeout_error


def import_mpi():
    """Return ``mpi4py.MPI`` or raise a clear error."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            "the MPI backend needs mpi4py and an MPI library: pip install mpi4py mpich (or use the system's "
            "Open MPI: pip install mpi4py), then start the ranks with mpiexec -n N python script.py"
        ) from e
    return MPI


class _MPIWork(Work):
    """A pending MPI request plus what finishes it (divide for avg, copy back a staged CuPy array)."""

    def __init__(self, comm: "MPICommunicator", req, op_name: str, finish=None):
        self.comm, self.req, self.op_name, self.finish = comm, req, op_name, finish
        self.done = False

    def is_completed(self) -> bool:
        if not self.done:
            self.done = bool(self.req.Test())
        return self.done

    def wait(self):
        c = self.comm
        poll_until(self.is_completed, c.timeout,
                   lambda: timeout_error(self.op_name, c.rank, c.world_size, c.timeout, c.backend))
        result, self.finish = (self.finish() if self.finish is not None else None), None
        return result


class MPICommunicator(Communicator):
    """mpi4py's buffer-based collectives on ``comm`` (default ``MPI.COMM_WORLD``)."""

    backend = "mpi"
    needs_progress = True

    def __init__(self, comm=None, timeout: float | None = DEFAULT_TIMEOUT):
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        super().__init__(self.comm.Get_rank(), self.comm.Get_size(), timeout)
        self._ops = {"sum": MPI.SUM, "avg": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}

    # ------------------------------------------------------------------ plumbing
    def _host(self, array, name: str) -> np.ndarray:
        if is_cupy_array(array):
            return np.ascontiguousarray(array.get())
        if not isinstance(array, np.ndarray):
            raise TypeError(f"MPI {name} needs a NumPy array, got {type(array).__name__}")
        if not array.flags.c_contiguous:
            raise ValueError(f"MPI {name} needs a C-contiguous array (got shape {array.shape} with strides "
                             f"{array.strides}); pass np.ascontiguousarray(x)")
        return array

    def _start(self, op_name: str, req, finish=None) -> _MPIWork:
        return _MPIWork(self, req, op_name, finish)

    # ------------------------------------------------------------------ collectives
    def all_reduce_async(self, array, op: str = "sum") -> Work:
        check_op(op, array.dtype)
        buf = self._host(array, "all_reduce")
        req = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self._ops[op])

        def finish():
            if op == "avg":
                buf[...] /= self.world_size
            if buf is not array:          # staged CuPy array: copy the result back to the GPU
                array[...] = _to_like(buf, array)
            return array
        return self._start("all_reduce", req, finish)

    def all_reduce(self, array, op: str = "sum"):
        return self.all_reduce_async(array, op).wait()

    def broadcast(self, array, root: int = 0):
        self._check_root(root)
        buf = self._host(array, "broadcast")
        req = self.comm.Ibcast(buf, root=root)

        def finish():
            if buf is not array:
                array[...] = _to_like(buf, array)
            return array
        return self._start("broadcast", req, finish).wait()

    def all_gather(self, array):
        buf = self._host(array, "all_gather")
        out = np.empty((self.world_size,) + buf.shape, dtype=buf.dtype)
        req = self.comm.Iallgather(buf, out)
        self._start("all_gather", req).wait()
        return _to_like(out, array) if buf is not array else out

    def reduce_scatter(self, array, op: str = "sum"):
        check_op(op, array.dtype, "reduce_scatter")
        buf = self._host(array, "reduce_scatter")
        if buf.ndim == 0 or buf.shape[0] % self.world_size:
            raise ValueError(f"reduce_scatter needs a leading axis divisible by the world size {self.world_size}, "
                             f"got shape {buf.shape}")
        out = np.empty((buf.shape[0] // self.world_size,) + buf.shape[1:], dtype=buf.dtype)
        req = self.comm.Ireduce_scatter_block(buf, out, op=self._ops[op])
        self._start("reduce_scatter", req).wait()
        if op == "avg":
            out /= self.world_size
        return _to_like(out, array) if buf is not array else out

    def barrier(self) -> None:
        self._start("barrier", self.comm.Ibarrier()).wait()

    def abort(self, errorcode: int = 1) -> None:
        """End every rank of the job (``MPI_Abort``): use after a DistributedTimeoutError."""
        self.comm.Abort(errorcode)

    def _check_root(self, root: int) -> None:
        if not 0 <= root < self.world_size:
            raise ValueError(f"broadcast root {root} out of range for world size {self.world_size}")


def _to_like(host: np.ndarray, like):
    """``host`` as an array of the same kind as ``like`` (CuPy when ``like`` is a CuPy array)."""
    if is_cupy_array(like):
        import cupy
        return cupy.asarray(host)
    return host
