"""``NCCLCommunicator``: GPU collectives over CuPy arrays with NCCL (``cupy.cuda.nccl``), one process per GPU.

Every collective runs on a dedicated CUDA stream (``self.stream``). Before enqueuing it, the communicator records
an event on the caller's current (compute) stream and makes the comm stream wait on it, so the collective sees
every kernel that wrote the array, while later compute kernels are free to overlap with it. ``all_reduce_async``
returns a handle whose ``wait()`` polls a completion event until the timeout; a dead or hung peer leaves the NCCL
kernel spinning forever, so on timeout we call ``ncclCommAbort`` (which frees the GPU) and raise
:class:`DistributedTimeoutError`.

Rendezvous: rank 0 creates the NCCL unique id and a bootstrap communicator (MPI under ``mpiexec``, or the
launcher's TCP store) broadcasts it: :meth:`NCCLCommunicator.from_bootstrap`. ``ncclCommInitRank`` itself blocks
until every rank joined; that step has no timeout (NCCL's own), so start all ranks together (mpiexec, launcher).
"""
from __future__ import annotations

import numpy as np

from .comm import Communicator, DEFAULT_TIMEOUT, DistributedError, Work, check_op, poll_until, timeout_error


def import_nccl():
    """Return ``(cupy, cupy.cuda.nccl)`` or raise a clear error."""
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            "the NCCL backend needs CuPy with NCCL: pip install 'tinygrad-llm[gpu]' (cupy-cuda12x) and NCCL "
            "(pip install nvidia-nccl-cu12, or the system's libnccl2); on CPUs use backend='mpi' or 'tcp'"
        ) from e
    if not getattr(nccl, "available", True):  # pragma: no cover
        raise ImportError("CuPy was built without NCCL support: install nvidia-nccl-cu12 and reinstall CuPy")
    return cupy, nccl


# ncclDataType_t / ncclRedOp_t values (stable since NCCL 2.0; ncclAvg needs NCCL >= 2.10)
_DTYPES = {"int8": 0, "uint8": 1, "int32": 2, "uint32": 3, "int64": 4, "uint64": 5,
           "float16": 6, "float32": 7, "float64": 8}
_OPS = {"sum": 0, "max": 2, "min": 3, "avg": 4}


class _NCCLWork(Work):
    """A collective enqueued on the comm stream; ``wait()`` polls its completion event (with the timeout)."""

    def __init__(self, comm: "NCCLCommunicator", event, op_name: str, keep, result):
        self.comm, self.event, self.op_name, self.keep, self.result = comm, event, op_name, keep, result

    def is_completed(self) -> bool:
        return bool(self.event.done)

    def wait(self):
        c = self.comm

        def on_timeout():
            err = timeout_error(self.op_name, c.rank, c.world_size, c.timeout, c.backend)
            c.abort()  # a spinning NCCL kernel never ends by itself
            return err
        poll_until(self.is_completed, c.timeout, on_timeout)
        # later work on the caller's stream must see the result (already true after the poll; cheap, explicit)
        c.cp.cuda.get_current_stream().wait_event(self.event)
        self.keep = None   # the arrays may be freed now: the comm stream is done with them
        return self.result


def _unique_id_values(raw) -> np.ndarray:
    """NCCL's 128-byte unique id as int8 values: CuPy returns it as bytes (CuPy 14) or as a tuple of ints (older)."""
    if isinstance(raw, (bytes, bytearray)):
        return np.frombuffer(bytes(raw), dtype=np.int8)
    return np.array(raw, dtype=np.int64).astype(np.int8)


def _unique_id_for(nccl, values):
    """The id in the form this CuPy's NcclCommunicator takes: the same type its get_unique_id returns."""
    if isinstance(nccl.get_unique_id(), (bytes, bytearray)):
        return np.asarray(values, dtype=np.int64).astype(np.int8).tobytes()
    return tuple(int(b) for b in values)


