"""Pipeline parallelism: a GPT's blocks split into stages on several devices, micro-batches scheduled over them.

    pipe = PipelineParallel(model, ["cuda:0", "cuda:1"], n_micro=8, schedule="1f1b")
    loss = pipe.train_step(idx, targets)      # forward + backward of the whole batch; grads are in the params
    opt.step(); opt.zero_grad()

Stage s holds a contiguous run of blocks on ``devices[s]``; stage 0 also holds the embeddings, the last stage the
final norm and the LM head, whose product and cross-entropy run as one chunked op in training (as ``GPT.loss``: the
(B, T, V) logits never exist whole). Each stage runs as its own piece of graph: its input is a leaf copy of the previous
stage's output moved with the engine's differentiable device copy (``Tensor.to(device)``, ordered against both
GPUs' streams with CUDA events in ``autograd.backend.to_device``), so the backward of stage s ends by copying the
input gradient back to stage s-1's device, and stage s-1's backward starts from it. That makes every
(stage, micro-batch, forward/backward) an operation the schedule can order freely:

- ``gpipe``: all forwards, then all backwards (holds m micro-batches' activations);
- ``1f1b``: each stage does (p - s - 1) warm-up forwards, then alternates one forward and one backward
  (holds at most p micro-batches' activations per stage; the same bubble, less memory).

Ops run from one Python thread in the order a tick-by-tick simulation of the schedule gives; on GPUs, CuPy launches
are asynchronous, so kernels of different stages queued back to back run concurrently on their devices. Ideal
efficiency (the bubble) for p stages and m micro-batches: m / (m + p - 1).

The result equals single-device training: the loss of micro-batch j is weighted by its share of the batch's
target tokens (those != ignore_index), so the summed gradients are exactly those of the whole batch's mean loss.
A mixture of experts adds each micro-batch's load-balancing loss over the MoE layers of every stage: the routing
counts of all stages are summed on the last device once the micro-batch's forward has reached it (before any stage's
backward of it), each stage backpropagates its share with its output, and the micro-batches' losses are averaged,
as gradient accumulation over the same micro-batches computes them.
Weight tying across devices: when ``lm_head.weight`` is ``tok_emb.weight`` and the last stage lives elsewhere, the
head uses a copy of the embedding matrix made once per step; its gradient is added to the embedding's at the end.
Every stage operation runs with its GPU as CuPy's current device (``backend.device_scope``): CuPy computes only there.
"""
from __future__ import annotations

import numpy as np

from autograd import Tensor, backend
from autograd import functional as F
from autograd.backward import run_backward
from autograd.grad_mode import no_grad

from ..model.blocks import balancing_term, routing_counts
from ..nn.layers import Linear
from .data_parallel import unique_parameters


# Cross-GPU copies (ordered against both GPUs' streams) and the current-device scope are the engine's:
# backend.to_device / backend.device_scope, and Tensor.to(device) as the differentiable copy between stages.


class Stage:
    """Blocks ``[lo, hi)`` of the model on ``device``; ``first``/``last`` also run the embeddings / head."""

    def __init__(self, model, index: int, lo: int, hi: int, device: str, first: bool, last: bool):
        self.model, self.index, self.lo, self.hi = model, index, lo, hi
        self.device, self.first, self.last = device, first, last
        self.head_weight: Tensor | None = None   # during a train step: this device's copy of a tied embedding

    def __call__(self, x, start: int = 0, router_log: list | None = None):
        """This stage's forward: activations (B, T, C) between stages, logits (B, T, V) out of the last one.
        ``router_log``: a list its mixture-of-experts layers append their routing to."""
        x = self._hidden(x, start, router_log)
        if self.last:
            m = self.model
            w, tied_copy = self._head_weight()
            x = F.linear(x, w, None) if tied_copy else m.lm_head(x)
            x = m.soft_cap(x)
        return x

    def loss(self, x, targets, ignore_index: int = -100, router_log: list | None = None) -> Tensor:
        """The last stage's forward to the mean cross-entropy against targets (B, T): the head and the loss are one
        chunked op (``F.linear_cross_entropy``, as ``GPT.loss``), so the (B, T, V) logits never exist whole; a head
        that changes the product (LoRA's) goes through the logits."""
        m = self.model
        if type(m.lm_head) is not Linear:
            return F.cross_entropy(self(x, 0, router_log), targets, ignore_index=ignore_index)
        w, tied_copy = self._head_weight()
        return F.linear_cross_entropy(self._hidden(x, 0, router_log), w, targets, None if tied_copy else m.lm_head.bias,
                                      ignore_index=ignore_index, softcap=m.config.final_logit_softcap)

    def _hidden(self, x, start: int, router_log: list | None = None):
        """Embeddings (first stage), the blocks, and the final norm (last stage)."""
        m = self.model
        if self.first:                      # x: token ids (B, T) on this device
            x = m.embed(x, start)
        for i in range(self.lo, self.hi):
            x = m.blocks[i](x, None, router_log)
        return m.final_norm(x) if self.last else x

    def _head_weight(self):
        """(the LM head's weight on this device, whether it is a copy of a tied embedding living on stage 0)."""
        m = self.model
        w = self.head_weight if self.head_weight is not None else m.lm_head.weight
        if w is not m.lm_head.weight or backend.device_of(w.data) != backend.canonical_device(self.device):
            return w.to(self.device), True
        return w, False

    def __repr__(self) -> str:
        extra = (" +embeddings" if self.first else "") + (" +head" if self.last else "")
        blocks = f"blocks {self.lo}..{self.hi - 1}" if self.hi > self.lo else "no blocks"
        return f"Stage({self.index}: {blocks} on {self.device}{extra})"


