"""Draw a computation graph as Graphviz DOT text.

    print(ag.viz.to_dot(loss))                 # paste into https://dreampuf.github.io/GraphvizOnline
    ag.viz.save_dot(loss, "graph.dot")         # then: dot -Tsvg graph.dot -o graph.svg

One box per Tensor (its name or shape, dtype, value, and grad when it has one; small arrays shown in full, large
ones summarized), one ellipse per Function (the op's name), edges input -> op -> output. Leaves that require grad
are filled green, constants grey, the root(s) yellow. Draw before ``backward()`` (which frees the graph), or pass
``retain_graph=True`` to it: a freed node is drawn as ``<Op> (freed)`` without its inputs.
"""
from __future__ import annotations

from typing import Sequence

from .function import Function
from .tensor import Tensor
from .trace import _op_params, format_array

_LEAF_STYLE = 'shape=box, style="rounded,filled", fillcolor="#c8e6c9"'
_CONST_STYLE = 'shape=box, style="rounded,filled", fillcolor="#eeeeee"'
_ROOT_STYLE = 'shape=box, style="rounded,filled", fillcolor="#fff59d"'
_TENSOR_STYLE = 'shape=box, style=rounded'
_OP_STYLE = 'shape=ellipse, style=filled, fillcolor="#bbdefb"'


def _escape(text: str) -> str:
    """Make ``text`` safe inside a double-quoted DOT string; newlines become DOT's ``\\n`` line breaks."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _tensor_label(t: Tensor | None, shape, dtype, show_values: bool, small: int) -> str:
    lines = []
    name = getattr(t, "name", None) if t is not None else None
    lines.append(f"{name} {tuple(shape)}" if name else f"{tuple(shape)}")
    lines.append(str(dtype))
    if t is not None and show_values:
        lines.append("value " + format_array(t.data, small=small, with_shape=False))
        if t.grad is not None:
            lines.append("grad " + format_array(t.grad.data, small=small, with_shape=False))
    return "\n".join(lines)


def to_dot(root: Tensor | Sequence[Tensor], show_values: bool = True, small: int = 6,
           rankdir: str = "LR", name: str = "graph") -> str:
    """Graphviz DOT text of the graph that produced ``root`` (a Tensor or a list of them).

    ``show_values``: put each tensor's value (and grad, when set) in its box; ``small``: arrays with at most this
    many elements are shown in full, larger ones as shape/mean/std/min/max. ``rankdir``: 'LR' or 'TB'.
    """
    roots = [root] if isinstance(root, Tensor) else list(root)
    lines = [f'digraph "{_escape(name)}" {{', f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=10];', '  edge [fontsize=9];']
    tensor_ids: dict[object, str] = {}
    fn_ids: dict[int, str] = {}
    tensors: dict[str, tuple] = {}    # id -> (tensor or None, shape, dtype, style)
    edges: list[tuple[str, str]] = []
    root_keys = set()

    def key_of(t: Tensor):
        # several Tensor objects can stand for one op output (Function.output() makes new ones): key by the output
        return ("out", id(t.creator), t.out_index) if t.creator is not None else ("leaf", id(t))

    def tensor_node(t: Tensor) -> str:
        k = key_of(t)
        if k not in tensor_ids:
            tid = f"t{len(tensor_ids)}"
            tensor_ids[k] = tid
            if t.creator is None:
                style = _LEAF_STYLE if t.requires_grad else _CONST_STYLE
            else:
                style = _TENSOR_STYLE
            tensors[tid] = (t, t.shape, t.dtype, style)
        else:
            tid = tensor_ids[k]
            old = tensors[tid]
            if t.grad is not None and (old[0] is None or old[0].grad is None):
                tensors[tid] = (t,) + old[1:]   # prefer the object that carries a grad
        return tid

    stack: list[Function] = []
    for r in roots:
        tid = tensor_node(r)
        root_keys.add(tid)
        if r.creator is not None and id(r.creator) not in fn_ids:
            fn_ids[id(r.creator)] = f"f{len(fn_ids)}"
            stack.append(r.creator)
    fn_nodes: list[tuple[str, str]] = []
    while stack:
        fn = stack.pop()
        fid = fn_ids[id(fn)]
        released = fn.__dict__.get("_released", False)
        params = "" if released else _op_params(fn)
        label = f"{type(fn).__name__} (freed)" if released else type(fn).__name__ + (f"\n{params}" if params else "")
        fn_nodes.append((fid, label))
        if released:
            continue
        # the op's outputs: the tensors we have seen, plus placeholders for outputs nobody used (split)
        for i, (shape, dtype) in enumerate(fn._out_meta):
            k = ("out", id(fn), i)
            if k not in tensor_ids:
                tid = f"t{len(tensor_ids)}"
                tensor_ids[k] = tid
                tensors[tid] = (None, shape, dtype, _TENSOR_STYLE)
            edges.append((fid, tensor_ids[k]))
        for x in fn.inputs:
            tid = tensor_node(x)
            edges.append((tid, fid))
            c = x.creator
            if c is not None and id(c) not in fn_ids:
                fn_ids[id(c)] = f"f{len(fn_ids)}"
                stack.append(c)

    for tid, (t, shape, dtype, style) in tensors.items():
        if tid in root_keys:
            style = _ROOT_STYLE
        label = _escape(_tensor_label(t, shape, dtype, show_values, small))
        lines.append(f'  {tid} [label="{label}", {style}];')
    for fid, label in fn_nodes:
        lines.append(f'  {fid} [label="{_escape(label)}", {_OP_STYLE}];')
    seen = set()
    for a, b in edges:
        if (a, b) in seen:   # x * x: draw one edge, not two on top of each other
            continue
        seen.add((a, b))
        lines.append(f"  {a} -> {b};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def save_dot(root: Tensor | Sequence[Tensor], path: str, **kwargs) -> str:
    """Write ``to_dot(root, **kwargs)`` to ``path`` (render with ``dot -Tsvg path -o graph.svg``); returns path."""
    text = to_dot(root, **kwargs)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
