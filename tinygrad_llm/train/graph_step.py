"""The training step recorded once as a CUDA graph and replayed: the trainer's step on a GPU when shapes are static.

    step_fn = GraphTrainStep(model, optimizer, schedule, grad_accum=2, grad_clip=1.0, loss_scaler=scaler)
    out = step_fn(batches, step)        # same seam as TrainStep: (batches, step) -> StepOutput

Same arithmetic and order as ``TrainStep`` (forward under autocast, ``(loss / grad_accum) * scale`` backward per
micro-batch, gradient all-reduce, unscale and overflow check, global-norm clipping, AdamW, zero_grad), with nothing
in the step that waits for the host:
- the micro-batches are copied into static device buffers (grad_accum, B, T) that the graph reads;
- the learning rate of each parameter group is copied to a device array before each replay; the AdamW step count,
  the loss scale and the GradScaler's counters live in device memory (``autograd/cuda/device_step.py``): the
  overflow skip, the clipping factor and the scale update are computed there;
- the loss (summed over micro-batches) and the gradient norm stay on the device: ``StepOutput.loss`` is a 0-d
  device array, ``StepOutput.grad_norm`` a ``DeviceValue`` read only when the loop converts it (``float()``);
- dropout masks come from the device Philox generators, advanced inside the graph: a new mask every replay.

The first call runs one eager forward and backward on the batch (filling the kernels' first-use caches; gradients,
generator counters and the data are left as they were), then captures the step; each call replays it. The step is
re-captured when the parameters', optimizer state's or batch's arrays change (a checkpoint was loaded, a shape
changed). ``sync_to_host()`` writes the device step count and scaler state back into the optimizer and the
GradScaler (the trainer calls it before writing a checkpoint).

The trainer builds its step with ``train_step_for``: a ``GraphTrainStep`` where ``unsupported_reason(...)`` allows
it (else why not: no GPU, graphs switched off, an optimizer other than AdamW-rule Adam/AdamW, parameters on several
GPUs, data parallel without NCCL, a sharded optimizer), falling back to ``TrainStep`` (the eager reference) for good,
with one log line, when the first capture fails (a host sync inside the model, a parameter without a gradient).
``TrainConfig.cuda_graphs=False`` (``--no-cuda-graphs``) turns graphs off. ``GraphEval`` is the evaluation's
forward pass replayed from graphs. Data parallel: the gradients are averaged by NCCL all-reduces recorded in the
graph on the capturing stream (one per parameter, after backward; no overlap with it).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import numpy as np

import autograd as ag
from autograd import backend
from autograd.cuda.graph import CUDAGraph, GraphCaptureError, copy_into

from .step import StepOutput, lm_loss

__all__ = ["GraphTrainStep", "GraphEval", "DeviceValue", "unsupported_reason", "train_step_for", "is_graphed"]


class DeviceValue:
    """A number that lives on the GPU (element ``index`` of a device array): ``float(v)`` reads it (one host sync,
    only when asked)."""

    def __init__(self, array, index: int = 0):
        self.array, self.index = array, index

    def __float__(self) -> float:
        return float(self.array[self.index].get())

    def __format__(self, spec: str) -> str:
        return format(float(self), spec)

    def __repr__(self) -> str:
        return f"DeviceValue({float(self)!r})"


def _params(model) -> list:
    out, seen = [], set()
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def unsupported_reason(model, optimizer, data_parallel=None) -> str | None:
    """None when this step can be captured as a CUDA graph, else why not (one sentence)."""
    from autograd.cuda.graph import graphs_enabled
    if backend.cupy_module() is None:
        return "CuPy or a GPU is missing"
    if not graphs_enabled():
        return "TINYGRAD_LLM_CUDA_GRAPHS=0"
    params = _params(model)
    if not params or not all(backend.is_cupy_array(p.data) for p in params):
        return "the parameters are not all on a GPU"
    if len({p.data.device.id for p in params}) != 1:
        return "the parameters are on several GPUs (pipeline stages): one graph per GPU is not built here"
    if any(p.data.dtype not in (np.float32, np.float64) or not p.data.flags.c_contiguous for p in params):
        return "a parameter is not a contiguous float32/float64 array"
    from ..optim.adam import Adam, adamw_update
    if (not isinstance(optimizer, Adam) or optimizer.update_fn is not adamw_update
            or type(optimizer)._update is not Adam._update):
        return f"the optimizer is {type(optimizer).__name__}, not Adam/AdamW with the built-in update"
    if not optimizer.decoupled and any(g["weight_decay"] for g in optimizer.param_groups):
        return "Adam with L2 weight decay is not in the device step (use AdamW)"
    if {id(p) for p in params} != {id(p) for p in optimizer.params}:
        return "the optimizer's parameters are not the model's trainable parameters"
    if data_parallel is not None and getattr(data_parallel, "comm", None) is not None:
        comm = data_parallel.comm
        if comm.world_size > 1 and not hasattr(getattr(comm, "comm", None), "allReduce"):
            return f"data parallel over {type(comm).__name__}: only NCCL all-reduces can be recorded in a graph"
        if getattr(data_parallel, "shard_optimizer", False):
            return "a sharded optimizer (ZeRO) is not in the device step"
    return None


def _all_reduce_avg(comm, arrays) -> None:
    """Average ``arrays`` over ranks in place with NCCL on the current (capturing) stream: no events, no polls."""
    from ..distributed.nccl import _DTYPES, _OPS
    cp = backend.cupy_module()
    stream = cp.cuda.get_current_stream().ptr
    native = getattr(comm, "_avg_native", False)
    for a in arrays:
        comm.comm.allReduce(a.data.ptr, a.data.ptr, a.size, _DTYPES[a.dtype.name], _OPS["avg" if native else "sum"],
                            stream)
        if not native:
            a *= 1.0 / comm.world_size


class GraphTrainStep:
    """``TrainStep``'s seam, replayed from a CUDA graph (see the module doc). Arguments as for ``TrainStep``."""

    def __init__(self, model, optimizer, schedule: Callable[[int], float], *, grad_accum: int = 1,
                 grad_clip: float | None = None, autocast_dtype: str | None = None, loss_scaler=None,
                 data_parallel=None, loss_fn: Callable = lm_loss):
        reason = unsupported_reason(model, optimizer, data_parallel)
        if reason is not None:
            raise GraphCaptureError(f"GraphTrainStep: cannot graph this step: {reason}")
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.grad_accum, self.grad_clip = int(grad_accum), grad_clip
        self.autocast_dtype, self.loss_scaler = autocast_dtype, loss_scaler
        self.data_parallel, self.loss_fn = data_parallel, loss_fn
        self.graph = None
        self.captures = 0          # how many times the step was (re)captured
        self._key = None

    # ------------------------------------------------------------------------------------------ set-up
    def _arrays_key(self, batches):
        opt = self.optimizer
        states = tuple(id(opt.state.get(i)) for i in range(len(opt.params)))
        return (tuple(id(p.data) for p in opt.params), states,
                tuple((tuple(x.shape), str(x.dtype), tuple(y.shape), str(y.dtype)) for x, y in batches))

    def _build(self, batches) -> None:
        from autograd.cuda.device_step import DeviceAdamW
        cp = backend.cupy_module()
        self.graph = None              # the old recording and its memory go first
        opt = self.optimizer
        steps = set()
        for i, p in enumerate(opt.params):
            st = opt.state.setdefault(i, {})
            if "exp_avg" not in st:
                opt._init_state(p.data, st)
            steps.add(int(st["step"]))
        if len(steps) != 1:
            raise GraphCaptureError(f"GraphTrainStep: parameters are at different Adam steps {sorted(steps)}")
        groups, i = [], 0
        for g in opt.param_groups:
            ps, ms, vs = [], [], []
            for p in g["params"]:
                ps.append(p.data); ms.append(opt.state[i]["exp_avg"]); vs.append(opt.state[i]["exp_avg_sq"])
                i += 1
            groups.append((ps, ms, vs, {"betas": g["betas"], "eps": g["eps"],
                                        "weight_decay": g["weight_decay"] if opt.decoupled else 0.0}))
        self._adam_step0, self._count0 = steps.pop(), opt.step_count
        self.device = DeviceAdamW(groups, max_norm=self.grad_clip, scaler=self.loss_scaler, step=self._adam_step0)
        self._scaler_seen = self._scaler_tuple()
        x0, y0 = batches[0]
        self.x = cp.empty((self.grad_accum,) + tuple(x0.shape), x0.dtype)
        self.y = cp.empty((self.grad_accum,) + tuple(y0.shape), y0.dtype)
        self.loss_total = cp.zeros((), np.float32)
        self._copy_batches(batches)
        self._warmup()
        g = CUDAGraph(name="training step")
        with g.capture():
            self._region()
        self.graph = g
        self.device.upload_pointers()
        self.captures += 1
        self._key = self._arrays_key(batches)

    def _scaler_tuple(self):
        s = self.loss_scaler
        return None if s is None else (s.scale_value, s._clean_steps, s.skipped_steps)

    def _copy_batches(self, batches) -> None:
        for k, (x, y) in enumerate(batches):
            copy_into(self.x[k], x.data if isinstance(x, ag.Tensor) else x)
            copy_into(self.y[k], y.data if isinstance(y, ag.Tensor) else y)

    def _warmup(self) -> None:
        """One eager forward + backward of the first micro-batch: compiles kernels and fills first-use caches
        before capture. Gradients are dropped and the dropout generators rewound: no state changes."""
        from autograd.cuda import philox
        cp = backend.cupy_module()
        before = {id(g): (g, g.get_state()) for g in philox.all_generators()}
        with self._no_sync():
            with ag.amp.autocast(self.autocast_dtype):
                loss = self.loss_fn(self.model, self.x[0], self.y[0])
            (loss * ag.Tensor(self.device.scale32.reshape(()))).backward()
        self.optimizer.zero_grad()
        for g in philox.all_generators():
            saved = before.get(id(g))
            g.set_state(saved[1] if saved is not None else np.array([g.seed, 0], np.int64))  # new ones: from 0
        del loss
        cp.cuda.get_current_stream().synchronize()
        cp.get_default_memory_pool().free_all_blocks()   # the warm-up's activations: not kept beside the graph's

    def _no_sync(self):
        dp = self.data_parallel
        return dp.no_sync() if dp is not None and hasattr(dp, "no_sync") else contextlib.nullcontext()

    def _region(self) -> None:
        """The recorded step (runs on the static buffers)."""
        scale = ag.Tensor(self.device.scale32.reshape(())) if self.device.scaler is not None else None
        total = None
        with self._no_sync():
            for k in range(self.grad_accum):
                with ag.amp.autocast(self.autocast_dtype):
                    loss = self.loss_fn(self.model, self.x[k], self.y[k])
                scaled = loss if self.grad_accum == 1 else loss * (1.0 / self.grad_accum)
                if scale is not None:
                    scaled = scaled * scale
                scaled.backward()
                total = loss.data if total is None else total + loss.data
        self.loss_total[...] = total
        params = self.optimizer.params
        missing = [getattr(p, "name", None) or f"parameter {i} {tuple(p.shape)}" for i, p in enumerate(params)
                   if p.grad is None]
        if missing:
            raise GraphCaptureError(f"training step: {missing[:3]} got no gradient (the eager step skips such "
                                    "parameters; the graphed step updates all of them)")
        comm = getattr(self.data_parallel, "comm", None)
        if comm is not None and comm.world_size > 1:
            _all_reduce_avg(comm, [p.grad.data for p in params])
        grads = {id(p.data): p.grad.data for p in params}
        shadows = {id(p.data): ag.amp.shadows_for_update(p) for p in params}   # written by the captured update
        self.device.step(lambda a: grads[id(a)], lambda a: shadows[id(a)])
        self.optimizer.zero_grad()

    # ------------------------------------------------------------------------------------------ calls
    def __call__(self, batches: Sequence[tuple[Any, Any]], step: int) -> StepOutput:
        if len(batches) != self.grad_accum:
            raise ValueError(f"GraphTrainStep: {len(batches)} micro-batches given, grad_accum is {self.grad_accum}")
        lr = float(self.schedule(step))
        self.optimizer.set_lr(lr)
        key = self._arrays_key(batches)
        if self.graph is not None and (key != self._key or self._scaler_tuple() != self._scaler_seen):
            if key[:2] == self._key[:2] and self._scaler_tuple() == self._scaler_seen:
                self.sync_to_host()      # same parameters and state, a new batch shape: keep the device counters
            self.graph = None            # else a checkpoint was loaded: start from the host state
        if self.graph is None:
            self._build(batches)
        else:
            self._copy_batches(batches)
        self.device.set_lr([g["lr"] for g in self.optimizer.param_groups])
        self.graph.replay()
        from autograd.cuda.device_step import S_NORM
        norm = self.device.state[S_NORM:S_NORM + 1].copy()     # this step's norm: the next replay overwrites it
        return StepOutput(loss=self.loss_total / self.grad_accum, lr=lr, grad_norm=DeviceValue(norm))

    def sync_to_host(self) -> None:
        """Write the device's Adam step count and loss-scaler state into the optimizer and the GradScaler."""
        if self.graph is None:
            return
        st = self.device.sync_scaler()
        self._scaler_seen = self._scaler_tuple()
        opt = self.optimizer
        for i in range(len(opt.params)):
            opt.state[i]["step"] = st["step"]
        opt.step_count = self._count0 + st["step"] - self._adam_step0