def balance_by_cost(cfg, n_stages: int) -> list[int]:
    """Blocks per stage that minimise the slowest stage's FLOPs, counting the LM head on the last stage.

    Per token, a block costs about 24 C^2 (its six C x C-sized products) + 2 C T (causal attention over a context
    of T); the head costs 2 C V, which for GPT-2 124M is ~5 blocks, so the last stage gets fewer blocks.
    Contiguous split, exact (dynamic programming over the cut points); ties go to the earlier cut.
    """
    n, c = cfg.n_layer, cfg.n_embd
    block = 24 * c * c + 2 * c * cfg.context_length
    head = 2 * c * cfg.vocab_size
    best: dict[tuple[int, int], tuple[float, list[int]]] = {}

    def solve(start: int, stages: int) -> tuple[float, list[int]]:
        # blocks[start:] over `stages` stages, the last of which carries the head
        key = (start, stages)
        if key not in best:
            left = n - start
            if stages == 1:
                best[key] = (left * block + head, [left])
            else:
                options = []
                for k in range(left + 1):
                    rest, split = solve(start + k, stages - 1)
                    options.append((max(k * block, rest), [k] + split))
                best[key] = min(options, key=lambda o: o[0])
        return best[key]
    return solve(0, n_stages)[1]


def split_gpt(model, devices: list[str], balance: list[int] | None = None) -> list[Stage]:
    """Move ``model``'s parts onto ``devices`` (in place) and return one Stage per device.

    balance: blocks per stage (sums to n_layer); default ``balance_by_cost`` (the head's cost counted).
    """
    n = len(model.blocks)
    p = len(devices)
    if p < 1:
        raise ValueError("split_gpt needs at least one device")
    if balance is None:
        balance = balance_by_cost(model.config, p)
    if len(balance) != p or sum(balance) != n or min(balance) < 0:
        raise ValueError(f"split_gpt: balance {balance} must give each of {p} stages a count of blocks, "
                         f"summing to the model's {n} blocks")
    tied = model.lm_head.weight is model.tok_emb.weight
    model.tok_emb.to(devices[0])
    if getattr(model, "pos_emb", None) is not None and model.config.pos == "learned":
        model.pos_emb.to(devices[0])
    stages, lo = [], 0
    for s, (dev, k) in enumerate(zip(devices, balance)):
        for i in range(lo, lo + k):
            model.blocks[i].to(dev)
        stages.append(Stage(model, s, lo, lo + k, dev, s == 0, s == p - 1))
        lo += k
    model.final_norm.to(devices[-1])
    if not tied:
        model.lm_head.to(devices[-1])
    return stages


