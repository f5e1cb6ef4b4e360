"""The page template of ``viz_html``: inline CSS and JavaScript, no network. ``__DATA__`` is the graph as JSON."""

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #222; background: #fafafa; }
header { position: sticky; top: 0; z-index: 2; background: #263238; color: #fff; padding: 8px 14px;
         display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0 12px 0 0; font-weight: 600; }
button { font: inherit; padding: 4px 12px; border-radius: 4px; border: 1px solid #90a4ae; background: #eceff1;
         cursor: pointer; }
button:disabled { opacity: .45; cursor: default; }
#step-counter { font-weight: 600; min-width: 9em; }
main { display: flex; align-items: flex-start; }
#graph { flex: 1 1 auto; overflow: auto; padding: 8px; }
#panel { flex: 0 0 440px; position: sticky; top: 48px; max-height: calc(100vh - 60px); overflow: auto;
         background: #fff; border-left: 1px solid #cfd8dc; padding: 10px 14px; font-size: 13px; }
#panel h2 { font-size: 15px; margin: 4px 0 8px; }
#panel .rule { background: #e3f2fd; padding: 4px 6px; border-radius: 3px; font-family: monospace; }
#panel .arr { font-family: monospace; white-space: pre; background: #f5f5f5; padding: 3px 6px; margin: 2px 0 6px;
              border-radius: 3px; overflow-x: auto; }
