"""Step through the backward pass one node at a time, the way you would do the chain rule by hand.

    steps = ag.trace.backward_steps(loss)      # runs the real backward: leaf .grad is filled as by loss.backward()
    for step in steps:
        print(step)                            # step.format(full=True): every number, however large

Each ``BackwardStep`` is one Function in the order the engine runs them (reverse topological order). Printing it
shows the op (with its parameters), its output, the gradient arriving at that output (when several consumers
send one, each contribution and their sum), the op's local rule (its ``rule`` attribute: ``d(x*y)/dx = y``), and
the gradient sent to each input. A leaf that receives a gradient is marked ``-> accumulated into <leaf>.grad``.

Tensors are called by their ``.name``: set it (``h.name = "h"``), or let ``with ag.trace.named():`` name every
Tensor bound to a local variable in the block by that variable's name (``ag.trace.named(h=h)`` or
``named({"h": h})`` names them at once). Unnamed ones read ``<Op>-out<shape>``.

Arrays with at most ``ag.trace.SMALL`` elements are printed in full, larger ones summarized; the value is read at
each call, so ``ag.trace.SMALL = 100`` takes effect at once.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import backend, dtypes
from .backward import backward_iter
from .function import Function
from .tensor import Tensor

#: arrays with at most this many elements are printed in full; larger ones are summarized (read at call time)
SMALL = 12


def format_array(a, small: int | None = None, precision: int = 4, with_shape: bool = True,
                 full: bool = False) -> str:
    """Short text for an array: the values when it has at most ``small`` (default ``SMALL``) elements, else (shape
    and) statistics; ``full=True`` prints every value whatever the size."""
    if a is None:
        return "None"
    if isinstance(a, Tensor):
        a = a.data
    a = backend.to_numpy(a)
    if dtypes.is_bfloat16(a.dtype):
        a = a.astype(np.float32)   # printed as the float32 values it holds
    small = SMALL if small is None else small
    if full or a.size <= small:
        if a.ndim == 0:
            return np.format_float_positional(float(a), precision=precision, trim="-") if a.dtype.kind == "f" \
                else str(a.item())
        fmt = {"float_kind": lambda v: f"{v:.{precision}g}"}
        body = np.array2string(a, separator=", ", formatter=fmt, max_line_width=10_000, threshold=sys.maxsize)
        return " ".join(body.split())  # one line even for 2-D arrays
    if a.size == 0:
        return f"<empty {a.shape}>"
    if a.dtype.kind not in "fiu":
        return f"<{a.dtype} shape={a.shape}>"
    f = a.astype(np.float64)
    shape = f"shape={a.shape} " if with_shape else ""
    return f"<{shape}mean={f.mean():.4g} std={f.std():.4g} min={f.min():.4g} max={f.max():.4g}>"


def op_rule(fn: Function | type) -> str:
    """The local derivative rule of an op: its ``rule`` attribute, else (marked as such) its docstring's first line."""
    cls = fn if isinstance(fn, type) else type(fn)
    rule = getattr(cls, "rule", None)
    if rule:
        return rule
    doc = (cls.__doc__ or "").strip()
    return f"(no rule written) {doc.splitlines()[0]}" if doc else f"(no rule written for {cls.__name__})"


#: attributes that forward derives or stores for backward: not parameters of the op
_INTERNAL = {"inputs", "axes", "count", "denominator", "basic", "rule"}


def op_params(fn: Function) -> str:
    """The op's small parameters (axis, shape, exponent ...) as ``k=v`` text; arrays, tensors, saved values
    (``None`` placeholders included) and private fields left out."""
    parts = []
    for k, v in vars(fn).items():
        if k.startswith("_") or k in _INTERNAL or v is None:
            continue
        if isinstance(v, (bool, int, float, str, np.dtype)) or (
                isinstance(v, tuple) and len(v) <= 6 and all(isinstance(e, (int, type(None))) for e in v)):
            parts.append(f"{k}={v}")
    return ", ".join(parts)