def schedule_ops(p: int, m: int, kind: str = "gpipe") -> list[list[tuple[str, int, int]]]:
    """The schedule as ticks: each tick lists the (op, stage, micro) run concurrently (op 'F' or 'B').

    Built by simulating p stages that each follow their own op list and may run an op once its inputs exist
    (F(s, j) after F(s-1, j); B(s, j) after B(s+1, j)); an op finished in tick t is usable in tick t+1.
    """
    if kind not in ("gpipe", "1f1b"):
        raise ValueError(f"unknown pipeline schedule {kind!r}: expected 'gpipe' or '1f1b'")
    lists = []
    for s in range(p):
        if kind == "gpipe":
            ops = [("F", j) for j in range(m)] + [("B", j) for j in range(m)]
        else:
            warm = min(p - s - 1, m)
            ops = [("F", j) for j in range(warm)]
            f, b = warm, 0
            while b < m:
                if f < m:
                    ops.append(("F", f))
                    f += 1
                ops.append(("B", b))
                b += 1
        lists.append(ops)
    done, pos, ticks = set(), [0] * p, []
    while any(pos[s] < len(lists[s]) for s in range(p)):
        tick = []
        for s in range(p):
            if pos[s] == len(lists[s]):
                continue
            op, j = lists[s][pos[s]]
            ok = (op == "F" and (s == 0 or ("F", s - 1, j) in done)) or \
                 (op == "B" and ("F", s, j) in done and (s == p - 1 or ("B", s + 1, j) in done))
            if ok:
                tick.append((op, s, j))
        if not tick:  # pragma: no cover - the schedules above never deadlock
            raise RuntimeError(f"pipeline schedule {kind} deadlocked")
        for op, s, j in tick:
            pos[s] += 1
        done.update(tick)
        ticks.append(tick)
    return ticks


class _Step:
    """One train step's state: the batch, the valid-token counts, the cut inputs and stage outputs by (stage, micro),
    the losses to report, and (mixture of experts) the routing logs and each stage's load-balancing share."""

    def __init__(self, idx, targets, n_valid: list, total: int, balance: bool):
        self.idx, self.targets, self.n_valid, self.total, self.balance = idx, targets, n_valid, total, balance
        self.inputs: dict[tuple[int, int], Tensor] = {}    # (stage, micro) -> leaf input of stage (s > 0)
        self.outputs: dict[tuple[int, int], Tensor] = {}   # (stage, micro) -> stage output (loss for the last)
        self.routing: dict[tuple[int, int], list] = {}     # (stage, micro) -> its MoE layers' router log
        self.aux: dict[tuple[int, int], Tensor] = {}       # (stage, micro) -> its share of the balancing loss
        self.losses: list = []


