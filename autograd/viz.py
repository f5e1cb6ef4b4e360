"""Draw a computation graph: Graphviz DOT text here, the interactive backward pass in ``viz_html``.

    print(ag.viz.to_dot(loss))                 # paste into https://dreampuf.github.io/GraphvizOnline
    ag.viz.save_dot(loss, "graph.dot")         # then: dot -Tsvg graph.dot -o graph.svg
    ag.viz.to_html(loss, "backward.html")      # open in a browser and click "next" through the backward pass

One box per Tensor showing ``name shape dtype | data | grad`` (as micrograd's draw_dot), one ellipse per Function
(the op's name and parameters), edges input -> op -> output. The gradient of every node, intermediates included,
is computed by one extra backward that keeps the graph and leaves ``.grad`` untouched; a graph already freed by
``backward()`` shows the gradients it kept (leaves, and tensors with ``retain_grad()``). Leaves that require grad
are filled green, constants grey, the root(s) yellow. Deep graphs are drawn top to bottom (``rankdir="auto"``).
A freed node is drawn as ``<Op> (freed)`` without its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .function import Function
from .tensor import Tensor
from .trace import format_array, graph_names, node_gradients, node_key, op_params, output_label

_LEAF_STYLE = 'shape=record, style="rounded,filled", fillcolor="#c8e6c9"'
_CONST_STYLE = 'shape=record, style="rounded,filled", fillcolor="#eeeeee"'
_ROOT_STYLE = 'shape=record, style="rounded,filled", fillcolor="#fff59d"'
_TENSOR_STYLE = 'shape=record, style=rounded'
_OP_STYLE = 'shape=ellipse, style=filled, fillcolor="#bbdefb"'
#: ``rankdir="auto"`` draws top to bottom when the longest input-to-root chain has more ops than this
DEEP = 8


@dataclass
class Graph:
    """The nodes of a graph, found by walking back from its roots (outputs before inputs).

    ``tensors``: node id -> (a Tensor standing for the node, or None for an output nobody used; shape; dtype);
    ``ops``: (op id, Function) in the order found; ``edges``: (from id, to id), input -> op -> output;
    ``keys``: node id -> ``trace.node_key``; ``depth``: op id -> ops on the longest chain from it to a root."""
    tensors: dict = field(default_factory=dict)
    ops: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    roots: list = field(default_factory=list)
    keys: dict = field(default_factory=dict)
    names: dict = field(default_factory=dict)

    def label(self, tid: str) -> str:
        t, shape, _ = self.tensors[tid]
        key = self.keys[tid]
        if t is not None and t.name:
            return str(t.name)
        if key in self.names:
            return self.names[key]
        if key[0] == "leaf":
            return f"leaf{tuple(shape)}"
        fn = next(f for _, f in self.ops if id(f) == key[1])
        return output_label(fn, key[2], tuple(shape))

    def longest_chain(self) -> int:
        """Ops on the longest path from an input to a root (how deep the drawing is)."""
        producer = {b: a for a, b in self.edges if a.startswith("f")}
        inputs: dict[str, list[str]] = {}
        for a, b in self.edges:
            if b.startswith("f"):
                inputs.setdefault(b, []).append(a)
        depth: dict[str, int] = {}
        for fid, _ in reversed(self.ops):  # found outputs-first, so reversed is inputs-first
            depth[fid] = 1 + max((depth.get(producer.get(t, ""), 0) for t in inputs.get(fid, [])), default=0)
        return max(depth.values(), default=0)


def walk(root: Tensor | Sequence[Tensor]) -> Graph:
    """Walk the graph below ``root`` (a Tensor or a list of them) into a ``Graph``."""
    roots = [root] if isinstance(root, Tensor) else list(root)
    g = Graph(names=graph_names(roots))
    tensor_ids: dict[object, str] = {}
    fn_ids: dict[int, str] = {}

    def tensor_node(t: Tensor) -> str:
        k = node_key(t)
        if k not in tensor_ids:
            tid = tensor_ids[k] = f"t{len(tensor_ids)}"
            g.tensors[tid], g.keys[tid] = (t, t.shape, t.dtype), k
        else:
            tid = tensor_ids[k]
            old = g.tensors[tid]
            if old[0] is None or (t.grad is not None and old[0].grad is None) or (t.name and not old[0].name):
                g.tensors[tid] = (t,) + old[1:]   # prefer the object that carries a grad or a name
        return tid

    stack: list[Function] = []
    for r in roots:
        g.roots.append(tensor_node(r))
        if r.creator is not None and id(r.creator) not in fn_ids:
            fn_ids[id(r.creator)] = f"f{len(fn_ids)}"
            stack.append(r.creator)
    while stack:
        fn = stack.pop()
        fid = fn_ids[id(fn)]
        g.ops.append((fid, fn))
        if fn.__dict__.get("_released", False):
            continue
        # the op's outputs: the tensors we have seen, plus placeholders for outputs nobody used (split)
        for i, (shape, dtype) in enumerate(fn._out_meta):
            k = ("out", id(fn), i)
            if k not in tensor_ids:
                tid = tensor_ids[k] = f"t{len(tensor_ids)}"
                g.tensors[tid], g.keys[tid] = (None, shape, dtype), k
            g.edges.append((fid, tensor_ids[k]))
        for x in fn.inputs:
            g.edges.append((tensor_node(x), fid))
            c = x.creator
            if c is not None and id(c) not in fn_ids:
                fn_ids[id(c)] = f"f{len(fn_ids)}"
                stack.append(c)
    return g


def gradients_of(root: Tensor | Sequence[Tensor], graph: Graph) -> dict:
    """node_key -> gradient for every node: computed by one graph-keeping backward when ``root`` is a scalar whose
    graph is intact, else only the gradients tensors kept (``.grad`` of leaves and ``retain_grad()`` tensors)."""
    roots = [root] if isinstance(root, Tensor) else list(root)
    intact = not any(fn.__dict__.get("_released", False) for _, fn in graph.ops)
    if intact and graph.ops and all(r.size == 1 and r.requires_grad for r in roots):
        return node_gradients(roots)
    return {graph.keys[tid]: t.grad for tid, (t, _, _) in graph.tensors.items() if t is not None and t.grad is not None}


def _record_escape(text: str) -> str:
    """Text for a field of a DOT record inside a double-quoted string: record specials and quotes escaped."""
    for ch in "\\{}|<>\"":
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", "\\n")


def _escape(text: str) -> str:
    """Make ``text`` safe inside a double-quoted DOT string; newlines become DOT's ``\\n`` line breaks."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_dot(root: Tensor | Sequence[Tensor], show_values: bool = True, small: int = 6, rankdir: str = "auto",
           name: str = "graph", grads: bool = True) -> str:
    """Graphviz DOT text of the graph that produced ``root`` (a Tensor or a list of them).

    ``show_values``: put each tensor's data and grad in its box; ``small``: arrays with at most this many elements
    are shown in full, larger ones as mean/std/min/max. ``rankdir``: 'LR', 'TB' or 'auto' (TB when the graph is
    deeper than ``DEEP`` ops). ``grads``: compute every node's gradient (see the module docstring); False shows
    only the ``.grad`` tensors hold.
    """
    g = walk(root)
    if rankdir == "auto":
        rankdir = "TB" if g.longest_chain() > DEEP else "LR"
    if rankdir not in ("LR", "TB", "RL", "BT"):
        raise ValueError(f"to_dot: rankdir must be 'LR', 'TB', 'RL', 'BT' or 'auto', got {rankdir!r}")
    if not show_values:
        node_grads = {}
    elif grads:
        node_grads = gradients_of(root, g)
    else:
        node_grads = {g.keys[t]: v[0].grad for t, v in g.tensors.items() if v[0] is not None and v[0].grad is not None}
    lines = [f'digraph "{_escape(name)}" {{', f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=10];', '  edge [fontsize=9];']
    for tid, (t, shape, dtype) in g.tensors.items():
        key = g.keys[tid]
        if tid in g.roots:
            style = _ROOT_STYLE
        elif key[0] == "leaf":
            style = _LEAF_STYLE if t.requires_grad else _CONST_STYLE
        else:
            style = _TENSOR_STYLE
        named = key[0] == "leaf" or key in g.names or (t is not None and t.name)
        fields = [(f"{g.label(tid)} " if named else "") + f"{tuple(shape)} {dtype}"]
        if show_values:
            fields.append("data " + (format_array(t.data, small=small, with_shape=False) if t is not None else "?"))
            grad = node_grads.get(key)
            fields.append("grad " + (format_array(grad, small=small, with_shape=False) if grad is not None else "-"))
        body = " | ".join(_record_escape(f) for f in fields)
        # a record's fields stack across the rank direction: braces turn them so data | grad read side by side
        label = "{ " + body + " }" if rankdir in ("LR", "RL") else body
        lines.append(f'  {tid} [label="{label}", {style}];')
    for fid, fn in g.ops:
        released = fn.__dict__.get("_released", False)
        params = "" if released else op_params(fn)
        label = f"{type(fn).__name__} (freed)" if released else type(fn).__name__ + (f"\n{params}" if params else "")
        lines.append(f'  {fid} [label="{_escape(label)}", {_OP_STYLE}];')
    seen = set()
    for a, b in g.edges:
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


def to_html(root: Tensor | Sequence[Tensor], path: str | None = None, **kwargs) -> str:
    """The interactive backward pass as one self-contained HTML page (see ``viz_html.to_html``)."""
    from .viz_html import to_html as _to_html
    return _to_html(root, path, **kwargs)
