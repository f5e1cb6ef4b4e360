"""ag.viz.to_html: the interactive backward pass, checked as data and in a real headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import autograd as ag
from autograd import trace, viz_html

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="needs Chromium (Debian: apt-get install chromium)")


def expected_totals(loss) -> list[dict]:
    """The gradient each node holds after k steps, k = 0..N, from the engine's own steps (independent of the page)."""
    data = viz_html.page_data(loss)                       # only for the node ids of the graph's keys
    g = ag.viz.walk(loss)
    by_key = {g.keys[t]: t for t in g.tensors}
    totals = {g.roots[0]: np.ones(())}
    out = [dict(totals)]
    for step in trace.backward_steps(loss, retain_graph=True, accumulate=False):
        for x, inp in zip(step.fn.inputs, step.inputs):
            if inp.grad is not None and inp.requires_grad:
                node = by_key[trace.node_key(x)]
                totals[node] = totals.get(node, 0) + inp.grad.numpy()
        out.append(dict(totals))
    assert len(out) == len(data["steps"]) + 1
    return out


# ------------------------------------------------------------------------------------------------ without a browser
def test_page_is_self_contained_and_leaves_grad_alone(tmp_path):
    loss, params = viz_html.mlp_example()
    text = ag.viz.to_html(loss, str(tmp_path / "p.html"))
    assert (tmp_path / "p.html").read_text() == text
    assert all(p.grad is None for p in params)
    assert "<script src" not in text and "<link" not in text and "@import" not in text
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)   # only the SVG namespace name
    data = json.loads(re.search(r'<script id="graph-data" type="application/json">(.*?)</script>', text,
                                re.S).group(1))
    assert [s["op"] for s in data["steps"]] == ["Mean", "PowScalar", "Sub", "Add", "MatMul", "Tanh", "Add", "MatMul"]
    labels = {n["label"] for n in data["nodes"]}
    assert {"loss", "sq", "err", "out", "o", "h", "z", "a", "x", "y", "W1", "b1", "W2", "b2"} == labels
    loss.backward()                                       # the page kept the graph
    final = expected_totals(viz_html.mlp_example()[0])[-1]
    ref = viz_html.mlp_example()[0]
    ref_data = viz_html.page_data(ref)
    last = {}
    for s in ref_data["steps"]:
        for u in s["updates"]:
            last[u["node"]] = np.array(u["total"]["flat"]).reshape(u["total"]["shape"])
    for node, want in final.items():
        if node in last:
            np.testing.assert_allclose(last[node], want, rtol=1e-12)
    for p, node in zip(params, ("W1", "b1", "W2", "b2")):
        nid = next(n["id"] for n in ref_data["nodes"] if n["label"] == node)
        np.testing.assert_allclose(last[nid], p.grad.numpy(), rtol=1e-12)


def test_bad_roots_are_clear_errors():
    x = ag.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match="scalar"):
        ag.viz.to_html(x * 2.0)
    with pytest.raises(ValueError, match="does not require grad"):
        ag.viz.to_html(ag.Tensor(np.ones(())) * 2.0)
    loss = (x * 2.0).sum()
    loss.backward()
    with pytest.raises(ValueError, match="freed"):
        ag.viz.to_html(loss)


def test_non_finite_values_and_the_attention_head():
    loss, params = viz_html.attention_example()
    data = viz_html.page_data(loss)
    mask = next(n for n in data["nodes"] if n["label"] == "mask")
    assert "-inf" in mask["value"]["flat"] and mask["kind"] == "const"
    assert "Softmax" in [s["op"] for s in data["steps"]]
    loss2, params2 = viz_html.attention_example()
    loss2.backward()
    last = {}
    for s in data["steps"]:
        for u in s["updates"]:
            last[u["node"]] = u["total"]["flat"]
    for p in params2:
        nid = next(n["id"] for n in data["nodes"] if n["label"] == p.name)
        np.testing.assert_allclose(last[nid], p.grad.numpy().reshape(-1), rtol=1e-12)


def test_write_examples(tmp_path):
    paths = viz_html.write_examples(str(tmp_path))
    assert [Path(p).name for p in paths] == ["mlp_backward.html", "attention_backward.html"]
    with pytest.raises(ValueError, match="which"):
        viz_html.write_examples(str(tmp_path), "cnn")