class PipelineParallel:
    """Train a GPT split over ``devices`` with ``n_micro`` micro-batches per step (see the module doc)."""

    def __init__(self, model, devices: list[str], n_micro: int = 4, schedule: str = "gpipe",
                 balance: list[int] | None = None, ignore_index: int = -100):
        self.model = model
        self.devices = [backend.canonical_device(d) for d in devices]
        self.stages = split_gpt(model, self.devices, balance)
        self.n_micro = int(n_micro)
        self.schedule = schedule
        self.ignore_index = ignore_index
        self.ticks = schedule_ops(len(self.stages), self.n_micro, schedule)

    def parameters(self):
        return unique_parameters(self.model)

    @property
    def ideal_efficiency(self) -> float:
        """m / (m + p - 1): the fraction of stage-time doing work in a perfectly balanced pipeline."""
        p, m = len(self.stages), self.n_micro
        return m / (m + p - 1)

    def _micro(self, a, j: int):
        b = a.shape[0]
        if b % self.n_micro:
            raise ValueError(f"PipelineParallel: batch of {b} rows does not split into {self.n_micro} micro-batches")
        k = b // self.n_micro
        return a[j * k:(j + 1) * k]

    def train_step(self, idx, targets) -> float:
        """Forward and backward of the batch (B, T) over every micro-batch; returns the batch's mean loss.

        Gradients accumulate into the parameters' ``.grad`` (call ``opt.zero_grad()`` between steps).
        """
        idx = idx.data if isinstance(idx, Tensor) else idx if hasattr(idx, "shape") else np.asarray(idx)
        targets = targets.data if isinstance(targets, Tensor) else targets if hasattr(targets, "shape") \
            else np.asarray(targets)
        tgt_host = backend.to_numpy(targets)
        n_valid = [int((self._micro(tgt_host, j) != self.ignore_index).sum()) for j in range(self.n_micro)]
        total = max(1, sum(n_valid))
        p = len(self.stages)
        # one host-to-device copy each, before any work is queued: a copy from host memory waits for the GPU
        # to go idle, which would stall the pipeline if done per micro-batch
        idx = backend.to_device(idx, self.stages[0].device)
        targets = backend.to_device(targets, self.stages[-1].device)
        cfg = self.model.config
        step = _Step(idx, targets, n_valid, total,
                     balance=bool(cfg.n_experts) and cfg.router_aux_loss_coef > 0 and self.model.training)
        last, w = self.stages[-1], self.model.lm_head.weight
        tied = self._tied_across_devices()
        if tied:
            # the head uses its own leaf copy of the embedding for the whole step: its gradient accumulates on the
            # last device (CuPy computes only on the current device) and is added to the embedding's once, below
            last.head_weight = Tensor(backend.to_device(w.data, last.device), requires_grad=True)
        try:
            for tick in self.ticks:
                for op, s, j in tick:
                    st = self.stages[s]
                    with backend.device_scope(st.device):
                        self._run(op, s, j, st, p, step)
            if tied and last.head_weight.grad is not None:
                g = backend.to_device(last.head_weight.grad.data, self.stages[0].device)
                with backend.device_scope(self.stages[0].device):
                    w.grad = Tensor(g) if w.grad is None else Tensor(w.grad.data + g)
        finally:
            last.head_weight = None
        return float(sum(backend.to_numpy(l) for l in step.losses))

    def _tied_across_devices(self) -> bool:
        """True when the LM head reuses the token embedding and the two live on different devices."""
        w = self.model.lm_head.weight
        return w is self.model.tok_emb.weight and \
            backend.device_of(w.data) != backend.canonical_device(self.stages[-1].device)

    def _run(self, op, s, j, st, p, step: "_Step") -> None:
        """One scheduled operation: forward ('F') or backward ('B') of micro-batch j on stage s."""
        if op == "F":
            if s == 0:
                x = self._micro(step.idx, j)
            else:
                leaf = Tensor(step.outputs[(s - 1, j)].data, requires_grad=True)   # the cut between stages
                step.inputs[(s, j)] = leaf
                x = leaf.to(st.device)                               # differentiable device copy
            log = [] if step.balance else None
            if s == p - 1:
                out = st.loss(x, self._micro(step.targets, j), self.ignore_index, log) * (step.n_valid[j] / step.total)
                step.losses.append(out.data)
            else:
                out = st(x, 0, log)
            step.outputs[(s, j)] = out
            if log:
                step.routing[(s, j)] = log
            if s == p - 1 and step.balance:
                self._balancing_terms(j, step)
            return
        out = step.outputs.pop((s, j))
        term = step.aux.pop((s, j), None)
        extra = [term] if term is not None and term.requires_grad else []
        if s == p - 1:
            run_backward([out] + extra, [None] * (1 + len(extra)))
            return
        nxt = step.inputs.pop((s + 1, j))
        if not out.requires_grad:            # nothing trainable up to here (e.g. LoRA on later layers only)
            return
        g = nxt.grad
        if g is None:                        # no gradient reached the cut (cannot happen for a GPT)
            g = Tensor(backend.xp_of(nxt.data).zeros_like(nxt.data))
        elif g.device != st.device:          # keep it on this stage's device whatever the engine did
            g = Tensor(backend.to_device(g.data, st.device))
        run_backward([out] + extra, [g] + [None] * len(extra))

    def _balancing_terms(self, j: int, step: "_Step") -> None:
        """Micro-batch j's load-balancing loss (every stage's forward of j has run): the routing counts of all
        stages' MoE layers are summed on the last device, and each stage gets its share of the loss
        (``balancing_term``, on its device) to backpropagate with its output. Weighted 1 / n_micro: the mean of the
        micro-batches' losses, as gradient accumulation over them computes it."""
        cfg, last = self.model.config, self.stages[-1].device
        logs = {s: step.routing.pop((s, j)) for s in range(len(self.stages)) if (s, j) in step.routing}
        if not logs:
            return
        counts, rows = None, 0
        for s, log in logs.items():
            with backend.device_scope(self.stages[s].device):
                c, r = routing_counts(log, cfg.n_experts)
            c = backend.to_device(c, last)
            counts, rows = (c if counts is None else counts + c), rows + r
        frac = counts / rows
        for s, log in logs.items():
            dev = self.stages[s].device
            with backend.device_scope(dev):
                term = balancing_term(log, backend.to_device(frac, dev), rows, cfg.n_experts) * \
                    (cfg.router_aux_loss_coef / self.n_micro)
            step.aux[(s, j)] = term
            step.losses.append(term.data)

    def __call__(self, idx):
        """Inference forward of the whole batch through every stage: logits (B, T, V) on the last device."""
        with no_grad():
            x = backend.to_device(idx.data if isinstance(idx, Tensor) else np.asarray(idx), self.devices[0])
            for st in self.stages:
                with backend.device_scope(st.device):
                    x = st(x if st.first else x.to(st.device))
            return x