class _GraphOrEager:
    """A GraphTrainStep that turns into the eager TrainStep (for good, with one logged reason) when the step cannot
    be captured: a host sync or a data-dependent shape inside the model, for instance."""

    def __init__(self, graphed: GraphTrainStep, eager, log: Callable[[str], None] | None):
        self.graphed, self.eager, self._log = graphed, eager, log

    @property
    def active(self):
        return self.graphed if self.graphed is not None else self.eager

    def __call__(self, batches, step: int) -> StepOutput:
        if self.graphed is not None:
            try:
                return self.graphed(batches, step)
            except GraphCaptureError as e:
                if self.graphed.graph is not None:     # a failure after a good capture is a real error
                    raise
                self.graphed.optimizer.zero_grad()      # gradients of the failed capture are not real
                self.graphed = None
                if self._log is not None:
                    self._log(f"CUDA graph off, the step runs eagerly: {e}")
        return self.eager(batches, step)

    def sync_to_host(self) -> None:
        if self.graphed is not None:
            self.graphed.sync_to_host()


def is_graphed(step_fn) -> bool:
    """Whether ``step_fn`` (from ``train_step_for``) replays CUDA graphs (or will try to at its first call)."""
    return isinstance(step_fn, GraphTrainStep) or (isinstance(step_fn, _GraphOrEager) and step_fn.graphed is not None)


