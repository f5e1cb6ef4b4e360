"""Fake cupy.cuda.nccl: collectives over TCP, run on the stream's worker thread, on raw pointers."""
import ctypes
import os
import socket

import numpy as np

available = True
_DT = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64, 5: np.uint64, 6: np.float16,
       7: np.float32, 8: np.float64}
_OP = {0: "sum", 2: "max", 3: "min", 4: "avg"}


def get_version():
    return 21805


def get_unique_id():
    with socket.socket() as s:          # the "id" carries the port of rank 0's fake NCCL hub
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return tuple(int(b) - 256 if b > 127 else int(b) for b in port.to_bytes(2, "little")) + (0,) * 126


def _view(ptr, count, dtype):
    dt = np.dtype(_DT[dtype])
    buf = (ctypes.c_char * (count * dt.itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dt)


class NcclCommunicator:
    def __init__(self, ndev, commId, rank):
        from tinygrad_llm.distributed.tcp import TCPCommunicator
        assert len(commId) == 128
        port = int.from_bytes(bytes(b & 0xFF for b in commId[:2]), "little")
        self.tcp = TCPCommunicator(rank, ndev, "127.0.0.1", port, timeout=None)
        self.aborted = False

    def _on(self, stream_ptr, fn):
        from . import _streams, get_current_stream
        (_streams.get(stream_ptr) or get_current_stream()).launch(fn)

    def allReduce(self, send, recv, count, dtype, op, stream):
        def run():
            a = _view(send, count, dtype).copy()
            self.tcp.all_reduce(a, _OP[op])
            _view(recv, count, dtype)[...] = a
        self._on(stream, run)

    def broadcast(self, send, recv, count, dtype, root, stream):
        def run():
            a = _view(send, count, dtype).copy()
            self.tcp.broadcast(a, root)
            _view(recv, count, dtype)[...] = a
        self._on(stream, run)

    def allGather(self, send, recv, count, dtype, stream):
        def run():
            g = self.tcp.all_gather(_view(send, count, dtype).copy())
            _view(recv, count * self.tcp.world_size, dtype)[...] = g.reshape(-1)
        self._on(stream, run)

    def reduceScatter(self, send, recv, recvcount, dtype, op, stream):
        def run():
            a = _view(send, recvcount * self.tcp.world_size, dtype).copy()
            _view(recv, recvcount, dtype)[...] = self.tcp.reduce_scatter(a, _OP[op])
        self._on(stream, run)

    def abort(self):
        self.aborted = True
        self.tcp.close()

    def destroy(self):
        self.tcp.close()
