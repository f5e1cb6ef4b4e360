"""Step through the backward pass one node at a time, the way you would do the chain rule by hand.

    steps = ag.trace.backward_steps(loss)      # runs the real backward: leaf .grad is filled as by loss.backward()
    for step in steps:
        print(step)

Each ``BackwardStep`` is one Function in the order the engine runs them (reverse topological order). Printing it
shows the op (with its parameters), its output shape, the gradient arriving at that output, the op's local rule
(``d(x*y)/dx = y``), and the gradient sent to each input, naming leaves by their ``.name`` when they have one.
A leaf that receives a gradient is marked ``-> accumulated into <leaf>.grad``.

``print_backward(loss)`` prints every step and then the final ``.grad`` of every leaf.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from . import backend
from .backward import backward_iter
from .function import Function
from .tensor import Tensor

#: arrays with at most this many elements are printed in full; larger ones are summarized
SMALL = 12


def format_array(a, small: int = SMALL, precision: int = 4, with_shape: bool = True) -> str:
    """Short text for an array: the values when it has at most ``small`` elements, else (shape and) statistics."""
    if a is None:
        return "None"
    if isinstance(a, Tensor):
        a = a.data
    a = backend.to_numpy(a)
    if a.size <= small:
        if a.ndim == 0:
            return np.format_float_positional(float(a), precision=precision, trim="-") if a.dtype.kind == "f" \
                else str(a.item())
        fmt = {"float_kind": lambda v: f"{v:.{precision}g}"}
        body = np.array2string(a, separator=", ", formatter=fmt, max_line_width=10_000)
        return " ".join(body.split())  # one line even for 2-D arrays
    if a.size == 0:
        return f"<empty {a.shape}>"
    if a.dtype.kind not in "fiu":
        return f"<{a.dtype} shape={a.shape}>"
    f = a.astype(np.float64)
    shape = f"shape={a.shape} " if with_shape else ""
    return f"<{shape}mean={f.mean():.4g} std={f.std():.4g} min={f.min():.4g} max={f.max():.4g}>"


def op_rule(fn: Function | type) -> str:
    """The local derivative rule of an op: its ``rule`` attribute, else the first line of its docstring."""
    cls = fn if isinstance(fn, type) else type(fn)
    rule = getattr(cls, "rule", None)
    if rule:
        return rule
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else f"(no rule written for {cls.__name__})"


def _op_params(fn: Function) -> str:
    """The op's small parameters (axis, shape, exponent ...) as ``k=v`` text; arrays and tensors left out."""
    skip = {"inputs", "axes", "count", "denominator", "basic"}  # internals that forward derives
    parts = []
    for k, v in vars(fn).items():
        if k.startswith("_") or k in skip:
            continue
        if isinstance(v, (bool, int, float, str, type(None), np.dtype)) or (
                isinstance(v, tuple) and len(v) <= 6 and all(isinstance(e, (int, type(None))) for e in v)):
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def tensor_label(t: Tensor) -> str:
    """How a tensor is named in the printout: its ``.name``, or the op that made it and its shape."""
    if getattr(t, "name", None):
        return str(t.name)
    if t.creator is None:
        return f"leaf{tuple(t.shape)}"
    idx = f"[{t.out_index}]" if t.out_index else ""
    return f"{t.creator.name}{idx}-out{tuple(t.shape)}"


@dataclass
class InputGrad:
    """What one step sends to one input: the input's label, whether it is a leaf, and the gradient (or None)."""
    label: str
    shape: tuple
    is_leaf: bool
    requires_grad: bool
    grad: Tensor | None


@dataclass
class BackwardStep:
    """One node of the backward pass, captured when the engine has just run its backward."""
    index: int                               # 1-based position in the order backward ran
    op: str                                  # the Function's class name
    params: str                              # its parameters as text ('axis=(1,), keepdims=False')
    rule: str                                # the local derivative rule
    output_shapes: list[tuple]
    grad_outputs: list[Tensor]               # the gradient arriving at each output
    inputs: list[InputGrad] = field(default_factory=list)
    fn: Function | None = field(default=None, repr=False)  # released after this step unless retain_graph

    @property
    def grad_inputs(self) -> list[Tensor | None]:
        return [i.grad for i in self.inputs]

    @property
    def leaf_grads(self) -> list[tuple[str, Tensor]]:
        """(label, gradient) for every leaf this step delivers a gradient to."""
        return [(i.label, i.grad) for i in self.inputs if i.is_leaf and i.requires_grad and i.grad is not None]

    def __str__(self) -> str:
        head = f"step {self.index}: {self.op}" + (f"({self.params})" if self.params else "")
        shapes = ", ".join(str(s) for s in self.output_shapes)
        lines = [f"{head}  -> output {'shapes' if len(self.output_shapes) > 1 else 'shape'} {shapes}"]
        for k, g in enumerate(self.grad_outputs):
            which = f"[{k}]" if len(self.grad_outputs) > 1 else ""
            lines.append(f"  grad arriving{which}: {format_array(g)}")
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
            lines.append(f"  to {where}: {format_array(inp.grad)}{acc}")
        return "\n".join(lines)


def _capture(index: int, fn: Function, grad_outputs, grad_inputs) -> BackwardStep:
    inputs = [InputGrad(tensor_label(x), tuple(x.shape), x.creator is None, x.requires_grad, g)
              for x, g in zip(fn.inputs, grad_inputs)]
    return BackwardStep(index=index, op=fn.name, params=_op_params(fn), rule=op_rule(fn),
                        output_shapes=[tuple(s) for s, _ in fn._out_meta], grad_outputs=list(grad_outputs),
                        inputs=inputs, fn=fn)


def backward_steps(loss: Tensor | Sequence[Tensor], grad=None, retain_graph: bool | None = None,
                   create_graph: bool = False) -> Iterator[BackwardStep]:
    """Run ``loss.backward(grad, retain_graph)`` one node at a time, yielding a ``BackwardStep`` per node.

    The backward really runs as you iterate: once the iterator is exhausted every leaf's ``.grad`` holds what
    ``loss.backward()`` would have put there (stop early and only part of it is done). ``loss`` may also be a
    list of tensors, with ``grad`` a list of matching gradients.
    """
    if retain_graph is None:  # as Tensor.backward: a graph of gradients runs through this graph's nodes
        retain_graph = create_graph
    roots = [loss] if isinstance(loss, Tensor) else list(loss)
    grads = [grad] if isinstance(loss, Tensor) else (list(grad) if grad is not None else [None] * len(roots))
    it = backward_iter(roots, grads, retain_graph=retain_graph, create_graph=create_graph)
    for i, (fn, gouts, gins) in enumerate(it, start=1):
        yield _capture(i, fn, gouts, gins)


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


def print_backward(loss: Tensor, grad=None, retain_graph: bool = False, file=None) -> list[BackwardStep]:
    """Print every backward step, then each leaf's final ``.grad``; returns the steps."""
    leaves = collect_leaves(loss)
    steps = []
    for step in backward_steps(loss, grad=grad, retain_graph=retain_graph):
        print(step, file=file)
        steps.append(step)
    print("leaf gradients after backward:", file=file)
    for leaf in leaves:
        print(f"  {tensor_label(leaf)}.grad = {format_array(leaf.grad)}", file=file)
    return steps
