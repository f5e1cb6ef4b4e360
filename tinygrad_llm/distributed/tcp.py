"""``TCPCommunicator``: CPU collectives over localhost sockets, for ranks started by our launcher without MPI.

Topology: a star. Rank 0 listens on ``MASTER_ADDR:MASTER_PORT``; every other rank connects to it. A reduction
sends every rank's array to rank 0, which reduces in rank order (so the result is deterministic) and sends the
result back. That is O(world_size) traffic through rank 0: fine for CPU training on one machine and for sharing
the NCCL unique id (the launcher's rendezvous); GPUs use NCCL for the gradients.

Each message carries a header (op name, byte count) so ranks that call different collectives get a clear error
instead of garbage. A peer that closes its socket (it died) raises :class:`DistributedPeerError`; one that stays
silent past the timeout raises :class:`DistributedTimeoutError`.
"""
from __future__ import annotations

import socket
import struct
import time

import numpy as np

from autograd.backend import is_cupy_array

from .comm import (Communicator, DEFAULT_TIMEOUT, DistributedError, DistributedTimeoutError, check_op,
                   timeout_error)

_HEADER = struct.Struct("!16sQ")


class DistributedPeerError(DistributedError):
    """A peer rank closed its connection in the middle of a collective (it probably died)."""


class TCPCommunicator(Communicator):
    backend = "tcp"

    def __init__(self, rank: int, world_size: int, addr: str = "127.0.0.1", port: int = 29500,
                 timeout: float | None = DEFAULT_TIMEOUT, connect_timeout: float = 60.0):
        super().__init__(rank, world_size, timeout)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.peers: dict[int, socket.socket] = {}   # rank 0: every other rank; others: {0: root}
        self._server = None
        deadline = time.monotonic() + connect_timeout
        if world_size == 1:
            return
        if rank == 0:
            self._server = socket.create_server((addr, port), reuse_port=False)
            self._server.settimeout(max(0.1, deadline - time.monotonic()))
            while len(self.peers) < world_size - 1:
                try:
                    conn, _ = self._server.accept()
                except socket.timeout:
                    raise DistributedTimeoutError(
                        f"tcp rendezvous on rank 0: only {len(self.peers) + 1} of {world_size} ranks connected to "
                        f"{addr}:{port} within {connect_timeout:g} s") from None
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = struct.unpack("!Q", self._recv_exact(conn, 8, "rendezvous", None))[0]
                self.peers[int(peer)] = conn
        else:
            while True:
                try:
                    conn = socket.create_connection((addr, port), timeout=5.0)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise DistributedTimeoutError(
                            f"tcp rendezvous on rank {rank}: could not reach rank 0 at {addr}:{port} within "
                            f"{connect_timeout:g} s") from None
                    time.sleep(0.05)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(struct.pack("!Q", rank))
            self.peers[0] = conn

    # ------------------------------------------------------------------ messages
    def _recv_exact(self, conn: socket.socket, n: int, op: str, peer: int | None, deadline=None) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise timeout_error(op, self.rank, self.world_size, self.timeout, self.backend)
                conn.settimeout(left)
            else:
                conn.settimeout(None)
            try:
                k = conn.recv_into(view[got:], n - got)
            except socket.timeout:
                raise timeout_error(op, self.rank, self.world_size, self.timeout, self.backend) from None
            except OSError as e:
                raise DistributedPeerError(f"tcp {op} on rank {self.rank}: connection to rank {peer} failed ({e}); "
                                           "that rank probably died") from None
            if k == 0:
                raise DistributedPeerError(f"tcp {op} on rank {self.rank}: rank {peer} closed its connection "
                                           "(it probably died or exited early)")
            got += k
        return bytes(buf)

    def _send(self, peer: int, op: str, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array)
        try:
            self.peers[peer].sendall(_HEADER.pack(op.encode()[:16], data.nbytes))
            self.peers[peer].sendall(data.view(np.uint8).reshape(-1))   # bytes of any dtype (bfloat16 has no buffer code)
        except OSError as e:
            raise DistributedPeerError(f"tcp {op} on rank {self.rank}: sending to rank {peer} failed ({e}); "
                                       "that rank probably died") from None

    def _recv(self, peer: int, op: str, shape, dtype, deadline) -> np.ndarray:
        conn = self.peers[peer]
        tag, nbytes = _HEADER.unpack(self._recv_exact(conn, _HEADER.size, op, peer, deadline))
        tag = tag.rstrip(b"\0").decode()
        expect = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if tag != op[:16] or nbytes != expect:
            raise DistributedError(f"tcp {op} on rank {self.rank}: rank {peer} called {tag} with {nbytes} bytes, "
                                   f"expected {op} with {expect} bytes: ranks must call the same collectives in "
                                   "the same order with the same shapes")
        raw = self._recv_exact(conn, nbytes, op, peer, deadline)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()

    def _deadline(self):
        return None if self.timeout is None else time.monotonic() + self.timeout

    @staticmethod
    def _host(array, op: str) -> np.ndarray:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"tcp {op} needs a NumPy or CuPy array, got {type(array).__name__}")
        return array

    # ------------------------------------------------------------------ collectives
    # CuPy arrays are staged through host memory: slow, but it lets several ranks share one GPU (NCCL refuses
    # two ranks on the same GPU), which exercises multi-rank code paths on a machine with few GPUs.
    def all_reduce(self, array, op: str = "sum"):
        if is_cupy_array(array):
            host = array.get()
            self.all_reduce(host, op)
            array[...] = _like(host, array)
            return array
        a = self._host(array, "all_reduce")
        check_op(op, a.dtype)
        if self.world_size == 1:
            return array
        deadline = self._deadline()
        if self.rank == 0:
            acc = a.copy()
            for r in range(1, self.world_size):
                other = self._recv(r, "all_reduce", a.shape, a.dtype, deadline)
                if op in ("sum", "avg"):
                    acc += other
                elif op == "max":
                    np.maximum(acc, other, out=acc)
                else:
                    np.minimum(acc, other, out=acc)
            if op == "avg":
                acc /= self.world_size
            for r in range(1, self.world_size):
                self._send(r, "all_reduce", acc)
            a[...] = acc
        else:
            self._send(0, "all_reduce", a)
            a[...] = self._recv(0, "all_reduce", a.shape, a.dtype, deadline)
        return array

    def broadcast(self, array, root: int = 0):
        if is_cupy_array(array):
            host = array.get()
            self.broadcast(host, root)
            array[...] = _like(host, array)
            return array
        a = self._host(array, "broadcast")
        if not 0 <= root < self.world_size:
            raise ValueError(f"broadcast root {root} out of range for world size {self.world_size}")
        if self.world_size == 1:
            return array
        deadline = self._deadline()
        # relay through rank 0 when the root is another rank
        if root != 0:
            if self.rank == root:
                self._send(0, "broadcast", a)
            elif self.rank == 0:
                a[...] = self._recv(root, "broadcast", a.shape, a.dtype, deadline)
        if self.rank == 0:
            for r in range(1, self.world_size):
                if r != root:
                    self._send(r, "broadcast", a)
        elif self.rank != root:
            a[...] = self._recv(0, "broadcast", a.shape, a.dtype, deadline)
        return array

    def all_gather(self, array):
        if is_cupy_array(array):
            return _like(self.all_gather(array.get()), array)
        a = self._host(array, "all_gather")
        out = np.empty((self.world_size,) + a.shape, dtype=a.dtype)
        deadline = self._deadline()
        if self.rank == 0:
            out[0] = a
            for r in range(1, self.world_size):
                out[r] = self._recv(r, "all_gather", a.shape, a.dtype, deadline)
            for r in range(1, self.world_size):
                self._send(r, "all_gather", out)
        else:
            self._send(0, "all_gather", a)
            out[...] = self._recv(0, "all_gather", out.shape, out.dtype, deadline)
        return out

    def reduce_scatter(self, array, op: str = "sum"):
        if is_cupy_array(array):
            return _like(self.reduce_scatter(array.get(), op), array)
        a = self._host(array, "reduce_scatter")
        if a.ndim == 0 or a.shape[0] % self.world_size:
            raise ValueError(f"reduce_scatter needs a leading axis divisible by the world size {self.world_size}, "
                             f"got shape {a.shape}")
        full = self.all_reduce(a.copy(), op)
        n = a.shape[0] // self.world_size
        return full[self.rank * n:(self.rank + 1) * n].copy()

    def barrier(self) -> None:
        self.all_reduce(np.zeros(1), "sum")

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        for s in self.peers.values():
            try:
                s.close()
            except OSError:
                pass
        self.peers.clear()
        if self._server is not None:
            self._server.close()
            self._server = None


def _like(host: np.ndarray, like):
    """``host`` on ``like``'s GPU."""
    import cupy
    with like.device:
        return cupy.asarray(host)
