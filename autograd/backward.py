"""The backward pass: iterative, in reverse topological order, with accumulation, release and leaf hooks.

Algorithm (Kahn's): walk the graph once from the outputs to count, for every Function, how many of its outputs'
uses lie inside the graph; a Function runs when all of them have delivered their gradient. Leaves count their uses
the same way, so a leaf's hooks run the moment its gradient for this pass is final. Nothing recurses, so a chain of
any depth works under Python's default recursion limit.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator, Sequence

from .backend import device_scope, xp_of
from .function import Function
from .grad_mode import enable_grad, no_grad
from .tensor import Tensor


class BackwardError(RuntimeError):
    """Raised for misuse of backward: a freed graph, a non-scalar without ``grad``, a wrong gradient shape."""


def _initial_grad(root: Tensor, grad) -> Tensor:
    xp_data = root.data
    if grad is None:
        if root.data.size != 1:
            raise BackwardError(
                f"backward() of a non-scalar tensor (shape {root.shape}) needs `grad`, the gradient of the final "
                "value with respect to it; pass grad=ones of that shape to sum it, or call .sum() first"
            )
        from .backend import xp_of
        return Tensor(xp_of(xp_data).ones(root.shape, dtype=root.dtype))
    g = grad if isinstance(grad, Tensor) else Tensor(grad)
    if g.shape != root.shape:
        raise BackwardError(f"backward(grad=...) has shape {g.shape} but the tensor has shape {root.shape}")
    return g


def _discover(roots: Sequence[Tensor]):
    """Count, for every Function and leaf reachable from ``roots``, the graph edges that feed it a gradient."""
    fn_deps: dict[Function, int] = {}
    leaf_deps: dict[Tensor, int] = {}
    stack = []
    for r in roots:
        if r.creator is not None:
            if r.creator not in fn_deps:
                fn_deps[r.creator] = 0
                stack.append(r.creator)
    while stack:
        fn = stack.pop()
        if fn._released:
            raise BackwardError(
                f"trying to backward through the graph a second time (at {fn.name}): its saved arrays were freed "
                "after the first backward; pass retain_graph=True to the first backward() if you need a second one"
            )
        for x in fn.inputs:
            if not x.requires_grad:
                continue
            c = x.creator
            if c is None:
                leaf_deps[x] = leaf_deps.get(x, 0) + 1
            elif c in fn_deps:
                fn_deps[c] += 1
            else:
                fn_deps[c] = 1
                stack.append(c)
    return fn_deps, leaf_deps


def _add(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a + b


def backward_iter(roots: Sequence[Tensor], grads: Sequence, retain_graph: bool = False,
                  create_graph: bool = False, accumulate: bool = True,
                  targets: Sequence[Tensor] | None = None) -> Iterator[tuple]:
    """Run the backward pass one node at a time; yields ``(fn, grad_outputs, grad_inputs)`` after each node.

    ``accumulate``: add leaf gradients into ``.grad`` (``Tensor.backward``) or not (``ag.grad``). ``targets``: when
    given, the gradients reaching these tensors are collected and returned through ``StopIteration.value``.
    The step-through tracer consumes this generator; ``run_backward`` just drains it.
    """
    roots = list(roots)
    fn_deps, leaf_deps = _discover(roots)
    pending: dict[Function, list] = {}
    leaf_grads: dict[Tensor, Tensor] = {}
    target_grads: dict[int, Tensor] = {}
    target_keys = {}
    if targets is not None:
        for i, t in enumerate(targets):
            target_keys.setdefault((t.creator, t.out_index) if t.creator is not None else t, []).append(i)

    def deliver_to_leaf(leaf: Tensor, g: Tensor | None) -> None:
        if g is not None:
            leaf_grads[leaf] = _add(leaf_grads.get(leaf), g)
        leaf_deps[leaf] -= 1
        if leaf_deps[leaf] == 0 and leaf in leaf_grads:
            with device_scope(leaf.data):
                _finish_leaf(leaf, leaf_grads.pop(leaf))

    def _finish_leaf(leaf: Tensor, g: Tensor) -> None:
        for i in target_keys.get(leaf, ()):
            target_grads[i] = g
        if not accumulate:
            return
        if leaf.grad is None:
            # own, writable memory: optimizers and clipping update .grad in place. A hook runs mid-backward
            # and may do so too (an in-place all-reduce), while the same array may still be on its way to
            # other nodes (Add passes its gradient on unchanged): copy then as well.
            data = g.data
            if (data.base is not None or not getattr(data.flags, "writeable", True)  # CuPy: no such flag
                    or data is seen_arrays.get(id(data)) or leaf._hooks):
                data = data.copy()
            seen_arrays[id(data)] = data
            if not create_graph:
                leaf.grad = Tensor(data)
            elif data is g.data or g.creator is None:
                leaf.grad = g if data is g.data else Tensor(data)
            else:  # a new Tensor for the same graph output, holding the copy: still differentiable, not shared
                leaf.grad = Tensor._from_op(data, g.creator, g.out_index)
        elif create_graph:
            leaf.grad = leaf.grad + g
        else:
            leaf.grad = Tensor(leaf.grad.data + g.data)
        if leaf._hooks:
            for hook in list(leaf._hooks):
                hook(leaf)

    seen_arrays: dict[int, object] = {}

    ready = deque()
    for r, g in zip(roots, grads):
        g = _initial_grad(r, g)
        if r.creator is None:
            if r.requires_grad:
                leaf_deps[r] = leaf_deps.get(r, 0) + 1
                deliver_to_leaf(r, g)
            continue
        slots = pending.setdefault(r.creator, [None] * len(r.creator._out_meta))
        slots[r.out_index] = _add(slots[r.out_index], g)
    for r in roots:
        if r.creator is not None and fn_deps.get(r.creator) == 0 and r.creator not in ready:
            ready.append(r.creator)
            fn_deps[r.creator] = -1  # queued

    mode = enable_grad if create_graph else no_grad
    while ready:
        fn = ready.popleft()
        slots = pending.pop(fn, None) or [None] * len(fn._out_meta)
        for idx, g in enumerate(slots):
            for i in target_keys.get((fn, idx), ()):
                target_grads[i] = g
        if create_graph and not fn.differentiable_twice:
            raise BackwardError(
                f"{fn.name} is a fused first-order op: its backward is a single array kernel, so it cannot be "
                "differentiated twice (create_graph=True); use the composed version of this op for higher-order grads"
            )
        with device_scope(fn.inputs[0].data), mode():  # a pipeline stage's nodes run on their own GPU
            grad_outputs = [g if g is not None else Tensor(xp_of(fn.inputs[0].data).zeros(shape, dtype=dtype))
                            for (shape, dtype), g in zip(fn._out_meta, slots)]
            gin = fn.backward(*grad_outputs)
        if not isinstance(gin, tuple):
            gin = (gin,)
        inputs = fn.inputs
        if len(gin) != len(inputs):
            raise BackwardError(f"{fn.name}.backward returned {len(gin)} gradients for {len(inputs)} inputs")
        if accumulate and "_retained" in fn.__dict__:  # Tensor.retain_grad(): an intermediate keeps its gradient
            _store_retained(fn, grad_outputs, create_graph)
        yield fn, grad_outputs, gin
        for x, g in zip(inputs, gin):
            if not x.requires_grad or g is None:
                if x.requires_grad:  # no gradient flows on this edge: still counts as delivered
                    _edge_done(x, fn_deps, leaf_deps, ready, pending, deliver_to_leaf, None)
                continue
            if g.shape != x.shape:
                raise BackwardError(f"{fn.name}.backward returned a gradient of shape {g.shape} "
                                    f"for an input of shape {x.shape}")
            if g.dtype != x.dtype:  # a gradient has its tensor's dtype (float32 + float16 -> float32 sends back
                with device_scope(g.data):  # a float32 gradient that the float16 operand must receive as float16)
                    g = g.astype(x.dtype)
            _edge_done(x, fn_deps, leaf_deps, ready, pending, deliver_to_leaf, g)
        if not retain_graph:
            fn.release()
    return tuple(target_grads.get(i) for i in range(len(targets))) if targets is not None else None


def _store_retained(fn, grad_outputs, create_graph: bool) -> None:
    for index, ref in fn._retained:
        t, g = ref(), grad_outputs[index]
        if t is None:
            continue
        g = g if create_graph else Tensor(g.data.copy())
        t.grad = g if t.grad is None else (t.grad + g if create_graph else Tensor(t.grad.data + g.data))


def _edge_done(x, fn_deps, leaf_deps, ready, pending, deliver_to_leaf, g):
    c = x.creator
    if c is None:
        deliver_to_leaf(x, g)
        return
    if g is not None:
        slots = pending.get(c)
        if slots is None:
            slots = pending[c] = [None] * len(c._out_meta)
        slots[x.out_index] = _add(slots[x.out_index], g)
    fn_deps[c] -= 1
    if fn_deps[c] == 0:
        ready.append(c)


def run_backward(roots, grads, retain_graph=False, create_graph=False, accumulate=True, targets=None):
    """Drain ``backward_iter``; returns the target gradients when ``targets`` is given."""
    it = backward_iter(roots, grads, retain_graph, create_graph, accumulate, targets)
    while True:
        try:
            next(it)
        except StopIteration as stop:
            return stop.value


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None,
         create_graph: bool = False, allow_unused: bool = False) -> tuple[Tensor, ...]:
    """Gradients of ``outputs`` with respect to ``inputs``, returned instead of accumulated into ``.grad``.

    ``outputs`` and ``inputs`` are Tensors or sequences of them. With ``create_graph=True`` the results are part of
    a graph, so they can be differentiated again (Hessian-vector products, gradient penalties).
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            raise BackwardError(f"ag.grad: input {i} (shape {x.shape}) does not require grad")
    if retain_graph is None:
        retain_graph = create_graph
    result = run_backward(outputs, grad_outputs, retain_graph=retain_graph, create_graph=create_graph,
                          accumulate=False, targets=inputs)
    out = []
    for i, (x, g) in enumerate(zip(inputs, result)):
        if g is None:
            if not allow_unused:
                raise BackwardError(f"ag.grad: input {i} (shape {x.shape}) is not used to compute the outputs; "
                                    "pass allow_unused=True to get None for it")
        elif not create_graph and g.creator is not None:
            g = Tensor(g.data)
        out.append(g)
    return tuple(out)
