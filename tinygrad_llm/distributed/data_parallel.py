"""``DataParallel``: replicate a model on every rank and average its gradients with bucketed all-reduces.

How a step goes (world size N, every rank runs the same code on its own shard of the batch)::

    dp = DataParallel(model, comm)        # rank 0's parameters are broadcast to every rank
    loss = F.cross_entropy(dp(x), y)      # forward: just the model
    loss.backward()                       # hooks pack finished grads into buckets and start all-reduces
    dp.finish()                           # wait for them, unpack: every p.grad is the average over ranks
    opt.step(); opt.zero_grad()

Buckets: parameters are grouped in *reverse* registration order (roughly the order backward finishes them) into
flat buffers of about ``bucket_mb`` MB, one dtype and device each. A leaf hook
(``Tensor.register_post_accumulate_grad_hook``) fires when a parameter's gradient is final; when every parameter
of a bucket is in, the bucket is packed and its all-reduce (average) starts asynchronously: NCCL on its own CUDA
stream (which waits on an event of the compute stream), MPI as ``Iallreduce``. So communication overlaps the rest
of backward. Buckets are launched strictly in index order, the same on every rank, because collectives must be
issued in the same order everywhere.

Parameters that got no gradient this step (unused on this rank) are packed as zeros at ``finish()``, so every rank
issues the same collectives; after ``finish()`` they hold the average over ranks (in which this rank counts as
zero), and ``None`` when no rank used them (a flag per parameter travels in the bucket), as in one process.

Gradient accumulation: ``with dp.no_sync(): loss.backward()`` for every micro-step but the last, whose backward
communicates once for the accumulated gradients.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from autograd import Tensor, amp, backend
from autograd.grad_mode import no_grad

from .comm import Communicator, Work
from .runtime import get_communicator


def unique_parameters(model_or_params) -> list[Tensor]:
    """The model's parameters (``model.parameters()`` or an iterable of Tensors), each once (tied weights)."""
    params = model_or_params.parameters() if hasattr(model_or_params, "parameters") else model_or_params
    out, seen = [], set()
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"DataParallel: expected Tensors as parameters, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class _Bucket:
    """Parameters that share one flat buffer for communication."""

    def __init__(self, dtype, device: str):
        self.dtype, self.device = dtype, device
        self.params: list[Tensor] = []
        self.offsets: list[int] = []
        self.numel = 0
        self.ready: set[int] = set()     # ids of params whose grad is final in this step
        self.buffer = None
        self.work: Work | None = None
        self.shard_grad = None           # sharded optimizer: this rank's chunk of the averaged gradients
        self.param_flags = None          # ... and, per parameter, whether any rank had a gradient

    def add(self, p: Tensor) -> None:
        self.params.append(p)
        self.offsets.append(self.numel)
        self.numel += p.size

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype).itemsize

    def pack(self, use_grad: bool):
        """A new flat buffer holding every param's data, or its grad (zeros for None) plus one flag per param.

        The flags (1 = this rank has a gradient) are reduced with the gradients, so after the all-reduce a
        parameter that no rank used keeps ``grad = None``, as in a single process (optimizers skip it).
        """
        xp = backend.get_xp(self.device)
        n_flags = len(self.params) if use_grad else 0
        missing = []
        with backend.device_scope(self.device):
            buf = xp.empty(self.numel + n_flags, dtype=self.dtype)
            for i, (p, off) in enumerate(zip(self.params, self.offsets)):
                if p.dtype != self.dtype or p.device != self.device:
                    raise RuntimeError(
                        f"DataParallel: parameter {getattr(p, 'name', None) or i} is now {p.dtype} on {p.device}, "
                        f"but was {self.dtype} on {self.device} when DataParallel was created; create "
                        "DataParallel after model.to(device, dtype)")
                src = p.data if not use_grad else (p.grad.data if p.grad is not None else None)
                if src is None:
                    buf[off:off + p.size] = 0
                    missing.append(i)
                else:
                    buf[off:off + p.size] = src.reshape(-1)
            if n_flags:
                # fills, not a host-to-device copy: a copy from host memory would wait for the GPU to catch up
                buf[self.numel:] = 1
                for i in missing:
                    buf[self.numel + i] = 0
        return buf

    def chunk(self, world_size: int) -> int:
        """The length of each rank's chunk under a sharded optimizer: ceil(numel / world_size) (the last ones are
        short or empty)."""
        return -(-self.numel // world_size)

    def owned_slices(self, rank: int, world_size: int):
        """The parts of the parameters that fall in ``rank``'s chunk: (slot, param, start, stop) with [start, stop)
        flat positions inside the parameter, and the position of start inside the chunk."""
        n = self.chunk(world_size)
        lo, hi = min(rank * n, self.numel), min((rank + 1) * n, self.numel)
        for slot, (p, off) in enumerate(zip(self.params, self.offsets)):
            a, e = max(lo, off), min(hi, off + p.size)
            if a < e:
                yield slot, p, a - off, e - off, a - lo

    def reduce_scatter_grads(self, comm: Communicator) -> None:
        """Average the gradients over ranks, keeping only this rank's chunk (``shard_grad``) and the per-parameter
        flags; the parameters' own ``.grad`` are dropped (the full averaged gradient exists on no rank)."""
        flat = self.pack(use_grad=True)
        xp = backend.get_xp(self.device)
        with backend.device_scope(self.device):
            grads = xp.zeros(self.chunk(comm.world_size) * comm.world_size, dtype=self.dtype)
            grads[:self.numel] = flat[:self.numel]
            flags = flat[self.numel:].copy()
        self.shard_grad = comm.reduce_scatter(grads, "avg")
        comm.all_reduce(flags, "sum")
        self.param_flags = backend.to_numpy(flags) != 0
        for p in self.params:
            p.grad = None

    def gather_data(self, comm: Communicator) -> None:
        """After each rank updated its chunk of the parameters in place: give every rank every chunk."""
        xp = backend.get_xp(self.device)
        with backend.device_scope(self.device):
            mine = xp.zeros(self.chunk(comm.world_size), dtype=self.dtype)
            for _, p, start, stop, pos in self.owned_slices(comm.rank, comm.world_size):
                mine[pos:pos + stop - start] = p.data.reshape(-1)[start:stop]
            gathered = comm.all_gather(mine).reshape(-1)
        self.unpack_data(gathered)
        self.shard_grad = None

    def unpack_grads(self, buf) -> None:
        """Every param's ``.grad`` becomes a view into the reduced buffer (no copy); None where no rank had one."""
        flags = backend.to_numpy(buf[self.numel:])
        for p, off, used in zip(self.params, self.offsets, flags):
            p.grad = Tensor(buf[off:off + p.size].reshape(p.shape)) if used != 0 else None

    def unpack_data(self, buf) -> None:
        """Write broadcast values into the params' arrays in place (optimizers keep their references)."""
        for p, off in zip(self.params, self.offsets):
            p.data[...] = buf[off:off + p.size].reshape(p.shape)
            amp.refresh_shadows(p)          # its low-precision copies (autocast) follow the new values


class DataParallel:
    """Wrap ``model`` for data-parallel training over ``comm`` (default: the process's communicator)."""

    def __init__(self, model, comm: Communicator | None = None, bucket_mb: float = 25.0,
                 broadcast_parameters: bool = True, overlap: bool = True, shard_optimizer: bool = False):
        self.module = model
        self.comm = comm if comm is not None else get_communicator()
        #: ZeRO-1: finish() reduce-scatters, a ShardedOptimizer (distributed/zero.py) updates each rank's shard
        self.shard_optimizer = shard_optimizer
        self.bucket_bytes = max(1, int(bucket_mb * 2 ** 20))
        self.overlap = overlap
        self.params = unique_parameters(model)
        self._sync = True
        self._next_launch = 0          # index of the next bucket to start (buckets start in order)
        self.buckets = self._build_buckets([p for p in self.params if p.requires_grad])
        self._where = {id(p): b for b in self.buckets for p in b.params}
        self._removers = []
        if self.comm.world_size > 1:
            for p in self.params:
                if p.requires_grad:
                    self._removers.append(p.register_post_accumulate_grad_hook(self._on_grad_ready))
            if broadcast_parameters:
                self.broadcast_parameters()

    # ------------------------------------------------------------------ the module's face
    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __getattr__(self, name):
        # only called for names DataParallel itself lacks: parameters(), state_dict(), train(), eval(), config ...
        if name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    def parameters(self) -> list[Tensor]:
        return list(self.params)

    # ------------------------------------------------------------------ set-up
    def _build_buckets(self, params: list[Tensor]) -> list[_Bucket]:
        buckets: list[_Bucket] = []
        for p in reversed(params):           # backward finishes the last layers first
            b = buckets[-1] if buckets else None
            if (b is None or b.dtype != p.dtype or b.device != p.device
                    or (b.numel and b.nbytes + p.size * p.dtype.itemsize > self.bucket_bytes)):
                b = _Bucket(p.dtype, p.device)
                buckets.append(b)
            b.add(p)
        return buckets

    def broadcast_parameters(self, root: int = 0) -> None:
        """Copy rank ``root``'s parameter values to every rank (one flat broadcast per bucket)."""
        if self.comm.world_size == 1:
            return
        others = [p for p in self.params if not p.requires_grad]
        for b in self.buckets + self._build_buckets(others):
            buf = b.pack(use_grad=False)
            self.comm.broadcast(buf, root)
            b.unpack_data(buf)

    def remove_hooks(self) -> None:
        for r in self._removers:
            r()
        self._removers = []

    # ------------------------------------------------------------------ during backward
    @contextmanager
    def no_sync(self):
        """Backward passes inside do not communicate (gradient accumulation); the next one outside does."""
        prev, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = prev

    def _on_grad_ready(self, p: Tensor) -> None:
        if not self._sync or self.shard_optimizer:     # sharded: reduce-scattered at finish()
            return
        b = self._where.get(id(p))
        if b is None:
            return
        if b.work is not None or id(p) in b.ready:
            raise RuntimeError(
                "DataParallel: a second backward reached a parameter whose gradient is already being all-reduced; "
                "call dp.finish() after each backward that should communicate, and wrap the earlier micro-steps "
                "of gradient accumulation in `with dp.no_sync():`")
        b.ready.add(id(p))
        if self.overlap:
            self._launch_in_order(force=False)
            if self.comm.needs_progress:
                self._progress()

    def _launch(self, b: _Bucket) -> None:
        b.buffer = b.pack(use_grad=True)
        b.work = self.comm.all_reduce_async(b.buffer, "avg")

    def _launch_in_order(self, force: bool) -> None:
        while self._next_launch < len(self.buckets):
            b = self.buckets[self._next_launch]
            if not force and len(b.ready) < len(b.params):
                return
            self._launch(b)
            self._next_launch += 1

    def _progress(self) -> None:
        """Let MPI advance pending requests (MPICH progresses non-blocking collectives only inside MPI calls)."""
        for b in self.buckets[:self._next_launch]:
            if b.work is not None:
                b.work.is_completed()

    # ------------------------------------------------------------------ after backward
    def finish(self) -> None:
        """Wait for every bucket's all-reduce and unpack: each ``p.grad`` is then the average over ranks.

        Call it after the backward of the last micro-step and before clipping / the optimizer step. Buckets that
        no hook completed (unused parameters) are packed and reduced now, so all ranks issue the same collectives.
        """
        if not self._sync:
            return
        if self.shard_optimizer:
            with no_grad():
                for b in self.buckets:
                    b.reduce_scatter_grads(self.comm)
            return
        if self.comm.world_size == 1:
            return
        try:
            self._launch_in_order(force=True)
            with no_grad():
                for b in self.buckets:
                    b.work.wait()
                    b.unpack_grads(b.buffer)
        finally:
            for b in self.buckets:
                b.ready.clear()
                b.work = None
                b.buffer = None
            self._next_launch = 0

    sync_gradients = finish
