"""Activation checkpointing: ``checkpoint(fn, *inputs)`` keeps no graph inside ``fn`` and recomputes it in backward.

A block of a transformer saves its activations for backward (attention probabilities, MLP hidden states, norm
statistics): with many layers that is most of the memory of a training step. Wrapped in ``checkpoint``, the block's
forward runs without recording a graph; only its inputs are kept. When backward reaches it, the block's forward is
run again, this time recording, and its backward follows at once, so at most one block's activations are alive.
The price is one more forward of every checkpointed block (about a third more compute per step).

    y = ag.checkpoint(block, x)          # block: a Module (its parameters get gradients) or any callable

What makes the recomputation equal to the first run:
- Random draws: every random generator that dropout draws from inside ``fn`` is noted with its state before the
  first draw (``note_rng``); the recomputation starts those generators from the noted states, so dropout draws the
  same masks, and afterwards puts them back where the first run left them, so the training sequence of random
  numbers is the same as without checkpointing.
- Mixed precision: the recomputation runs under the autocast dtype that was active in the first run.
- Parameters: gradients reach ``fn``'s parameters through the checkpoint node itself, whose inputs are the explicit
  inputs followed by the parameters (the engine then accumulates them and runs their hooks as for any op: data
  parallel's bucketed all-reduce works unchanged). They are ``fn.parameters()`` for a Module (or a bound method of
  one), ``params=`` when given, and otherwise found by recording the first run and collecting the leaf tensors that
  require grad (the callable's closures over parameters).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

from . import amp
from .backward import _discover, run_backward
from .function import Function
from .grad_mode import enable_grad, is_grad_enabled, no_grad
from .tensor import Tensor

__all__ = ["checkpoint", "note_rng"]

# generators noted by the checkpointed forward now running (innermost last); each a dict id -> (gen, state)
_RECORDERS: list[dict[int, tuple[Any, Any]]] = []


def _get_state(gen) -> Any:
    if hasattr(gen, "bit_generator"):                   # numpy.random.Generator
        return copy.deepcopy(gen.bit_generator.state)
    if hasattr(gen, "get_state") and hasattr(gen, "set_state"):
        return gen.get_state()
    raise NotImplementedError(
        f"checkpoint: dropout draws from a {type(gen).__name__}, whose state cannot be saved and restored, so the "
        "recomputation could not draw the same mask; use a numpy.random.Generator or a generator with "
        "get_state()/set_state(), or turn dropout off inside the checkpointed function")


def _set_state(gen, state) -> None:
    if hasattr(gen, "bit_generator"):
        gen.bit_generator.state = copy.deepcopy(state)
    else:
        gen.set_state(state)


def note_rng(gen) -> None:
    """Called by every op that draws random numbers, before its draw: inside a checkpointed forward, remember the
    generator's state the first time it is used so the recomputation can draw the same numbers."""
    if _RECORDERS and id(gen) not in _RECORDERS[-1]:
        _RECORDERS[-1][id(gen)] = (gen, _get_state(gen))


def _module_parameters(fn) -> list[Tensor] | None:
    owner = fn if hasattr(fn, "parameters") else getattr(fn, "__self__", None)
    if owner is not None and callable(getattr(owner, "parameters", None)):
        return list(owner.parameters())
    return None


def _as_outputs(out, where: str) -> tuple[Tensor, ...]:
    outs = out if isinstance(out, tuple) else (out,)
    for i, o in enumerate(outs):
        if not isinstance(o, Tensor):
            raise TypeError(f"checkpoint: {where} must return a Tensor or a tuple of Tensors; output {i} is a "
                            f"{type(o).__name__}")
    return outs


class Checkpoint(Function):
    """The node that stands for a whole checkpointed function: inputs = explicit inputs + parameters.

    ``checkpoint()`` has already run ``fn`` once (without keeping its graph) and hands its outputs to ``forward``;
    backward recomputes ``fn`` with a graph and runs that graph's backward at once."""

    rule = "recompute fn(inputs) with a graph, then backpropagate through it (the gradients of fn itself)"
    differentiable_twice = False

    def __init__(self, fn: Callable, n_inputs: int, first_run: "_FirstRun"):
        self.fn = fn
        self.n_inputs = n_inputs
        self.first_run = first_run

    def forward(self, *arrays):
        result = self.first_run.outputs
        self.first_run.outputs = None                 # the node keeps its inputs, not its outputs
        return result if len(result) > 1 else result[0]

    def backward(self, *grad_outputs):
        run = self.first_run
        explicit, params = self.inputs[:self.n_inputs], self.inputs[self.n_inputs:]
        after = [(gen, _get_state(gen)) for gen, _ in run.rng_before]
        try:
            for gen, state in run.rng_before:
                _set_state(gen, state)
            xs = [Tensor(t.data, requires_grad=t.requires_grad) for t in explicit]
            with enable_grad(), amp.autocast(run.autocast):
                outs = _as_outputs(self.fn(*xs), "the function")
        finally:
            for gen, state in after:
                _set_state(gen, state)
        targets = [x for x in xs if x.requires_grad] + [p for p in params if p.requires_grad]
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o.requires_grad]
        found = (run_backward([o for o, _ in pairs], [g for _, g in pairs], accumulate=False, targets=targets)
                 if pairs and targets else ())
        by_id = {id(t): g for t, g in zip(targets, found)}
        return tuple(by_id.get(id(x)) for x in xs) + tuple(by_id.get(id(p)) for p in params)


class _FirstRun:
    """What the first run of a checkpointed function leaves for its recomputation."""

    def __init__(self, outputs: tuple, rng_before: list, autocast):
        self.outputs, self.rng_before, self.autocast = outputs, rng_before, autocast


def checkpoint(fn: Callable, *inputs, params: Sequence[Tensor] | None = None, preserve_rng_state: bool = True):
    """``fn(*inputs)`` with its activations recomputed in backward instead of kept (see the module docstring).

    inputs: the Tensors ``fn`` reads (other values may be bound into ``fn``); returns what ``fn`` returns (a Tensor
    or a tuple of Tensors). ``params``: the leaf tensors inside ``fn`` that need gradients, when ``fn`` is not a
    Module (found automatically otherwise). ``preserve_rng_state=False`` lets the recomputation draw new random
    numbers (cheaper; only right without dropout). Outside a graph (``no_grad``) it is just ``fn(*inputs)``.
    """
    tensors = [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]
    if not is_grad_enabled():
        return fn(*tensors)
    if params is None:
        params = _module_parameters(fn)
    discover = params is None
    recorder: dict[int, tuple[Any, Any]] = {}
    _RECORDERS.append(recorder)
    try:
        if discover:                  # record this run to find the parameters fn closes over, then drop the graph
            probe = [Tensor(t.data, requires_grad=t.requires_grad) for t in tensors]
            outs = _as_outputs(fn(*probe), "the function")
            stop = {id(t) for t in probe}
            params = [leaf for leaf in _discover(outs)[1] if id(leaf) not in stop]   # backward's walk
        else:
            with no_grad():
                outs = _as_outputs(fn(*tensors), "the function")
    finally:
        _RECORDERS.pop()
    seen = {id(t) for t in tensors}
    unique = []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    if not unique and not any(t.requires_grad for t in tensors):
        return outs if len(outs) > 1 else outs[0]
    run = _FirstRun(tuple(o.data for o in outs), list(recorder.values()) if preserve_rng_state else [],
                    amp.autocast_dtype())
    del outs
    return Checkpoint.apply(*tensors, *unique, fn=fn, n_inputs=len(tensors), first_run=run)