_op_params = op_params  # the name viz and older callers use


# ------------------------------------------------------------------------------------------------ names
def node_key(t: Tensor):
    """One key per graph node: several Tensor objects can stand for one op output (``Function.output()``)."""
    return ("out", id(t.creator), t.out_index) if t.creator is not None else ("leaf", id(t))


def graph_names(roots: Tensor | Sequence[Tensor]) -> dict:
    """``node_key -> name`` for every named tensor of the graph below ``roots`` (before backward frees it)."""
    roots = [roots] if isinstance(roots, Tensor) else list(roots)
    names, seen, stack = {}, set(), list(roots)
    for r in roots:
        if getattr(r, "name", None):
            names[node_key(r)] = str(r.name)
    while stack:
        t = stack.pop()
        fn = t.creator
        if fn is None or id(fn) in seen or fn.__dict__.get("_released", False):
            continue
        seen.add(id(fn))
        for x in fn.inputs:
            if getattr(x, "name", None):
                names.setdefault(node_key(x), str(x.name))
            stack.append(x)
    return names


def tensor_label(t: Tensor, names: Mapping | None = None) -> str:
    """How a tensor is named in the printout: its ``.name`` (or the name of another object for the same node, from
    ``names``), else the op that made it and its shape."""
    if getattr(t, "name", None):
        return str(t.name)
    if names and node_key(t) in names:
        return names[node_key(t)]
    if t.creator is None:
        return f"leaf{tuple(t.shape)}"
    return output_label(t.creator, t.out_index, tuple(t.shape), names)


def output_label(fn: Function, index: int, shape: tuple, names: Mapping | None = None) -> str:
    """The label of output ``index`` of ``fn``: its user name when known, else ``<Op>[index]-out<shape>``."""
    if names and ("out", id(fn), index) in names:
        return names[("out", id(fn), index)]
    idx = f"[{index}]" if index else ""
    return f"{fn.name}{idx}-out{tuple(shape)}"


class named:
    """Name tensors for the trace and the drawings.

    ``with ag.trace.named():`` names, on leaving the block, every unnamed Tensor bound to a local variable of the
    calling scope by that variable's name. ``ag.trace.named(h=h, out=out)`` or ``named({"h": h})`` names the given
    tensors at once (and can be used as the same context manager).
    """

    def __init__(self, tensors: Mapping[str, Tensor] | None = None, **more: Tensor):
        for name, t in {**(tensors or {}), **more}.items():
            if not isinstance(t, Tensor):
                raise TypeError(f"trace.named: {name!r} is a {type(t).__name__}, not a Tensor")
            t.name = name
        self._frame = None

    def __enter__(self) -> "named":
        self._frame = sys._getframe(1)
        return self

    def __exit__(self, *exc) -> None:
        frame, self._frame = self._frame, None
        if exc[0] is None and frame is not None:
            for var, value in list(frame.f_locals.items()):
                if isinstance(value, Tensor) and not value.name and not var.startswith("_"):
                    value.name = var
        del frame


# ------------------------------------------------------------------------------------------------ steps
@dataclass
class InputGrad:
    """What one step sends to one input: its label, whether it is a leaf, the gradient (or None), and the sum of
    everything this input has received so far in this backward (``total``, from ``received`` contributions)."""
    label: str
    shape: tuple
    is_leaf: bool
    requires_grad: bool
    grad: Tensor | None
    total: Tensor | None = None
    received: int = 0


