"""The communicator interface every backend implements, plus ``SingleProcess`` (world of one).

A communicator joins ``world_size`` processes ("ranks"). Collectives work on arrays in place where they can
(``all_reduce``, ``broadcast``) and every rank must call the same collectives in the same order with arrays of the
same shape and dtype, as with MPI and NCCL.

Timeouts: each communicator has ``timeout`` (seconds, ``None`` = wait forever). A collective that has not
completed by then raises :class:`DistributedTimeoutError` naming the op and the rank, instead of hanging forever
when a peer died or hangs. After such an error the communicator is unusable: the pending operation can not be
cancelled. Call ``comm.abort()`` (MPI: ``MPI.COMM_WORLD.Abort``, which makes ``mpiexec`` end every rank; NCCL:
``ncclCommAbort``) or simply let the exception end the process.
"""
from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

from autograd.dtypes import is_float

OPS = ("sum", "avg", "max", "min")
#: default seconds before a collective gives up (override per communicator or with TINYGRAD_LLM_DIST_TIMEOUT)
DEFAULT_TIMEOUT = float(os.environ.get("TINYGRAD_LLM_DIST_TIMEOUT", "600"))


class DistributedError(RuntimeError):
    """A distributed operation failed (peer closed its connection, bad arguments, missing backend)."""


class DistributedTimeoutError(DistributedError):
    """A collective did not complete within the communicator's timeout: a peer rank probably died or hangs."""


def timeout_error(op: str, rank: int, world_size: int, timeout: float, backend: str) -> DistributedTimeoutError:
    return DistributedTimeoutError(
        f"{backend} {op} on rank {rank} (world size {world_size}) did not complete within {timeout:g} s: "
        f"another rank probably died or hangs. The communicator is now unusable; call comm.abort() or exit "
        f"(under mpiexec, MPI.COMM_WORLD.Abort ends every rank), then resume from the last checkpoint"
    )


def check_op(op: str, dtype=None, name: str = "all_reduce") -> str:
    """``op`` when it is a known reduction; with ``dtype``, 'avg' also needs a floating dtype (bfloat16 included)."""
    if op not in OPS:
        raise ValueError(f"unknown reduction op {op!r}: expected one of {OPS}")
    if dtype is not None and op == "avg" and not is_float(dtype):
        raise TypeError(f"{name} op 'avg' needs a floating-point array, got {np.dtype(dtype)}")
    return op


def poll_until(done: Callable[[], bool], timeout: float | None, on_timeout: Callable[[], Exception]) -> None:
    """Call ``done()`` until it is True; raise ``on_timeout()`` once ``timeout`` seconds have passed.

    Spins for the first ~0.2 ms (collectives of small arrays finish within that), then sleeps in steps that grow
    to 1 ms so a long wait does not take a core away from the other ranks on the same machine.
    """
    if done():
        return
    start = time.perf_counter()
    deadline = None if timeout is None else start + timeout
    sleep = 0.0
    while not done():
        now = time.perf_counter()
        if deadline is not None and now > deadline:
            raise on_timeout()
        if now - start > 2e-4:
            sleep = min(1e-3, sleep * 2 if sleep else 2e-5)
            time.sleep(sleep)


class Work:
    """The handle of an asynchronous collective. ``wait()`` blocks (up to the timeout) and finishes it."""

    def is_completed(self) -> bool:
        return True

    def wait(self) -> Any:
        return None


class DoneWork(Work):
    """A collective that already completed (the synchronous fallback); ``wait()`` returns its result."""

    def __init__(self, result: Any = None):
        self.result = result

    def wait(self) -> Any:
        return self.result


class Communicator(ABC):
    """``rank``, ``world_size``, ``timeout``; collectives on NumPy (MPI, TCP) or CuPy (NCCL) arrays."""

    backend = "abstract"
    #: pending non-blocking collectives advance only while the library is called (MPI without a progress
    #: thread): DataParallel then polls them from its hooks. NCCL and the synchronous backends need no help.
    needs_progress = False

    def __init__(self, rank: int, world_size: int, timeout: float | None = DEFAULT_TIMEOUT):
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.timeout = timeout

    # ------------------------------------------------------------------ collectives
    @abstractmethod
    def all_reduce(self, array, op: str = "sum"):
        """Reduce ``array`` over all ranks, in place; returns the same array. ``op``: sum, avg, max, min."""

    def all_reduce_async(self, array, op: str = "sum") -> Work:
        """Start an all-reduce of ``array`` in place; the result is valid after ``work.wait()``."""
        self.all_reduce(array, op)
        return DoneWork(array)

    @abstractmethod
    def broadcast(self, array, root: int = 0):
        """Overwrite ``array`` on every rank with root's values, in place; returns the same array."""

    @abstractmethod
    def all_gather(self, array):
        """Every rank's ``array`` (all the same shape S) stacked: a new array of shape (world_size, *S)."""

    @abstractmethod
    def reduce_scatter(self, array, op: str = "sum"):
        """Reduce ``array`` (shape (world_size * n, ...)) over ranks; returns this rank's block (n, ...)."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every rank reached this call."""

    def abort(self) -> None:
        """Tear everything down after a failure (default: nothing to do)."""

    def close(self) -> None:
        """Release resources at the end of a run."""

    # ------------------------------------------------------------------ built on the collectives
    def broadcast_object(self, obj: Any = None, root: int = 0) -> Any:
        """Send a JSON-serialisable object from ``root`` to every rank (length first, then UTF-8 bytes; no pickle)."""
        payload = json.dumps(obj).encode() if self.rank == root else b""
        n = np.array([len(payload)], dtype=np.int64)
        self._host_broadcast(n, root)
        buf = np.frombuffer(payload, dtype=np.uint8).copy() if self.rank == root else np.empty(int(n[0]), np.uint8)
        self._host_broadcast(buf, root)
        return json.loads(buf.tobytes().decode())

    def _host_broadcast(self, array: np.ndarray, root: int) -> None:
        """Broadcast a NumPy array (NCCL overrides this to go through its bootstrap communicator)."""
        self.broadcast(array, root)

    def all_reduce_scalars(self, values, op: str = "sum") -> list[float]:
        """All-reduce a short list of Python numbers (metrics); returns floats."""
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        self._host_all_reduce(arr, op)
        return [float(v) for v in arr]

    def _host_all_reduce(self, array: np.ndarray, op: str) -> None:
        self.all_reduce(array, op)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, timeout={self.timeout})"


class SingleProcess(Communicator):
    """World of one: every collective is the identity, so the same code runs without MPI or NCCL."""

    backend = "none"

    def __init__(self, timeout: float | None = DEFAULT_TIMEOUT):
        super().__init__(0, 1, timeout)

    def all_reduce(self, array, op: str = "sum"):
        check_op(op, array.dtype)
        return array

    def broadcast(self, array, root: int = 0):
        if root != 0:
            raise ValueError(f"broadcast root {root} out of range for world size 1")
        return array

    def all_gather(self, array):
        return array[None].copy()

    def reduce_scatter(self, array, op: str = "sum"):
        check_op(op, array.dtype, "reduce_scatter")
        return array.copy()

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: Any = None, root: int = 0) -> Any:
        return obj
