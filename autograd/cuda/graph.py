"""CUDA graphs: record a region of GPU work once, replay it with one launch.

    import autograd as ag
    step = ag.cuda.graph(fn, x_example, y_example)   # warm-up call, then capture of fn on static input buffers
    out = step(x, y)                                 # copies x, y into the static buffers, one graph launch

    g = ag.cuda.CUDAGraph()                          # the lower level: capture any code, replay it
    with g.capture():
        ...                                          # CuPy work recorded on g's stream, allocated in g's pool
    g.replay()

Eager Python launches each kernel from the host (~5-30 us each); a GPT step is thousands of launches, so small and
medium models wait on the host. A replay issues the whole recorded region in one call.

Rules inside a captured region (what CUDA stream capture allows):
- Shapes, dtypes and every host-side decision are frozen at capture: the replay runs the same kernels on the same
  addresses. Inputs are read from the static buffers the graph captured (``graph`` copies each call's arguments
  there); a call with another shape or dtype raises ``GraphCaptureError`` naming the input.
- No host synchronisation: ``.item()``, ``float()``/``bool()`` of a GPU value, ``.get()``, device-to-host copies,
  ``synchronize``. Values the host wants (a loss) stay on the device and are read after the replay.
- Host numbers passed to kernels are baked in: values that change per step (learning rate, step count, loss scale,
  the dropout generator's counter) must live in device memory that the region reads.
- Every allocation comes from the graph's private memory pool (kept alive with the graph: the replay writes to
  those addresses); an allocation on another GPU raises ``GraphCaptureError``. Arrays created before capture must
  outlive the graph when the region reads them.
- Caches that kernels fill on first use (compiled modules, handles, lookup tables) must be filled before capture:
  ``graph`` runs the function once eagerly (``warmup``) for that.
Any CUDA or CuPy error raised while capturing is re-raised as ``GraphCaptureError`` with the cause named (host
sync, CuPy cuBLAS call, work on another stream) and the original error chained.

Eager fallback: without CuPy or a GPU, with NumPy inputs, with ``enabled=False``, or with the environment variable
``TINYGRAD_LLM_CUDA_GRAPHS=0``, ``graph(fn, ...)`` returns a callable that simply runs ``fn`` each call (same
interface, same results); ``GraphedCallable.graphed`` says which one you got.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable

import numpy as np

from ..backend import cupy_module, is_cupy_array

__all__ = ["CUDAGraph", "GraphedCallable", "GraphCaptureError", "graph", "is_capturing", "graphs_enabled"]


class GraphCaptureError(RuntimeError):
    """Something in a region being captured (or a replay's inputs) cannot be recorded into a CUDA graph."""


_tls = threading.local()

# CUDA runtime error codes of stream capture (driver_types.h), and what usually causes them in Python code
_CAPTURE_CAUSES = {
    900: "a host synchronisation inside the captured region (.item(), float()/int()/bool() of a GPU value, "
         ".get()/to_numpy, a device-to-host or pageable host-to-device copy, or a stream/device synchronize)",
    901: "the capture was invalidated by an earlier call that is not allowed while capturing",
    902: "two captures were merged (an event recorded in one capture was waited on in another)",
    903: "a capture dependency on another stream was left unjoined",
    904: "work forked onto another stream was not joined back into the capturing stream",
    905: "work on another stream depended on the capturing stream (cross-stream isolation)",
    906: "work was issued on the legacy default stream while capturing (use the capturing stream)",
    907: "an event recorded during capture was queried or synchronised",
    908: "the capture was continued from another thread",
}


def graphs_enabled() -> bool:
    """False when ``TINYGRAD_LLM_CUDA_GRAPHS=0`` (every graph runs eagerly), else True."""
    return os.environ.get("TINYGRAD_LLM_CUDA_GRAPHS", "").strip().lower() not in ("0", "false", "off", "no")


def is_capturing() -> bool:
    """True while this thread is inside ``CUDAGraph.capture()``: code with a host-synchronising fast path (a count
    read back, a check) must keep its values on the device then."""
    return getattr(_tls, "graph", None) is not None


def _explain(err: BaseException, where: str) -> GraphCaptureError:
    status = getattr(err, "status", None)
    text = str(err)
    if isinstance(err, NotImplementedError) and "cuBLAS" in text:
        cause = ("a call through CuPy's cuBLAS wrappers (cupy.matmul/dot/linalg on floats); matrix products inside "
                 "a graph must go through autograd.cuda.matmul (its own cuBLAS binding)")
    elif status in _CAPTURE_CAUSES:
        cause = _CAPTURE_CAUSES[status]
    elif "capturing" in text or "capture" in text:
        cause = _CAPTURE_CAUSES[900]
    else:
        cause = f"{type(err).__name__}: {text}"
    return GraphCaptureError(f"{where}: cannot capture this region into a CUDA graph: {cause} "
                             f"(original error: {type(err).__name__}: {text})")


class CUDAGraph:
    """One captured region of GPU work, its private memory pool (alive as long as this object) and its stream.

    ``capture()`` records the code run inside it (nothing executes); ``replay()`` launches the recording on
    CuPy's current stream, so it is ordered after earlier work (input copies) and before later reads of its
    outputs. Capture again to record something else; the old recording and its memory are dropped."""

    def __init__(self, device: int | None = None, name: str = "graph"):
        cp = cupy_module()
        if cp is None:
            raise GraphCaptureError("CUDAGraph needs CuPy and an NVIDIA GPU (use autograd.cuda.graph(..., "
                                    "enabled=False) or the eager code path on the CPU)")
        self._cp = cp
        self.device_id = cp.cuda.runtime.getDevice() if device is None else int(device)
        self.name = name
        with cp.cuda.Device(self.device_id):
            self.pool = cp.cuda.MemoryPool()
            self.stream = cp.cuda.Stream(non_blocking=True)
        self.graph = None
        self.allocated_bytes = 0       # requested from the private pool during the last capture

    def _malloc(self, size: int):
        dev = self._cp.cuda.runtime.getDevice()
        if dev != self.device_id:
            raise GraphCaptureError(f"{self.name}: an allocation on cuda:{dev} while capturing a graph of "
                                    f"cuda:{self.device_id}: memory from another device's pool cannot belong to "
                                    "this graph (capture one graph per GPU)")
        self.allocated_bytes += size
        return self.pool.malloc(size)

    @contextlib.contextmanager
    def capture(self):
        """Record the GPU work of the ``with`` body (on this graph's stream, allocations from its pool)."""
        cp = self._cp
        if is_capturing():
            raise GraphCaptureError(f"{self.name}: graphs cannot be captured inside another capture "
                                    f"({_tls.graph.name} is being captured)")
        self.graph = None
        self.allocated_bytes = 0
        with cp.cuda.Device(self.device_id):
            # the capture stream does not wait on the current stream by itself: let earlier eager work finish
            cp.cuda.get_current_stream().synchronize()
            with self.stream, cp.cuda.using_allocator(self._malloc):
                self.stream.begin_capture()
                _tls.graph = self
                failed = None
                try:
                    yield self
                except GraphCaptureError:
                    failed = True
                    raise
                except Exception as e:
                    failed = True
                    raise _explain(e, self.name) from e
                finally:
                    _tls.graph = None
                    try:
                        g = self.stream.end_capture()
                    except Exception as e:
                        if not failed:
                            raise _explain(e, self.name) from e
                        g = None
                    if not failed:
                        self.graph = g
            if self.graph is not None and hasattr(self.graph, "upload"):
                self.graph.upload(cp.cuda.get_current_stream())   # instantiate now, not at the first replay

    def replay(self) -> None:
        """Launch the recorded work on CuPy's current stream (asynchronous: read outputs afterwards)."""
        if self.graph is None:
            raise GraphCaptureError(f"{self.name}: nothing captured yet (use `with graph.capture(): ...`)")
        cp = self._cp
        with cp.cuda.Device(self.device_id):
            self.graph.launch(cp.cuda.get_current_stream())


def _array_of(a):
    return a.data if hasattr(a, "data") and hasattr(a, "requires_grad") else a


class GraphedCallable:
    """``fn`` captured on static copies of its example inputs (see ``graph``); calling it copies the arguments
    into those buffers and replays. Outputs are the same arrays/Tensors every call, overwritten by the next one.
    ``graphed`` is False for the eager fallback, which just calls ``fn``."""

    def __init__(self, fn: Callable, example_args: tuple, warmup: int = 1, enabled: bool | None = None,
                 name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "graph")
        arrays = [_array_of(a) for a in example_args]
        on_gpu = bool(arrays) and all(is_cupy_array(a) for a in arrays)
        want = graphs_enabled() if enabled is None else bool(enabled)
        self.graphed = bool(want and on_gpu and cupy_module() is not None)
        self.outputs = None
        if not self.graphed:
            return
        from ..tensor import Tensor
        cp = cupy_module()
        self._specs = [(tuple(a.shape), a.dtype) for a in arrays]
        self._static = [cp.array(a, copy=True) for a in arrays]          # in the default pool, alive with self
        self._args = tuple(Tensor(s) if isinstance(a, Tensor) else s for a, s in zip(example_args, self._static))
        for _ in range(max(0, int(warmup))):
            fn(*self._args)
        self.graph = CUDAGraph(device=arrays[0].device.id, name=self.name)
        with self.graph.capture():
            self.outputs = fn(*self._args)

    def __call__(self, *args):
        if not self.graphed:
            return self.fn(*args)
        if len(args) != len(self._static):
            raise GraphCaptureError(f"{self.name}: captured with {len(self._static)} inputs, called with {len(args)}")
        for i, (a, s, (shape, dtype)) in enumerate(zip(args, self._static, self._specs)):
            a = _array_of(a)
            if tuple(a.shape) != shape or np.dtype(a.dtype) != dtype:
                raise GraphCaptureError(f"{self.name}: input {i} was {shape} {dtype} at capture, got "
                                        f"{tuple(a.shape)} {np.dtype(a.dtype)}: a graph replays fixed shapes "
                                        "(capture another graph for this shape)")
            copy_into(s, a)
        self.graph.replay()
        return self.outputs


def copy_into(static, a) -> None:
    """Copy array ``a`` (NumPy or CuPy, same shape) into the device buffer ``static`` on the current stream."""
    if a is static:
        return
    if is_cupy_array(a):
        static[...] = a
    else:
        static.set(np.ascontiguousarray(a, dtype=static.dtype), stream=cupy_module().cuda.get_current_stream())


def graph(fn: Callable, *example_args: Any, warmup: int = 1, enabled: bool | None = None,
          name: str | None = None) -> GraphedCallable:
    """Capture ``fn(*example_args)`` as a CUDA graph on static copies of the arguments (CuPy arrays or Tensors
    wrapping them); returns a ``GraphedCallable``. ``warmup`` eager calls run first (they fill the caches that
    kernels set up on first use; they execute ``fn`` for real, so ``fn`` should be repeatable). Eager fallback
    as the module doc says."""
    return GraphedCallable(fn, example_args, warmup=warmup, enabled=enabled, name=name)