@dataclass
class BackwardStep:
    """One node of the backward pass, captured when the engine has just run its backward."""
    index: int                               # 1-based position in the order backward ran
    op: str                                  # the Function's class name
    params: str                              # its parameters as text ('axis=(1,), keepdims=False')
    rule: str                                # the local derivative rule
    output_shapes: list[tuple]
    grad_outputs: list[Tensor]               # the gradient arriving at each output (the sum of the contributions)
    inputs: list[InputGrad] = field(default_factory=list)
    fn: Function | None = field(default=None, repr=False)  # released after this step unless retain_graph
    output_labels: list[str] = field(default_factory=list)
    #: per output, the gradients that were summed into it: (where from, gradient); empty for an unused output
    contributions: list[list[tuple[str, Tensor]]] = field(default_factory=list)

    @property
    def grad_inputs(self) -> list[Tensor | None]:
        return [i.grad for i in self.inputs]

    @property
    def leaf_grads(self) -> list[tuple[str, Tensor]]:
        """(label, gradient) for every leaf this step delivers a gradient to."""
        return [(i.label, i.grad) for i in self.inputs if i.is_leaf and i.requires_grad and i.grad is not None]

    def __str__(self) -> str:
        return self.format()

    def format(self, full: bool = False, small: int | None = None) -> str:
        """The step as text; ``full=True`` prints every number, ``small`` overrides ``SMALL`` for this call."""
        fa = lambda a: format_array(a, small=small, full=full)  # noqa: E731
        head = f"step {self.index}: {self.op}" + (f"({self.params})" if self.params else "")
        outs = []
        for k, s in enumerate(self.output_shapes):
            label = self.output_labels[k] if k < len(self.output_labels) else ""
            outs.append(str(s) if not label or label.endswith(str(s)) else f"{label} {s}")
        lines = [f"{head}  -> output {'shapes' if len(outs) > 1 else 'shape'} {', '.join(outs)}"
                 if all(o.startswith("(") for o in outs) else f"{head}  -> output {', '.join(outs)}"]
        for k, g in enumerate(self.grad_outputs):
            which = f"[{k}]" if len(self.grad_outputs) > 1 else ""
            parts = self.contributions[k] if k < len(self.contributions) else []
            if len(parts) > 1:
                lines.append(f"  grad arriving{which}: the sum of {len(parts)} gradients")
                lines.extend(f"      from {src}: {fa(c)}" for src, c in parts)
                lines.append(f"      = {fa(g)}")
            else:
                lines.append(f"  grad arriving{which}: {fa(g)}")
        lines.append(f"  local rule:    {self.rule}")
        for k, inp in enumerate(self.inputs):
            where = f"input {k} ({inp.label}{'' if inp.label.endswith(str(inp.shape)) else ' ' + str(inp.shape)})"
            if not inp.requires_grad:
                lines.append(f"  to {where}: constant, no gradient")
                continue
            if inp.grad is None:
                lines.append(f"  to {where}: no gradient flows")
                continue
            acc = f"   -> accumulated into {inp.label}.grad" if inp.is_leaf else ""
            lines.append(f"  to {where}: {fa(inp.grad)}{acc}")
            if inp.received > 1:
                what = f"{inp.label}.grad" if inp.is_leaf else f"{inp.label}'s gradient"
                lines.append(f"      {what} so far, the sum of {inp.received}: {fa(inp.total)}")
        return "\n".join(lines)