def train_step_for(model, optimizer, schedule: Callable[[int], float], *, cuda_graphs: bool = True,
                   log: Callable[[str], None] | None = None, **kw):
    """The trainer's step: a CUDA-graph step when ``cuda_graphs`` and ``unsupported_reason`` allows it (falling back
    to ``TrainStep`` if the capture fails), else ``TrainStep``. ``kw``: TrainStep's keyword arguments."""
    from .step import TrainStep
    eager = TrainStep(model, optimizer, schedule, **kw)
    if not cuda_graphs:
        return eager
    reason = unsupported_reason(model, optimizer, kw.get("data_parallel"))
    if reason is not None:
        if log is not None and backend.cupy_module() is not None and "GPU" not in reason:
            log(f"CUDA graph off, the step runs eagerly: {reason}")
        return eager
    return _GraphOrEager(GraphTrainStep(model, optimizer, schedule, **kw), eager, log)


class GraphEval:
    """The forward loss of ``loss_fn(model, x, y)`` in eval mode under no_grad, replayed from a CUDA graph (one per
    batch shape) and summed on the device: ``mean_loss(batches)`` reads the sums once, at the end."""

    def __init__(self, model, autocast_dtype: str | None = None, loss_fn: Callable = lm_loss):
        self.model, self.autocast_dtype, self.loss_fn = model, autocast_dtype, loss_fn
        self._graphs: dict = {}
        self.failed: str | None = None      # why capture failed: then every batch runs eagerly

    def _region(self, x, y, acc) -> None:
        with ag.no_grad(), ag.amp.autocast(self.autocast_dtype):
            loss = self.loss_fn(self.model, x, y)
        acc += loss.data.astype(acc.dtype) * len(x)       # weighted by its windows, as validation_loss does

    def _entry(self, x, y):
        key = (tuple(x.shape), str(x.dtype), tuple(y.shape), str(y.dtype))
        entry = self._graphs.get(key)
        if entry is None:
            cp = backend.cupy_module()
            xs, ys, acc = cp.asarray(x).copy(), cp.asarray(y).copy(), cp.zeros((), np.float64)
            self._region(xs, ys, acc)                  # warm-up (eval mode draws nothing)
            g = CUDAGraph(name="evaluation")
            with g.capture():
                self._region(xs, ys, acc)
            entry = self._graphs[key] = (g, xs, ys, acc)
        return entry

    def mean_loss(self, batches) -> float:
        """Mean loss per window over ``batches``: (x, y) pairs of (B, T) int arrays, NumPy or CuPy."""
        was = self.model.training
        self.model.eval()
        try:
            used, n, eager = {}, 0, 0.0
            for x, y in batches:
                n += len(x)
                if self.failed is None:
                    try:
                        g, xs, ys, acc = self._entry(x, y)
                    except GraphCaptureError as e:
                        self.failed = str(e)
                if self.failed is not None:          # the eager forward, same weighting
                    cp = backend.cupy_module()
                    with ag.no_grad(), ag.amp.autocast(self.autocast_dtype):
                        eager += float(self.loss_fn(self.model, cp.asarray(x), cp.asarray(y)).item()) * len(x)
                    continue
                if id(acc) not in used:
                    acc[...] = 0
                    used[id(acc)] = acc
                copy_into(xs, x)
                copy_into(ys, y)
                g.replay()
            return (eager + sum(float(a.get()) for a in used.values())) / n if n else 0.0
        finally:
            self.model.train(was)
