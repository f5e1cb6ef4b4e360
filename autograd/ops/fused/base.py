"""What every fused op shares: array code for the plain backward, its composed reference for higher orders.

A fused op (``FusedFunction``) is one node for a layer-sized computation. Its forward and its plain backward are
array code (NumPy, or a CUDA kernel on the GPU), so the local rule is written once per backend. Under
``create_graph=True`` it needs a backward made of differentiable ops; instead of writing the rule a second time in
Tensor ops, ``backward`` then differentiates the op's composed reference (``reference``: the public
``F.<op>(..., fused=False)``, built from primitive ops) with ``reference_grads``. So every fused op is
differentiable any number of times, and its higher-order gradients are the reference's, exactly.
"""
from __future__ import annotations

from typing import Callable, Sequence

from ...function import Function
from ...grad_mode import _GradMode
from ...tensor import Tensor


class FusedFunction(Function):
    """Base of the fused ops: ``backward_arrays`` (the hand-derived rule) and ``reference`` (the composed op)."""

    def backward_arrays(self, *grad_outputs: Tensor):  # pragma: no cover - abstract
        """The gradients from array code (grad mode is off): Tensors, or None for inputs that need none."""
        raise NotImplementedError(f"{self.name}.backward_arrays is not written")

    def reference(self, *inputs: Tensor):  # pragma: no cover - abstract
        """The same computation composed from primitive ops, with this node's parameters."""
        raise NotImplementedError(f"{self.name}.reference is not written")

    def backward(self, *grad_outputs: Tensor):
        if _GradMode.enabled:   # create_graph=True: gradients that are themselves differentiable
            return reference_grads(self.reference, self.inputs, grad_outputs)
        return self.backward_arrays(*grad_outputs)


def reference_grads(reference: Callable, inputs: Sequence[Tensor], grad_outputs: Sequence[Tensor]) -> tuple:
    """The gradients of ``reference(*inputs)`` with respect to ``inputs``, for ``grad_outputs``, as a graph.

    ``reference`` runs on stand-in leaves that share the inputs' arrays, so the nested backward stays inside the
    new subgraph (it does not walk the graph above the inputs); the new nodes' edges to the stand-ins are then
    pointed at the real inputs, so differentiating the result again reaches them. None for an input that does not
    require grad or that the reference does not use.
    """
    from ...backward import grad   # backward imports the ops, so import it when first needed

    stand_ins = [Tensor(x.data, requires_grad=True) if x.requires_grad else x for x in inputs]
    outs = reference(*stand_ins)
    outs = outs if isinstance(outs, tuple) else (outs,)
    wanted = [i for i, x in enumerate(inputs) if x.requires_grad]
    gs = grad(list(outs), [stand_ins[i] for i in wanted], list(grad_outputs), create_graph=True, allow_unused=True)
    real = {id(stand_ins[i]): inputs[i] for i in wanted}
    stop = {g.creator for g in grad_outputs if g.creator is not None}
    _point_edges_at(gs, real, stop)
    out = [None] * len(inputs)
    for i, g in zip(wanted, gs):
        out[i] = inputs[i] if g is not None and id(g) in real else g
    return tuple(out)


def _point_edges_at(roots, real: dict, stop: set) -> None:
    """In the graph below ``roots``, replace every input that is a key of ``real`` (by id) by its value; the walk
    does not pass ``stop`` nodes (the incoming gradients' creators: the outer graph) nor leaves."""
    seen, stack = set(), [g.creator for g in roots if g is not None and g.creator is not None]
    while stack:
        fn = stack.pop()
        if fn in seen or fn in stop:
            continue
        seen.add(fn)
        edges = []
        for t in fn.inputs:
            if id(t) in real:
                edges.append(real[id(t)])
            else:
                edges.append(t)
                if t.creator is not None:
                    stack.append(t.creator)
        fn.inputs = edges