def _plus(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else Tensor(a.data + b.data)


def backward_steps(loss: Tensor | Sequence[Tensor], grad=None, retain_graph: bool | None = None,
                   create_graph: bool = False, accumulate: bool = True) -> Iterator[BackwardStep]:
    """Run ``loss.backward(grad, retain_graph)`` one node at a time, yielding a ``BackwardStep`` per node.

    The backward really runs as you iterate: once the iterator is exhausted every leaf's ``.grad`` holds what
    ``loss.backward()`` would have put there (stop early and only part of it is done; ``accumulate=False`` leaves
    ``.grad`` alone). ``loss`` may also be a list of tensors, with ``grad`` a list of matching gradients.
    """
    if retain_graph is None:  # as Tensor.backward: a graph of gradients runs through this graph's nodes
        retain_graph = create_graph
    roots = [loss] if isinstance(loss, Tensor) else list(loss)
    grads = [grad] if isinstance(loss, Tensor) else (list(grad) if grad is not None else [None] * len(roots))
    names = graph_names(roots)
    # every gradient sent to a node so far: node_key -> [(from, gradient)]; the roots receive the seed
    received: dict = {}
    for r, g in zip(roots, grads):
        seed = Tensor(backend.xp_of(r.data).ones(r.shape, dtype=r.dtype)) if g is None else \
            (g if isinstance(g, Tensor) else Tensor(g))
        received.setdefault(node_key(r), []).append(("the start (d out/d out)", seed))
    it = backward_iter(roots, grads, retain_graph=retain_graph, create_graph=create_graph, accumulate=accumulate)
    for i, (fn, gouts, gins) in enumerate(it, start=1):
        out_meta = [tuple(s) for s, _ in fn._out_meta]
        contributions = [received.pop(("out", id(fn), k), []) for k in range(len(out_meta))]
        inputs = []
        for x, g in zip(fn.inputs, gins):
            key = node_key(x)
            if g is not None and x.requires_grad:
                received.setdefault(key, []).append((f"step {i} ({fn.name})", g))
            got = received.get(key, [])
            total = None
            for _, c in got:
                total = _plus(total, c)
            inputs.append(InputGrad(tensor_label(x, names), tuple(x.shape), x.creator is None, x.requires_grad, g,
                                    total, len(got)))
        yield BackwardStep(index=i, op=fn.name, params=op_params(fn), rule=op_rule(fn), output_shapes=out_meta,
                           grad_outputs=list(gouts), inputs=inputs, fn=fn,
                           output_labels=[output_label(fn, k, s, names) for k, s in enumerate(out_meta)],
                           contributions=contributions)


def collect_leaves(roots: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """Leaves that require grad, reachable from ``roots``, in the order they are first found (before backward)."""
    roots = [roots] if isinstance(roots, Tensor) else list(roots)
    leaves, seen_leaf, seen_fn = [], set(), set()
    stack = list(reversed(roots))
    while stack:
        t = stack.pop()
        if t.creator is None:
            if t.requires_grad and id(t) not in seen_leaf:
                seen_leaf.add(id(t))
                leaves.append(t)
            continue
        fn = t.creator
        if id(fn) in seen_fn or fn.__dict__.get("_released", False):
            continue
        seen_fn.add(id(fn))
        stack.extend(reversed(fn.inputs))
    return leaves


def node_gradients(roots: Tensor | Sequence[Tensor], grad=None) -> dict:
    """``node_key -> gradient`` of every node below ``roots`` (intermediates included), from one backward that
    keeps the graph and leaves every ``.grad`` as it was."""
    out = {}
    for step in backward_steps(roots, grad=grad, retain_graph=True, accumulate=False):
        for k, g in enumerate(step.grad_outputs):
            out[("out", id(step.fn), k)] = g
        for x, inp in zip(step.fn.inputs, step.inputs):
            if x.creator is None and inp.total is not None:
                out[("leaf", id(x))] = inp.total
    roots = [roots] if isinstance(roots, Tensor) else list(roots)
    for r in roots:  # a root that is a leaf itself: backward runs no node for it
        if r.creator is None and r.requires_grad:
            out.setdefault(node_key(r), Tensor(np.ones(r.shape, dtype=r.dtype)))
    return out


def print_backward(loss: Tensor, grad=None, retain_graph: bool = False, file=None,
                   full: bool = False) -> list[BackwardStep]:
    """Print every backward step, then each leaf's final ``.grad``; returns the steps."""
    leaves = collect_leaves(loss)
    steps = []
    for step in backward_steps(loss, grad=grad, retain_graph=retain_graph):
        print(step.format(full=full), file=file)
        steps.append(step)
    print("leaf gradients after backward:", file=file)
    for leaf in leaves:
        print(f"  {tensor_label(leaf)}.grad = {format_array(leaf.grad, full=full)}", file=file)
    return steps