class NCCLCommunicator(Communicator):
    """NCCL over CuPy arrays; ``device`` is this rank's GPU index (default: ``LOCAL_RANK`` mod GPU count)."""

    backend = "nccl"

    def __init__(self, rank: int, world_size: int, unique_id, device: int | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT):
        super().__init__(rank, world_size, timeout)
        cp, nccl = import_nccl()
        self.cp, self.nccl = cp, nccl
        from autograd import backend
        backend.cupy_module()   # the engine recognises CuPy arrays only once it has imported CuPy itself
        if device is None:
            device = rank % cp.cuda.runtime.getDeviceCount()
        self.device = int(device)
        cp.cuda.Device(self.device).use()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self._avg_native = nccl.get_version() >= 21000
        self.comm = nccl.NcclCommunicator(world_size, _unique_id_for(nccl, unique_id), rank)
        self._aborted = False

    @classmethod
    def from_bootstrap(cls, bootstrap: Communicator, device: int | None = None,
                       timeout: float | None = DEFAULT_TIMEOUT) -> "NCCLCommunicator":
        """Rank 0 makes the unique id; ``bootstrap`` (MPI or TCP, on the host) broadcasts it to every rank."""
        _, nccl = import_nccl()
        uid = np.zeros(128, dtype=np.int8)
        if bootstrap.rank == 0:
            uid[:] = _unique_id_values(nccl.get_unique_id())
        bootstrap.broadcast(uid, root=0)
        comm = cls(bootstrap.rank, bootstrap.world_size, uid.tolist(), device=device, timeout=timeout)
        comm.bootstrap = bootstrap
        return comm

    # ------------------------------------------------------------------ plumbing
    def _check(self, array, op_name: str) -> int:
        if not isinstance(array, self.cp.ndarray):
            raise TypeError(f"NCCL {op_name} needs a CuPy array, got {type(array).__name__}")
        if array.device.id != self.device:
            raise ValueError(f"NCCL {op_name}: array is on cuda:{array.device.id} but this rank uses cuda:{self.device}")
        if not array.flags.c_contiguous:
            raise ValueError(f"NCCL {op_name} needs a C-contiguous array, got shape {array.shape} strides {array.strides}")
        if self._aborted:
            raise DistributedError(f"NCCL {op_name} on rank {self.rank}: the communicator was aborted after an error")
        try:
            return _DTYPES[array.dtype.name]
        except KeyError:
            raise TypeError(f"NCCL {op_name}: unsupported dtype {array.dtype}; use one of {sorted(_DTYPES)}") from None

    def _enqueue(self, op_name: str, launch, keep, result) -> _NCCLWork:
        cp = self.cp
        ready = cp.cuda.Event(disable_timing=True)
        ready.record(cp.cuda.get_current_stream())
        self.stream.wait_event(ready)     # the comm stream starts after the kernels that produced the array
        launch(self.stream.ptr)
        done = cp.cuda.Event(disable_timing=True)
        done.record(self.stream)
        return _NCCLWork(self, done, op_name, keep, result)

    # ------------------------------------------------------------------ collectives
    def all_reduce_async(self, array, op: str = "sum") -> Work:
        check_op(op, array.dtype)
        dt = self._check(array, "all_reduce")
        native = op != "avg" or self._avg_native
        nccl_op = _OPS[op] if native else _OPS["sum"]

        def launch(stream_ptr):
            self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, dt, nccl_op, stream_ptr)
            if not native:
                with self.stream:
                    array[...] /= self.world_size
        return self._enqueue("all_reduce", launch, array, array)

    def all_reduce(self, array, op: str = "sum"):
        return self.all_reduce_async(array, op).wait()

    def broadcast(self, array, root: int = 0):
        dt = self._check(array, "broadcast")
        if not 0 <= root < self.world_size:
            raise ValueError(f"broadcast root {root} out of range for world size {self.world_size}")
        return self._enqueue("broadcast",
                             lambda s: self.comm.broadcast(array.data.ptr, array.data.ptr, array.size, dt, root, s),
                             array, array).wait()

    def all_gather(self, array):
        dt = self._check(array, "all_gather")
        out = self.cp.empty((self.world_size,) + array.shape, dtype=array.dtype)
        return self._enqueue("all_gather",
                             lambda s: self.comm.allGather(array.data.ptr, out.data.ptr, array.size, dt, s),
                             (array, out), out).wait()

    def reduce_scatter(self, array, op: str = "sum"):
        check_op(op, array.dtype, "reduce_scatter")
        dt = self._check(array, "reduce_scatter")
        if array.ndim == 0 or array.shape[0] % self.world_size:
            raise ValueError(f"reduce_scatter needs a leading axis divisible by the world size {self.world_size}, "
                             f"got shape {array.shape}")
        out = self.cp.empty((array.shape[0] // self.world_size,) + array.shape[1:], dtype=array.dtype)
        native = op != "avg" or self._avg_native

        def launch(s):
            self.comm.reduceScatter(array.data.ptr, out.data.ptr, out.size, dt,
                                    _OPS[op] if native else _OPS["sum"], s)
            if not native:
                with self.stream:
                    out[...] /= self.world_size
        return self._enqueue("reduce_scatter", launch, (array, out), out).wait()

    def barrier(self) -> None:
        self.all_reduce(self.cp.zeros(1, dtype=self.cp.float32), "sum")

    # host arrays (metrics, the broadcast_object payload) go through the GPU: tiny, and needs no second backend
    def _host_broadcast(self, array: np.ndarray, root: int) -> None:
        if array.size == 0:
            return
        g = self.cp.asarray(array)
        self.broadcast(g, root)
        array[...] = g.get()

    def _host_all_reduce(self, array: np.ndarray, op: str) -> None:
        g = self.cp.asarray(array)
        self.all_reduce(g, op)
        array[...] = g.get()

    def abort(self) -> None:
        """``ncclCommAbort``: stops the spinning kernels of a collective that will never complete."""
        if not self._aborted:
            self._aborted = True
            try:
                self.comm.abort()
            except Exception:  # pragma: no cover - best effort during failure handling
                pass

    def close(self) -> None:
        if not self._aborted:
            self.stream.synchronize()
            self.comm.destroy()
            self._aborted = True
