"""Where a training step's memory goes: an estimate before allocating anything, and the measured split.

    est = memory_estimate(GPTConfig.preset("gpt2-774m"), batch=8, precision="mixed", checkpointing=True)
    print(est)          # parameters, gradients, optimizer state, activations, total (MiB)

The estimate counts what the engine keeps on a GPU (CPU runs keep more: the NumPy kernels save extra arrays):

- parameters: float32 master weights, 4 bytes each; gradients: the same again (they exist whole at the end of
  backward, also under ZeRO-1, whose reduce-scatter runs after it).
- optimizer state: AdamW's two float32 moments, 8 bytes per parameter, divided by the world size under ZeRO-1.
- activations, per block, with n = B·T·C elements of the residual stream and the saved tensors of each op:
  the block input and the input of the second norm (float32, n each), the norms' outputs (float32 inputs of the
  matrix products, n each, plus under autocast each product's float16 copy), q, k, v and the attention output with
  a float32 log-sum-exp per row (the flash kernel and the float32 GEMM path both recompute the probabilities in
  backward), the merged heads (n), and the MLP's saved hidden states (GELU: its input and output,
  2 × B·T·hidden; gated MLPs: gate, up, activation and product, 4 × B·T·hidden). Under autocast every matrix
  product also saves its float16 copy of the weight.
  With checkpointing only each checkpointed block's input is kept, and one block is alive again while it is
  recomputed in backward.
- the head: the head and its loss are one op over chunks of rows (``F.linear_cross_entropy``, what ``GPT.loss``
  runs), so no B·T·V logits are kept; from its forward it keeps the final norm's input and output and the float32
  gradients of its input (B·T·C) and weight (V·C). While it runs: one chunk's float32 logits (about 256 MiB) with
  their 16-bit gradient under autocast, the chunk's share of the weight gradient and the 16-bit weight.

The peak is the largest of four moments: the head's forward (all activations, one chunk), the head's backward (the
gradients it hands on), the last block's attention backward (the float32 path rebuilds its B·H·T·T scores and their
gradient there) and the end of backward (every gradient, no activations left).
"""
from __future__ import annotations

from dataclasses import dataclass

from autograd.ops.fused.linear_cross_entropy import default_chunk_rows

__all__ = ["MemoryEstimate", "memory_estimate", "measured_memory"]

_MIB = 2 ** 20


@dataclass
class MemoryEstimate:
    """Bytes of one rank's training step, split by what holds them (``total``: the estimated peak)."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    total: int

    def __str__(self) -> str:
        rows = [("parameters", self.parameters), ("gradients", self.gradients), ("optimizer state", self.optimizer),
                ("activations", self.activations), ("peak", self.total)]
        return "\n".join(f"  {name:<16} {value / _MIB:>12,.0f} MiB" for name, value in rows)


def _compute_bytes(precision: str) -> int:
    if precision not in ("fp32", "tf32", "mixed", "bf16"):
        raise ValueError(f"memory_estimate: precision must be fp32, tf32, mixed or bf16, got {precision!r}")
    return 2 if precision in ("mixed", "bf16") else 4


def _block_activation_bytes(cfg, batch: int, seq: int, precision: str) -> tuple[int, int]:
    """(bytes a block keeps for backward, bytes of float16 weight copies it keeps under autocast)."""
    cb = _compute_bytes(precision)
    n = batch * seq * cfg.n_embd
    d, h, kv = cfg.head_dim, cfg.n_head, cfg.n_kv_heads or cfg.n_head
    q_elems, kv_elems = batch * seq * h * d, batch * seq * kv * d
    rows = batch * h * seq
    hidden = cfg.ffn_hidden_size
    gated = cfg.mlp != "gelu"
    saved = 2 * 4 * n                                   # block input, residual after attention (float32)
    saved += 2 * 4 * n                                  # the two norms' outputs (float32 inputs of the products)
    if cb == 2:                                         # ... and their float16 copies made inside each product
        saved += cb * n * (1 + (2 if gated else 1))
    saved += cb * (2 * q_elems + 2 * kv_elems) + 4 * rows    # q, k, v, the attention output, its log-sum-exp
    saved += cb * q_elems                               # merged heads, input of the output projection
    saved += cb * batch * seq * hidden * (4 if gated else 2)
    if cfg.post_norms:
        saved += 2 * 4 * n
    if cfg.qk_norm:
        saved += cb * (q_elems + kv_elems)
    weights = 0
    if precision in ("mixed", "bf16"):
        c = cfg.n_embd
        weights = 2 * (c * (h + 2 * kv) * d + h * d * c + (3 if gated else 2) * c * hidden)
    return saved, weights


def memory_estimate(cfg, batch: int, precision: str = "tf32", checkpointing: bool | int = False,
                    world_size: int = 1, shard_optimizer: bool = False, seq: int | None = None) -> MemoryEstimate:
    """Estimate one rank's peak bytes when training ``GPT(cfg)`` on batches of (batch, seq) tokens (seq: the
    context length by default). ``checkpointing``: True (every block) or k (every k-th block)."""
    seq = cfg.context_length if seq is None else int(seq)
    n_params = cfg.num_parameters()
    params, grads = 4 * n_params, 4 * n_params
    optimizer = 8 * n_params // (world_size if shard_optimizer else 1)
    block, weights = _block_activation_bytes(cfg, batch, seq, precision)
    every = int(checkpointing) if checkpointing is not True else 1
    n_ckpt = cfg.n_layer // every if every else 0
    input_bytes = 4 * batch * seq * cfg.n_embd
    layers = (cfg.n_layer - n_ckpt) * (block + weights) + n_ckpt * input_bytes
    if n_ckpt:
        layers += block + weights                       # the block being recomputed
    cb = _compute_bytes(precision)
    V, rows = cfg.vocab_size, batch * seq
    head_grad = 4 * V * cfg.n_embd                      # the head weight's float32 gradient
    # final norm input and output (the head's float32 input), the head's input and weight gradients from its forward
    activations = layers + 3 * input_bytes + head_grad
    chunk = default_chunk_rows(rows, V) * V * (4 + (cb if cb == 2 else 0)) + head_grad
    if cb == 2:
        chunk += cb * V * cfg.n_embd                    # the 16-bit weight
    # the float32 GEMM attention builds the B·H·T·T scores and their gradient again in backward (one block at a time)
    attention_backward = 0 if cb == 2 else 2 * 4 * batch * cfg.n_head * seq * seq
    head_forward = params + optimizer + activations + chunk
    start_of_backward = params + optimizer + activations + input_bytes + head_grad   # the gradients, scaled
    first_block = params + optimizer + layers + input_bytes + head_grad + attention_backward
    end_of_backward = params + optimizer + grads
    total = max(head_forward, start_of_backward, first_block, end_of_backward)
    return MemoryEstimate(params, grads, optimizer, activations, total)


def measured_memory(peak_bytes: int, model, optimizer) -> MemoryEstimate:
    """Split a measured peak: parameters, gradients and optimizer state from their arrays, the rest activations
    (and the allocator's temporaries)."""
    params = sum(p.data.nbytes for p in model.parameters())
    grads = params                                  # every float32 gradient is whole at the end of backward
    state = getattr(optimizer, "inner", optimizer).state
    opt = sum(v.nbytes for s in state.values() for v in s.values() if hasattr(v, "nbytes"))
    return MemoryEstimate(params, grads, opt, max(0, peak_bytes - params - grads - opt), peak_bytes)
