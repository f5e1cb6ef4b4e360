"""ag.trace (step-through backward) and ag.viz (Graphviz DOT)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import autograd as ag
from autograd import trace, viz
from autograd.backward import backward_iter
from autograd.function import Function
from autograd.ops import elementwise, linalg, reduce, shape

ROOT = Path(__file__).resolve().parents[1]


def small_mlp(seed: int = 0):
    """x (4, 3) -> Linear(3, 5) -> tanh -> Linear(5, 2) -> MSE: returns (loss, named leaves)."""
    r = np.random.default_rng(seed)
    x, y = ag.Tensor(r.standard_normal((4, 3)), name="x"), ag.Tensor(r.standard_normal((4, 2)), name="y")
    W1 = ag.Tensor(r.standard_normal((3, 5)), requires_grad=True, name="W1")
    b1 = ag.Tensor(r.standard_normal(5), requires_grad=True, name="b1")
    W2 = ag.Tensor(r.standard_normal((5, 2)), requires_grad=True, name="W2")
    b2 = ag.Tensor(r.standard_normal(2), requires_grad=True, name="b2")
    loss = ((((x @ W1 + b1).tanh() @ W2 + b2) - y) ** 2).mean()
    return loss, [W1, b1, W2, b2]


# ------------------------------------------------------------------------------------------------ trace
def test_backward_steps_follow_the_engine_order_and_fill_grads():
    loss, leaves = small_mlp()
    steps = list(ag.trace.backward_steps(loss))
    assert [s.op for s in steps] == ["Mean", "PowScalar", "Sub", "Add", "MatMul", "Tanh", "Add", "MatMul"]
    assert [s.index for s in steps] == list(range(1, 9))

    ref, ref_leaves = small_mlp()
    expected_order = [fn.name for fn, _, _ in backward_iter([ref], [None])]
    assert [s.op for s in steps] == expected_order
    for got, want in zip(leaves, ref_leaves):     # the same gradients as loss.backward()
        np.testing.assert_allclose(got.grad.numpy(), want.grad.numpy(), rtol=1e-12)


def test_step_text_shows_op_shapes_rule_and_named_inputs():
    loss, (W1, b1, W2, b2) = small_mlp()
    steps = list(trace.backward_steps(loss))
    text = [str(s) for s in steps]
    assert text[0].startswith("step 1: Mean")
    assert "output shape ()" in text[0] and "grad arriving: 1" in text[0]
    matmul2 = text[4]
    assert "step 5: MatMul" in matmul2 and "output shape (4, 2)" in matmul2
    assert "d(x@W)/dx = g @ W^T" in matmul2
    assert "W2 (5, 2)" in matmul2 and "accumulated into W2.grad" in matmul2
    assert "Tanh-out(4, 5)" in matmul2           # the intermediate input is named by its op and shape
    assert "d tanh(x)/dx = 1 - tanh(x)^2" in text[5]
    assert "input 1 (y (4, 2)): constant, no gradient" in text[2]
    add1 = steps[3]
    assert add1.leaf_grads[0][0] == "b2"
    np.testing.assert_allclose(add1.leaf_grads[0][1].numpy(), b2.grad.numpy())


def test_mul_rule_and_small_values_printed():
    x = ag.Tensor(np.array([2.0, 3.0]), requires_grad=True, name="x")
    y = ag.Tensor(np.array([5.0, 7.0]), requires_grad=True, name="y")
    (step,) = [s for s in trace.backward_steps(x * y, grad=np.array([1.0, 1.0]))]
    text = str(step)
    assert "d(x*y)/dx = y" in text and "d(x*y)/dy = x" in text
    assert "to input 0 (x (2,)): [5, 7]" in text and "to input 1 (y (2,)): [2, 3]" in text
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 7.0])


def test_large_arrays_are_summarized():
    x = ag.Tensor(np.arange(100.0).reshape(10, 10), requires_grad=True)
    (step,) = list(trace.backward_steps(x.sum()))
    line = [ln for ln in str(step).splitlines() if "to input 0" in ln][0]
    assert "shape=(10, 10)" in line and "mean=1" in line and "std=0" in line and "min=1" in line and "max=1" in line
    assert trace.format_array(np.arange(100.0)).startswith("<shape=(100,) mean=49.5")
    assert trace.format_array(np.array([[1.0, 2.5]])) == "[[1, 2.5]]"


def test_retain_graph_and_multi_output_steps():
    x = ag.Tensor(np.arange(4.0), requires_grad=True, name="x")
    a, b = x.split(2)
    loss = (a * 2.0).sum() + (b * 3.0).sum()
    steps = list(trace.backward_steps(loss, retain_graph=True))
    split = [s for s in steps if s.op == "Split"][0]
    assert len(split.grad_outputs) == 2 and "grad arriving[1]" in str(split)
    assert "sections=2" in split.params
    loss.backward()                             # allowed: the graph was retained
    np.testing.assert_array_equal(x.grad.numpy(), [4, 4, 6, 6])


def test_print_backward_lists_leaf_grads(capsys):
    loss, leaves = small_mlp()
    steps = trace.print_backward(loss)
    out = capsys.readouterr().out
    assert len(steps) == 8 and "leaf gradients after backward:" in out
    for name in ("W1", "b1", "W2", "b2"):
        assert f"{name}.grad = " in out


def test_every_primitive_op_has_a_rule():
    missing = []
    for mod in (elementwise, reduce, shape, linalg):
        for name, cls in vars(mod).items():
            if isinstance(cls, type) and issubclass(cls, Function) and not name.startswith("_") \
                    and cls.__module__ == mod.__name__ and not cls.__dict__.get("rule"):
                missing.append(name)
    assert not missing, f"ops without a `rule` text: {missing}"


def test_rule_falls_back_to_docstring():
    class Twice(Function):
        """y = 2x; dy/dx = 2.

        More text that is not shown."""
        def forward(self, x):
            return x * 2

        def backward(self, gy):
            return gy * 2.0

    x = ag.Tensor(np.ones(2), requires_grad=True)
    (step,) = list(trace.backward_steps(Twice.apply(x).sum()))[1:]
    assert step.rule == "(no rule written) y = 2x; dy/dx = 2."
    assert "local rule:    (no rule written) y = 2x; dy/dx = 2." in str(step)


@pytest.mark.parametrize("op", ["Linear", "LayerNorm", "CrossEntropy", "Attention", "GeluTanh"])
def test_every_fused_op_has_a_rule(op):
    from autograd import functional as F
    r = np.random.default_rng(0)
    x = ag.Tensor(r.standard_normal((1, 1, 3, 4)), requires_grad=True)
    w = ag.Tensor(r.standard_normal((5, 4)), requires_grad=True)
    h = F.gelu(F.layer_norm(x, ag.Tensor(np.ones(4), requires_grad=True), ag.Tensor(np.zeros(4), requires_grad=True)))
    logits = F.linear(F.scaled_dot_product_attention(h, h, h), w).reshape(3, 5)
    steps = {s.op: s for s in trace.backward_steps(F.cross_entropy(logits, np.array([0, 1, 2])))}
    assert op in steps, sorted(steps)
    rule = steps[op].rule
    assert not rule.startswith("(no rule") and "d" in rule, f"{op}: {rule}"




def test_every_fused_function_has_a_rule():
    import importlib
    import pkgutil
    fused = pytest.importorskip("autograd.ops.fused")
    missing = []
    for info in pkgutil.iter_modules(fused.__path__):
        mod = importlib.import_module(f"{fused.__name__}.{info.name}")
        for name, cls in vars(mod).items():
            is_op = (isinstance(cls, type) and issubclass(cls, Function) and cls.__module__ == mod.__name__
                     and "forward" in cls.__dict__)          # base classes without a forward are not ops
            if is_op and trace.op_rule(cls).startswith("(no rule"):
                missing.append(f"{info.name}.{name}")
    assert not missing, f"fused ops without a `rule`: {missing}"


# ------------------------------------------------------------------------------------------------ DOT
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<arrow>->)|(?P<id>[A-Za-z_0-9.#]+)|(?P<punct>[{}\[\]=;,]))')


def parse_dot(text: str) -> tuple[set, list]:
    """A small DOT checker for what to_dot writes: `digraph ID { stmt* }` with statements `a = b;`,
    `node [k=v, ...];`, `ID [k=v, ...];` and `ID -> ID [attrs]?;`. Returns (declared nodes, edges); raises on error."""
    tokens, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad DOT near {text[pos:pos + 30]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    it = iter(tokens + [("end", None)])
    tok = next(it)

    def take(kind=None, value=None):
        nonlocal tok
        k, v = tok
        if (kind and k != kind) or (value is not None and v != value):
            raise ValueError(f"expected {value or kind}, got {v!r}")
        tok = next(it, ("end", None))
        return v

    def attrs():
        take("punct", "[")
        while tok != ("punct", "]"):
            take("id")
            take("punct", "=")
            if tok[0] not in ("id", "str"):
                raise ValueError(f"attribute value expected, got {tok[1]!r}")
            take()
            if tok == ("punct", ","):
                take()
        take("punct", "]")

    take("id", "digraph")
    if tok[0] in ("id", "str"):
        take()
    take("punct", "{")
    nodes, edges = set(), []
    while tok != ("punct", "}"):
        name = take(tok[0]) if tok[0] in ("id", "str") else take("id")
        if tok == ("punct", "="):
            take()
            take()
        elif tok[0] == "arrow":
            take()
            dst = take("id")
            edges.append((name, dst))
            if tok == ("punct", "["):
                attrs()
        elif tok == ("punct", "["):
            attrs()
            if name not in ("node", "edge", "graph"):
                nodes.add(name)
        take("punct", ";")
    take("punct", "}")
    take("end")
    for a, b in edges:
        if a not in nodes or b not in nodes:
            raise ValueError(f"edge {a} -> {b} uses an undeclared node")
    return nodes, edges


def test_parse_dot_rejects_broken_text():
    with pytest.raises(ValueError):
        parse_dot('digraph g { a [label="x"]; a -> b; }')     # b undeclared
    with pytest.raises(ValueError):
        parse_dot('digraph g { a [label="x"]; ')               # unbalanced
    with pytest.raises(ValueError):
        parse_dot('digraph g { a [label="x\\"]; }')           # string never closed


def test_to_dot_is_valid_and_complete():
    loss, leaves = small_mlp()
    text = viz.to_dot(loss)
    nodes, edges = parse_dot(text)
    ops = [n for n in nodes if n.startswith("f")]
    tensors = [n for n in nodes if n.startswith("t")]
    assert len(ops) == 8                                  # Mean PowScalar Sub Add MatMul Tanh Add MatMul
    assert len(tensors) == 8 + 6                          # 8 op outputs + x, y, W1, b1, W2, b2
    assert len(edges) == 8 + 13                           # one edge per output, one per input
    for name in ("W1", "b1", "W2", "b2", "x", "y"):
        assert re.search(rf'label="\{{ {name} \(', text)
    assert 'label="MatMul"' in text and 'label="Tanh"' in text and "exponent=2" in text
    assert text.count("#c8e6c9") == 4 and text.count("#eeeeee") == 2   # 4 parameters, 2 constant leaves
    assert "mean=" in text                               # (4, 5) activations are summarized
    assert "rankdir=LR" in text                          # 8 ops deep: left to right


def test_to_dot_shows_data_and_grad_on_every_node_without_touching_grad():
    loss, leaves = small_mlp()
    text = viz.to_dot(loss, small=100)
    boxes = [ln for ln in text.splitlines() if "shape=record" in ln]
    assert len(boxes) == 14 and all("| data " in b and "| grad " in b for b in boxes)
    assert all(leaf.grad is None for leaf in leaves)     # the drawing ran its own backward
    assert "grad 1 }" in text                            # the root
    ref, ref_leaves = small_mlp()
    ref.backward()
    b2 = [b for b in boxes if "{ b2 " in b][0]
    assert trace.format_array(ref_leaves[3].grad, small=100) in b2
    # intermediates: d loss / d(out - y) = 2 (out - y) / 8, and Sub and Add pass it on to out and to h @ W2
    diff = loss.creator.inputs[0].creator.inputs[0]
    want = "grad " + trace.format_array(2 * diff.data / 8, small=100, with_shape=False)
    assert sum(want in b for b in boxes) == 3
    loss.backward()                                      # still usable: the drawing kept the graph


def test_to_dot_escapes_record_specials_and_goes_top_down_when_deep():
    x = ag.Tensor(np.arange(20.0), requires_grad=True, name="x{a|b}<c>")
    h = x
    for _ in range(12):
        h = (h * 0.5).tanh()
    text = viz.to_dot(h.sum())
    parse_dot(text)
    assert "rankdir=TB" in text and "x\\{a\\|b\\}\\<c\\>" in text and "\\<mean=" in text
    assert "rankdir=LR" in viz.to_dot(h.sum(), rankdir="LR")
    with pytest.raises(ValueError, match="rankdir"):
        viz.to_dot(h.sum(), rankdir="sideways")


def test_to_dot_shows_grads_escapes_quotes_and_marks_freed_nodes(tmp_path):
    x = ag.Tensor(np.array([1.0, 2.0]), requires_grad=True, name='x "quoted" \\ back')
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    text = viz.to_dot(loss)
    parse_dot(text)
    assert '\\"quoted\\"' in text and "\\\\ back" in text
    assert "grad [2, 4]" in text and "grad 1 }" in text
    assert text.count("-> f") == 2                        # Sum's input, Mul's input (x * x drawn once)
    loss.backward()                                       # frees the graph
    freed = viz.to_dot(loss)
    parse_dot(freed)
    assert "(freed)" in freed
    path = viz.save_dot([loss], str(tmp_path / "g.dot"))
    assert Path(path).read_text() == freed


def test_to_dot_draws_unused_outputs_and_several_roots():
    x = ag.Tensor(np.arange(6.0), requires_grad=True)
    a, b, c = x.split(3)
    nodes, edges = parse_dot(viz.to_dot([a * 2.0, b], show_values=False))
    split_outputs = [e for e in edges if e[0] == "f1" or e[0] == "f0"]
    assert len([n for n in nodes if n.startswith("f")]) == 2
    assert len(split_outputs) >= 4                        # Mul -> out, Split -> a, b and the unused c


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_graphviz_dot_accepts_it(tmp_path):
    loss, _ = small_mlp()
    path = viz.save_dot(loss, str(tmp_path / "mlp.dot"))
    subprocess.run(["dot", "-Tsvg", path, "-o", str(tmp_path / "mlp.svg")], check=True, timeout=60)


@pytest.mark.filterwarnings("ignore")  # pyparsing deprecation noise inside pydot
def test_pydot_parses_it_when_installed():
    pydot = pytest.importorskip("pydot")
    loss, _ = small_mlp()
    (graph,) = pydot.graph_from_dot_data(viz.to_dot(loss))
    assert len(graph.get_edges()) == 21


@pytest.mark.gpu
def test_trace_and_dot_on_the_gpu():
    x = ag.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True, name="x").to("cuda")
    w = ag.Tensor(np.ones((3, 2)), requires_grad=True, name="w", device="cuda")
    loss = (x @ w).tanh().sum()
    parse_dot(viz.to_dot(loss))
    steps = list(trace.backward_steps(loss))
    assert [s.op for s in steps] == ["Sum", "Tanh", "MatMul", "ToDevice"]
    assert "accumulated into w.grad" in str(steps[2])
    assert w.grad.device.startswith("cuda")


# ------------------------------------------------------------------------------------------------ names, numbers, sums
def test_names_from_attribute_context_and_dict():
    x = ag.Tensor(np.array([1.0, 2.0]), requires_grad=True, name="x")
    with trace.named():
        h = x * 3.0
        out = (h * h).sum()
    assert h.name == "h" and out.name == "out" and x.name == "x"
    g = trace.named({"k": x * 2.0}, z=x + 1.0)
    assert isinstance(g, trace.named)
    steps = list(trace.backward_steps(out))
    assert [s.op for s in steps] == ["Sum", "Mul", "Mul"]
    assert "-> output out ()" in str(steps[0]) and "input 0 (Mul-out(2,))" in str(steps[0])
    assert "input 0 (h (2,))" in str(steps[1]) and "input 1 (h (2,))" in str(steps[1])
    assert "-> output h (2,)" in str(steps[2]) and "accumulated into x.grad" in str(steps[2])
    assert g.__class__ is trace.named
    with pytest.raises(TypeError, match="'bad' is a list"):
        trace.named(bad=[1.0])


def test_small_is_read_at_call_time_and_full_prints_everything(monkeypatch):
    a = np.arange(20.0)
    assert trace.format_array(a).startswith("<shape=(20,)")
    monkeypatch.setattr(trace, "SMALL", 50)
    assert trace.format_array(a) == "[" + ", ".join(str(i) for i in range(20)) + "]"
    monkeypatch.setattr(trace, "SMALL", 12)
    big = np.arange(2000.0).reshape(40, 50)
    assert len(re.findall(r"\d+", trace.format_array(big, full=True))) == 2000
    steps = list(trace.backward_steps((ag.Tensor(big, requires_grad=True) * 2.0).sum()))
    sent = [ln for ln in steps[1].format(full=True).splitlines() if "to input 0" in ln][0]
    assert "mean=" in str(steps[1]) and sent.count("2") == 2000 and "..." not in sent


def test_accumulation_is_shown_as_a_sum():
    x = ag.Tensor(np.array([1.0, 2.0]), requires_grad=True, name="x")
    h = x * 3.0
    h.name = "h"
    loss = (h * 2.0 + h.tanh()).sum()
    steps = list(trace.backward_steps(loss))
    by_op = {s.op: s for s in steps}
    assert by_op["Mul"].op == "Mul"
    h_step = [s for s in steps if s.output_labels == ["h"]][0]
    assert len(h_step.contributions[0]) == 2
    total = sum(c.data for _, c in h_step.contributions[0])
    np.testing.assert_allclose(h_step.grad_outputs[0].numpy(), total)
    np.testing.assert_allclose(total, 2.0 + (1 - np.tanh([3.0, 6.0]) ** 2))
    text = str(h_step)
    assert "the sum of 2 gradients" in text and "from step" in text and "      = [" in text
    # a leaf used twice: the second delivery shows the running sum
    w = ag.Tensor(np.array([0.5, -1.0]), requires_grad=True, name="w")
    steps = list(trace.backward_steps((w * w).sum()))
    assert "w.grad so far, the sum of 2: [1, -2]" in str(steps[-1])
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, -2.0])


def test_internal_fields_do_not_leak_into_params():
    from autograd import functional as F
    logits = ag.Tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    (step,) = list(trace.backward_steps(F.cross_entropy(logits, np.array([0, 1, 3]))))
    assert "None" not in step.params and "lse" not in step.params and "ignore_index=-100" in step.params


def test_retain_grad_keeps_intermediate_gradients():
    x = ag.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    h = (x * x).retain_grad()
    loss = (h * 3.0).sum()
    loss.backward(retain_graph=True)
    np.testing.assert_array_equal(h.grad.numpy(), [3.0, 3.0])
    loss.backward()                                   # accumulates, as a leaf's .grad does
    np.testing.assert_array_equal(h.grad.numpy(), [6.0, 6.0])
    np.testing.assert_array_equal(x.grad.numpy(), [12.0, -24.0])
    y = ag.Tensor(np.array([2.0]), requires_grad=True)
    k = (y * 5.0).retain_grad()
    (g,) = ag.grad((k * k).sum(), [y])                # ag.grad does not fill .grad
    assert k.grad is None and g.item() == 100.0
    assert y.retain_grad() is y and y.grad is None     # a leaf: nothing changes


def test_node_gradients_cover_intermediates_and_leave_grad_alone():
    loss, leaves = small_mlp()
    grads = trace.node_gradients(loss)
    assert all(leaf.grad is None for leaf in leaves)
    ref, ref_leaves = small_mlp()
    ref.backward()
    for leaf, want in zip(leaves, ref_leaves):
        np.testing.assert_allclose(grads[trace.node_key(leaf)].numpy(), want.grad.numpy(), rtol=1e-12)
    assert len(grads) == 8 + 4                         # every op output and every parameter


def test_to_dot_after_backward_shows_retained_gradients():
    x = ag.Tensor(np.array([1.0, -2.0]), requires_grad=True, name="x")
    h = (x * 3.0).retain_grad()
    h.name = "h"
    loss = (h * h).sum()
    loss.backward()                                       # frees the graph: nothing left to recompute
    text = viz.to_dot(h)                                  # the graph below h is freed: h's box keeps its grad
    parse_dot(text)
    assert "{ h (2,) float64 | data [3, -6] | grad [6, -12] }" in text and "Mul (freed)" in text
    np.testing.assert_array_equal(x.grad.numpy(), [18.0, -36.0])