#panel .what { color: #555; }
.legend span { display: inline-block; padding: 0 6px; margin-right: 4px; border-radius: 3px; color: #222;
                background: #fff; }
svg text { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 11px; }
svg .title { font-weight: 700; font-size: 12px; }
svg .sub { fill: #1565c0; }
svg .grad { fill: #b71c1c; }
.node rect { stroke: #78909c; stroke-width: 1.2; rx: 6; }
.kind-param rect { fill: #c8e6c9; } .kind-const rect { fill: #eeeeee; }
.kind-root rect { fill: #fff59d; } .kind-op rect { fill: #ffffff; }
.node.current rect { stroke: #ef6c00; stroke-width: 4; }
.node.receiving rect { stroke: #2e7d32; stroke-width: 3; stroke-dasharray: 6 3; }
.edge { fill: none; stroke: #90a4ae; stroke-width: 1.3; }
.edge.active { stroke: #ef6c00; stroke-width: 2.6; }
</style></head>
<body>
<header><h1>__TITLE__</h1>
<button id="first" title="back to the start">&laquo; first</button>
<button id="prev" title="previous step (left arrow)">&lsaquo; prev</button>
<button id="next" title="next step (right arrow)">next &rsaquo;</button>
<button id="last" title="the end of the backward pass">last &raquo;</button>
<span id="step-counter" data-step="0"></span>
<span class="legend"><span style="background:#fff59d">loss</span><span style="background:#c8e6c9">parameter</span><span
 style="background:#eee">constant</span><span style="border:3px solid #ef6c00">running</span><span
 style="border:3px dashed #2e7d32">receiving</span></span>
</header>
<main><div id="graph"></div><div id="panel"></div></main>
<script id="graph-data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("graph-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const byId = Object.fromEntries(D.nodes.map(n => [n.id, n]));
let step = 0;

function num(v) { return typeof v === "string" ? (v === "nan" ? NaN : (v === "inf" ? Infinity : -Infinity)) : v; }
function fmt(v) {
  if (typeof v === "string") return v;
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e-4 && a < 1e6) return String(Number(v.toPrecision(4)));
  return v.toExponential(3).replace(/\.?0+e/, "e");
}
// rows of text for an array: a small matrix one row per line, a small vector on one line, else statistics
function rows(arr, small) {
  const f = arr.flat, s = arr.shape, size = f.length;
  if (s.length === 0) return [fmt(f[0])];
  if (size > small) {
    const v = f.map(num), mean = v.reduce((a, b) => a + b, 0) / size;
    return ["mean=" + fmt(mean) + " min=" + fmt(Math.min(...v)) + " max=" + fmt(Math.max(...v))];
  }
  if (s.length === 2) {
    const out = [];
    for (let i = 0; i < s[0]; i++) out.push("[" + f.slice(i * s[1], (i + 1) * s[1]).map(fmt).join(", ") + "]");
    return out;
  }
  return ["[" + f.map(fmt).join(", ") + "]"];
}
// a box is BOX_CHARS characters wide: longer text is cut with an ellipsis, the whole of it in the tooltip
const BOX_CHARS = 35;
function setText(t, text) {
  t.textContent = text.length > BOX_CHARS ? text.slice(0, BOX_CHARS - 1) + "\u2026" : text;
  if (text.length > BOX_CHARS) el("title", {}, t).textContent = text;
}
function shapeText(s) { return "(" + s.join(", ") + (s.length === 1 ? ",)" : ")"); }
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}

// ---------------------------------------------------------------- drawing (boxes placed by the Python layout)
const svg = el("svg", {width: D.width, height: D.height, viewBox: `0 0 ${D.width} ${D.height}`});
document.getElementById("graph").appendChild(svg);
const defs = el("defs", {}, svg);
const mk = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
                         orient: "auto-start-reverse"}, defs);
el("path", {d: "M0,0 L10,5 L0,10 z", fill: "#90a4ae"}, mk);
const into = {};
D.edges.forEach(([a, b]) => { (into[b] = into[b] || []).push(a); });
const edgeEls = [];
D.edges.forEach(([a, b]) => {
  const A = byId[a], B = byId[b], ins = into[b], i = ins.indexOf(a);
  const x1 = A.x + A.w / 2, y1 = A.y, x2 = B.x + B.w * (i + 1) / (ins.length + 1), y2 = B.y + B.h;
  const my = (y1 + y2) / 2;
  const p = el("path", {d: `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`, class: "edge",
                        "marker-end": "url(#arrow)", "data-from": a, "data-to": b}, svg);
  edgeEls.push(p);
});
const gradText = {};
D.nodes.forEach(n => {
  const g = el("g", {class: "node kind-" + n.kind, id: "node-" + n.id, "data-label": n.label, "data-grad": ""}, svg);
  el("rect", {x: n.x, y: n.y, width: n.w, height: n.h}, g);
  let y = n.y + 20;
  const line = (text, cls) => { const t = el("text", {x: n.x + 8, y: y, class: cls || ""}, g); setText(t, text);
                                y += 15; return t; };
  line(n.label.endsWith(shapeText(n.shape)) ? n.label : n.label + " " + shapeText(n.shape), "title");
  const what = n.kind === "param" ? "parameter (leaf)" : n.kind === "const" ? "constant (no gradient)"
             : n.op + (n.params ? "(" + n.params + ")" : "") + (n.kind === "root" ? "  (the loss)" : "");
  line("= " + what, "sub");
  const vr = n.value ? rows(n.value, D.small) : ["?"];
  vr.forEach((r, i) => line((i ? "     " : "data ") + r));
  gradText[n.id] = vr.map((_, i) => line("", "grad"));
});

// ---------------------------------------------------------------- state: the gradient on each node after `step`
function totalsAt(k) {
  const tot = {};
  D.seed.forEach(s => { tot[s.node] = s.total; });
  for (let i = 0; i < k; i++) D.steps[i].updates.forEach(u => { tot[u.node] = u.total; });
  return tot;
}
function arrHTML(a) {
  if (!a) return "<i>none</i>";
  return `<div class="arr">${rows(a, 64).join("\n")}</div>`;
}
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }

function render() {
  const N = D.steps.length, tot = totalsAt(step), cur = step > 0 ? D.steps[step - 1] : null;
  const counter = document.getElementById("step-counter");
  counter.textContent = `step ${step} of ${N}`;
  counter.dataset.step = step;
  D.nodes.forEach(n => {
    const g = document.getElementById("node-" + n.id), t = tot[n.id];
    g.dataset.grad = t ? JSON.stringify(t.flat) : "";
    const lines = t ? rows(t, D.small) : (n.kind === "const" ? ["-"] : ["not yet"]);
    gradText[n.id].forEach((e, i) => setText(e, i < lines.length ? (i ? "     " : "grad ") + lines[i] : ""));
    g.classList.toggle("current", !!cur && cur.outputs.includes(n.id));
    g.classList.toggle("receiving", !!cur && cur.sends.some(s => s.node === n.id && s.grad));
  });
  edgeEls.forEach(p => p.classList.toggle("active", !!cur && cur.outputs.includes(p.dataset.to) &&
                                                    cur.sends.some(s => s.node === p.dataset.from && s.grad)));
  const panel = document.getElementById("panel");
  if (!cur) {
    const r = byId[D.seed[0].node];
    panel.innerHTML = `<h2>Start</h2><p>The backward pass begins at the loss <b>${esc(r.label)}</b> with
      d ${esc(r.label)} / d ${esc(r.label)} = 1.</p><p>Each step runs one op's backward, in the order the engine runs
      them (${N} steps): the gradient arriving at the op's output times the op's local rule gives what each input
      receives. The red <b>grad</b> lines show what every box has accumulated so far.</p>
      <p>Press <b>next</b> or the right arrow key.</p>`;
  } else {
    let h = `<h2>Step ${cur.index} of ${N}: ${esc(cur.op)}${cur.params ? "(" + esc(cur.params) + ")" : ""}</h2>`;
    cur.arriving.forEach(a => {
      const lab = esc(byId[a.node].label);
      if (a.parts.length > 1) {
        h += `<p class="what">grad arriving at <b>${lab}</b>: the sum of ${a.parts.length} gradients</p>`;
        a.parts.forEach(p => { h += `<div class="what">from ${esc(p.from)}:</div>${arrHTML(p.grad)}`; });
        h += `<div class="what">=</div><div class="arriving" data-node="${a.node}">${arrHTML(a.total)}</div>`;
      } else {
        h += `<p class="what">grad arriving at <b>${lab}</b>:</p>
              <div class="arriving" data-node="${a.node}">${arrHTML(a.total)}</div>`;
      }
    });
    h += `<p class="what">local rule:</p><div class="rule">${esc(cur.rule)}</div><p class="what">sends:</p>`;
    cur.sends.forEach(s => {
      const lab = esc(s.label);
      if (s.constant) { h += `<div class="what">to ${lab}: constant, no gradient</div>`; return; }
      if (!s.grad) { h += `<div class="what">to ${lab}: no gradient flows</div>`; return; }
      const acc = s.leaf ? ` (accumulated into ${lab}.grad${s.received > 1 ? ", now the sum of " + s.received : ""})`
                         : (s.received > 1 ? ` (its gradient is now the sum of ${s.received})` : "");
      h += `<div class="what">to <b>${lab}</b>${acc}:</div>
            <div class="send" data-node="${s.node}" data-grad='${JSON.stringify(s.grad.flat)}'>${arrHTML(s.grad)}</div>`;
    });
    panel.innerHTML = h;
  }
  document.getElementById("first").disabled = document.getElementById("prev").disabled = step === 0;
  document.getElementById("next").disabled = document.getElementById("last").disabled = step === N;
}
function go(k) { step = Math.max(0, Math.min(D.steps.length, k)); render(); }
document.getElementById("first").onclick = () => go(0);
document.getElementById("prev").onclick = () => go(step - 1);
document.getElementById("next").onclick = () => go(step + 1);
document.getElementById("last").onclick = () => go(D.steps.length);
document.addEventListener("keydown", e => { if (e.key === "ArrowRight") go(step + 1);
                                            if (e.key === "ArrowLeft") go(step - 1); });
function fromHash() {
  const m = /step=(\d+)/.exec(location.hash), n = /next=(\d+)/.exec(location.hash);
  go(m ? parseInt(m[1], 10) : 0);
  if (n) for (let i = 0; i < parseInt(n[1], 10); i++) document.getElementById("next").click();
}
window.addEventListener("hashchange", fromHash);
fromHash();
</script></body></html>
"""
