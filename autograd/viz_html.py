"""The backward pass as an interactive page: one self-contained HTML file (inline SVG, CSS and JavaScript).

    ag.viz.to_html(loss, "backward.html")      # open it, then click "next" (or press the right arrow key)

The page draws the graph (one box per tensor, the op that made it on top; the loss at the top, the inputs below)
and steps through the backward pass in the order the engine runs it. At each step the op's box is outlined, the
panel shows the gradient arriving at its output (each contribution and their sum when several consumers sent
one), the op's local rule and what it sends to each input, and every box shows the gradient it has accumulated so
far. ``#step=N`` in the address opens step N; ``#next=N`` clicks "next" N times after loading.

The numbers come from one real backward that keeps the graph and leaves ``.grad`` untouched
(``accumulate=False``): every gradient on the page is the engine's own, written with full float64 precision in
the nodes' ``data-grad`` attributes and shown to 4 significant digits.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from . import backend
from .tensor import Tensor
from .trace import backward_steps, format_array, op_params, op_rule
from .viz import Graph, walk
from .viz_page import PAGE

#: arrays with at most this many elements are written out in the boxes; larger ones are summarized
BOX_SMALL = 12
_W, _LINE, _PAD, _GAP_X, _GAP_Y = 250, 15, 6, 28, 30


def _array(a) -> object:
    """An array as nested lists for JSON; non-finite values as the strings 'inf', '-inf', 'nan'."""
    a = backend.to_numpy(a.data if isinstance(a, Tensor) else a).astype(np.float64)
    flat = [v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
            for v in a.reshape(-1).tolist()]
    return {"shape": list(a.shape), "flat": flat}


def _rows(shape) -> int:
    """Lines a value of this shape takes in a box: one per row of a small matrix, else one."""
    size = int(np.prod(shape)) if len(shape) else 1
    return int(shape[0]) if len(shape) == 2 and size <= BOX_SMALL else 1


def _layout(g: Graph, consumers: dict) -> dict:
    """Layered layout: the roots on layer 0, every other tensor one layer below the lowest tensor it feeds; within
    a layer, boxes ordered by the mean position of the boxes they feed (a few barycenter sweeps)."""
    layer = {t: 0 for t in g.roots}
    order = list(g.tensors)
    for _ in range(len(order)):   # longest path from the roots; the graph is acyclic so this settles
        changed = False
        for t in order:
            for c in consumers.get(t, ()):
                if c in layer and layer.get(t, -1) < layer[c] + 1:
                    layer[t] = layer[c] + 1
                    changed = True
        if not changed:
            break
    for t in order:
        layer.setdefault(t, 0)
    layers: dict[int, list[str]] = {}
    for t in order:
        layers.setdefault(layer[t], []).append(t)
    pos = {t: i for row in layers.values() for i, t in enumerate(row)}
    producers: dict[str, list[str]] = {}
    for t, cs in consumers.items():
        for c in cs:
            producers.setdefault(c, []).append(t)
    for sweep in range(6):
        rows = sorted(layers) if sweep % 2 == 0 else sorted(layers, reverse=True)
        for k in rows:
            near = consumers if sweep % 2 == 0 else producers
            def bary(t):
                ps = [pos[c] for c in near.get(t, ()) if c in pos]
                return sum(ps) / len(ps) if ps else pos[t]
            layers[k].sort(key=bary)
            for i, t in enumerate(layers[k]):
                pos[t] = i
    height = {t: _PAD * 2 + _LINE * (2 + _rows(g.tensors[t][1]) * 2) for t in order}
    width = max(len(row) for row in layers.values()) * (_W + _GAP_X)
    boxes, y = {}, 20
    for k in sorted(layers):
        row = layers[k]
        x0 = (width - len(row) * (_W + _GAP_X)) / 2 + _GAP_X / 2
        for i, t in enumerate(row):
            boxes[t] = {"x": x0 + i * (_W + _GAP_X), "y": y, "w": _W, "h": height[t]}
        y += max(height[t] for t in row) + _GAP_Y
    return {"boxes": boxes, "width": width + 20, "height": y}


def page_data(root: Tensor | Sequence[Tensor], title: str = "backward pass") -> dict:
    """Everything the page shows, as JSON-ready data: the boxes, the edges and the steps of one backward."""
    roots = [root] if isinstance(root, Tensor) else list(root)
    for r in roots:
        if r.size != 1:
            raise ValueError(f"to_html: the root must be a scalar (a loss), got shape {tuple(r.shape)}")
        if not r.requires_grad:
            raise ValueError("to_html: the root does not require grad, so there is no backward pass to show")
    g = walk(roots)
    if any(fn.__dict__.get("_released", False) for _, fn in g.ops):
        raise ValueError("to_html: the graph was freed by backward(); build it again, or call "
                         "backward(retain_graph=True) first")
    producer = {b: a for a, b in g.edges if a.startswith("f")}
    fn_of = {fid: fn for fid, fn in g.ops}
    op_outputs: dict[str, list[str]] = {}         # op -> its output tensors
    for a, b in g.edges:
        if a.startswith("f"):
            op_outputs.setdefault(a, []).append(b)
    consumers: dict[str, list[str]] = {}          # tensor -> the outputs of the ops it feeds
    edges = []                                    # tensor -> tensor: input -> output of one op
    for a, b in g.edges:
        if b.startswith("f"):
            for o in op_outputs.get(b, []):
                edges.append([a, o])
                if o not in consumers.setdefault(a, []):
                    consumers[a].append(o)
    by_key = {g.keys[t]: t for t in g.tensors}
    layout = _layout(g, consumers)
    nodes = []
    for tid, (t, shape, dtype) in g.tensors.items():
        key = g.keys[tid]
        fn = fn_of.get(producer.get(tid, ""))
        if tid in g.roots:
            kind = "root"
        elif key[0] == "leaf":
            kind = "param" if t.requires_grad else "const"
        else:
            kind = "op"
        op = "" if fn is None else fn.name + (f"[{key[2]}]" if len(fn._out_meta) > 1 else "")
        params = "" if fn is None else op_params(fn)
        label = g.label(tid)
        if key[0] == "leaf" and not t.name and key not in g.names and t.size == 1:
            label = format_array(t.data)              # an unnamed scalar constant reads as its value
        nodes.append({"id": tid, "label": label, "op": op, "params": params, "kind": kind,
                      "shape": list(shape), "dtype": str(dtype),
                      "value": _array(t.data) if t is not None else None, **layout["boxes"][tid]})
    steps = []
    seed = [{"node": t, "total": _array(np.ones(()))} for t in g.roots]
    for step in backward_steps(roots, retain_graph=True, accumulate=False):
        outputs = [by_key[("out", id(step.fn), k)] for k in range(len(step.output_shapes))]
        sends, updates = [], []
        for x, inp in zip(step.fn.inputs, step.inputs):
            node = by_key[("out", id(x.creator), x.out_index) if x.creator is not None else ("leaf", id(x))]
            sends.append({"node": node, "label": inp.label, "constant": not inp.requires_grad, "leaf": inp.is_leaf,
                          "grad": _array(inp.grad) if inp.grad is not None and inp.requires_grad else None,
                          "received": inp.received})
            if inp.total is not None:
                updates.append({"node": node, "total": _array(inp.total)})
        for o, gout, parts in zip(outputs, step.grad_outputs, step.contributions):
            if not parts:                             # an output nobody used (split): zeros arrive
                updates.append({"node": o, "total": _array(gout)})
        steps.append({"index": step.index, "op": step.op, "params": step.params, "rule": op_rule(step.fn),
                      "outputs": outputs, "sends": sends, "updates": updates,
                      "arriving": [{"node": o, "total": _array(gout),
                                    "parts": [{"from": src, "grad": _array(c)} for src, c in parts]}
                                   for o, gout, parts in zip(outputs, step.grad_outputs, step.contributions)]})
    return {"title": title, "nodes": nodes, "edges": edges, "steps": steps, "seed": seed,
            "width": layout["width"], "height": layout["height"], "small": BOX_SMALL}


def to_html(root: Tensor | Sequence[Tensor], path: str | None = None, title: str = "backward pass") -> str:
    """The page for the backward pass of ``root`` (a scalar loss whose graph is intact); written to ``path`` when
    given. Returns the HTML text. ``.grad`` of the leaves is left as it was."""
    data = page_data(root, title)
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")   # safe inside <script>
    text = PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


# ------------------------------------------------------------------------------------------------ two graphs to step
def mlp_example(seed: int = 0) -> tuple[Tensor, list[Tensor]]:
    """A 2-layer MLP's loss, small enough that every number fits on the page: x (2, 3) -> Linear(3, 3) -> tanh
    -> Linear(3, 1) -> mean squared error against y (2, 1). Returns (loss, [W1, b1, W2, b2])."""
    from .trace import named
    r = np.random.default_rng(seed)
    x, y = Tensor(r.standard_normal((2, 3)), name="x"), Tensor(r.standard_normal((2, 1)), name="y")
    W1 = Tensor(r.standard_normal((3, 3)) * 0.7, requires_grad=True, name="W1")
    b1 = Tensor(r.standard_normal(3) * 0.1, requires_grad=True, name="b1")
    W2 = Tensor(r.standard_normal((3, 1)) * 0.7, requires_grad=True, name="W2")
    b2 = Tensor(r.standard_normal(1) * 0.1, requires_grad=True, name="b2")
    with named():
        a = x @ W1
        z = a + b1
        h = z.tanh()
        o = h @ W2
        out = o + b2
        err = out - y
        sq = err ** 2
        loss = sq.mean()
    return loss, [W1, b1, W2, b2]


def attention_example(seed: int = 0) -> tuple[Tensor, list[Tensor]]:
    """One causal attention head on 3 tokens of width 2: q, k, v projections, scores, mask, softmax, weighted sum,
    and a squared-error loss. Returns (loss, [Wq, Wk, Wv])."""
    from .functional import softmax
    from .trace import named
    r = np.random.default_rng(seed)
    x, target = Tensor(r.standard_normal((3, 2)), name="x"), Tensor(r.standard_normal((3, 2)), name="target")
    Wq, Wk, Wv = (Tensor(r.standard_normal((2, 2)), requires_grad=True, name=n) for n in ("Wq", "Wk", "Wv"))
    mask = Tensor(np.triu(np.full((3, 3), -np.inf), k=1), name="mask")     # -inf above the diagonal: the future
    with named():
        q = x @ Wq
        k = x @ Wk
        v = x @ Wv
        scores = q @ k.T
        scaled = scores * (1 / math.sqrt(2))
        masked = scaled + mask
        A = softmax(masked)
        ctx = A @ v
        err = ctx - target
        sq = err * err
        loss = sq.sum()
    return loss, [Wq, Wk, Wv]


def write_examples(out_dir: str, which: str = "both") -> list[str]:
    """Write the MLP page and/or the attention-head page into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if which in ("mlp", "both"):
        loss, _ = mlp_example()
        paths.append(str(out / "mlp_backward.html"))
        to_html(loss, paths[-1], "a 2-layer MLP: x -> Linear -> tanh -> Linear -> MSE")
    if which in ("attention", "both"):
        loss, _ = attention_example()
        paths.append(str(out / "attention_backward.html"))
        to_html(loss, paths[-1], "one causal attention head: softmax(q k^T / sqrt(d) + mask) v")
    if not paths:
        raise ValueError(f"write_examples: which must be 'mlp', 'attention' or 'both', got {which!r}")
    return paths

