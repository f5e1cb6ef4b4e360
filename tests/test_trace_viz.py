"""ag.trace (step-through backward) and ag.viz (Graphviz DOT), and the first example."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
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
    assert step.rule == "y = 2x; dy/dx = 2."
    assert "local rule:    y = 2x; dy/dx = 2." in str(step)


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
        assert re.search(rf'label="{name} \(', text)
    assert 'label="MatMul"' in text and 'label="Tanh"' in text and "exponent=2" in text
    assert text.count("#c8e6c9") == 4 and text.count("#eeeeee") == 2   # 4 parameters, 2 constant leaves
    assert "mean=" in text                               # (4, 5) activations are summarized


def test_to_dot_shows_grads_escapes_quotes_and_marks_freed_nodes(tmp_path):
    x = ag.Tensor(np.array([1.0, 2.0]), requires_grad=True, name='x "quoted" \\ back')
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    text = viz.to_dot(loss)
    parse_dot(text)
    assert '\\"quoted\\"' in text and "\\\\ back" in text
    assert "grad [2, 4]" in text
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


# ------------------------------------------------------------------------------------------------ the example
def test_example_01_runs_and_agrees():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "01_backprop_by_hand.py")], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "they agree" in out.stdout and "step 8: MatMul" in out.stdout and "digraph" in out.stdout


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