# ------------------------------------------------------------------------------------------------ in Chromium
class _Dom(HTMLParser):
    """Collects the nodes' boxes (data-grad and the text of their grad lines), the counter and the panel."""

    def __init__(self):
        super().__init__()
        self.nodes, self.sends, self.counter, self._node, self._text_cls, self._in_counter = {}, [], None, None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "g" and "node" in a.get("class", ""):
            self._node = a["id"][len("node-"):]
            self.nodes[self._node] = {"data": a.get("data-grad", ""), "lines": [], "class": a["class"]}
        elif tag == "text" and self._node:
            self._text_cls = a.get("class", "")
        elif tag == "title" and self._node:
            self._text_cls = None                          # a cut line's tooltip: not what the box shows
        elif tag == "span" and a.get("id") == "step-counter":
            self.counter, self._in_counter = int(a["data-step"]), True
        elif tag == "div" and a.get("class") == "send":
            self.sends.append((a["data-node"], json.loads(a["data-grad"])))

    def handle_endtag(self, tag):
        if tag == "g":
            self._node = None
        if tag == "text":
            self._text_cls = None

    def handle_data(self, data):
        if self._node and self._text_cls == "grad" and data.strip():
            self.nodes[self._node]["lines"].append(data)


def chromium(*args: str) -> str:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def displayed_numbers(lines: list[str]) -> np.ndarray:
    text = " ".join(re.sub(r"^\s*grad\s+", "", ln) for ln in lines)
    return np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|-?inf", text)])


@needs_browser
@pytest.mark.parametrize("example", ["mlp", "attention"])
def test_every_displayed_gradient_is_the_engines(tmp_path, example):
    make = viz_html.mlp_example if example == "mlp" else viz_html.attention_example
    loss, _ = make()
    path = tmp_path / "page.html"
    data = viz_html.page_data(loss)
    ag.viz.to_html(loss, str(path))
    want = expected_totals(make()[0])
    n = len(data["steps"])
    kinds = {nd["id"]: nd["kind"] for nd in data["nodes"]}
    for k in sorted({0, 3, n}):
        dom = _Dom()
        dom.feed(chromium("--dump-dom", f"{path.as_uri()}#next={k}"))   # "next" clicked k times after loading
        assert dom.counter == k
        for node, shown in dom.nodes.items():
            expect = want[k].get(node)
            if expect is None:
                assert shown["data"] == "" and (shown["lines"] in (["grad not yet"], ["grad -"])), (k, node, shown)
                assert kinds[node] != "root"
                continue
            np.testing.assert_allclose(np.array(json.loads(shown["data"])), np.asarray(expect).reshape(-1),
                                       rtol=1e-12, err_msg=f"step {k} node {node}")
            assert not any("\u2026" in ln for ln in shown["lines"]), shown["lines"]   # every number fits
            np.testing.assert_allclose(displayed_numbers(shown["lines"]), np.asarray(expect).reshape(-1),
                                       rtol=2e-3, atol=1e-6, err_msg=f"step {k} node {node}: {shown['lines']}")
        if k:
            step = data["steps"][k - 1]
            assert [s[0] for s in dom.sends] == [s["node"] for s in step["sends"] if s["grad"] is not None]
            assert any("current" in dom.nodes[o]["class"] for o in step["outputs"])


@needs_browser
def test_screenshot(tmp_path):
    loss, _ = viz_html.mlp_example()
    path = tmp_path / "mlp.html"
    ag.viz.to_html(loss, str(path), title="a 2-layer MLP")
    shot = tmp_path / "mlp.png"
    chromium("--window-size=1500,1300", f"--screenshot={shot}", f"{path.as_uri()}#next=5")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1500, 1300)


def test_trace_command_writes_the_pages(tmp_path, capsys):
    from tinygrad_llm import cli
    assert cli.main(["trace", "--out", str(tmp_path), "--graph", "mlp"]) == 0
    assert (tmp_path / "mlp_backward.html").exists() and not (tmp_path / "attention_backward.html").exists()
    assert "mlp_backward.html" in capsys.readouterr().out


def test_an_unused_output_receives_zeros():
    x = ag.Tensor(np.arange(6.0), requires_grad=True, name="x")
    a, b, c = x.split(3)
    data = viz_html.page_data((a * 2.0).sum() + (b * b).sum())
    split = next(s for s in data["steps"] if s["op"] == "Split")
    unused = next(n["id"] for n in data["nodes"] if n["label"] == "Split[2]-out(2,)")
    assert {"node": unused, "total": {"shape": [2], "flat": [0.0, 0.0]}} in split["updates"]
    x_id = next(n["id"] for n in data["nodes"] if n["label"] == "x")
    assert [u["total"]["flat"] for u in split["updates"] if u["node"] == x_id] == [[2.0, 2.0, 4.0, 6.0, 0.0, 0.0]]
