"""Self-attention step by step, on the 6-token sentence of Raschka's book (chapter 3), then the same numbers from
the library's attention layer.

    python examples/06_attention.py

Part 1 reproduces the book's simplified attention (no weights): the printed numbers match the book's.
Part 2 adds trainable query/key/value matrices, the 1/sqrt(d) scaling and the causal mask, by hand in NumPy.
Part 3 builds the library's attention layer with one head, copies the same matrices into it, and gets the same
output. (The book projects to d_out = 2; the library's attention maps width C to width C because its output is
added to the residual stream, so here d_out = d_in = 3. The book's random weights come from PyTorch's generator,
which we do not use, so part 2's numbers differ from the book's while the steps are the same.)

What to expect: scores 0.9544 1.4950 1.4754 0.8434 0.7070 1.0865 and weights 0.1385 0.2379 0.2333 0.1240 0.1082
0.1581 (the book's), the context vector [0.4419 0.6515 0.5683], a causal weight matrix with zeros above the
diagonal, and "largest difference from the hand-computed context vectors" below 1e-12.
"""
from __future__ import annotations

import numpy as np

from course import done, lesson, softmax  # softmax(s) = exp(s - max) / sum(exp(s - max))

import autograd as ag
import tinygrad_llm as tl

lesson("Lesson 06: attention step by step",
       "dot-product scores, softmax weights, context vectors, q/k/v projections, scaling, the causal mask",
       "the book's numbers (scores 0.9544 ... 1.0865, context [0.4419 0.6515 0.5683]); the library agrees to 1e-12")

np.set_printoptions(precision=4, suppress=True)

words = ["Your", "journey", "starts", "with", "one", "step"]
x = np.array([[0.43, 0.15, 0.89],   # Your
              [0.55, 0.87, 0.66],   # journey
              [0.57, 0.85, 0.64],   # starts
              [0.22, 0.58, 0.33],   # with
              [0.77, 0.25, 0.10],   # one
              [0.05, 0.80, 0.55]])  # step


def show(title: str, m: np.ndarray) -> None:
    print(f"\n{title}")
    if m.ndim == 1:
        print("  " + "  ".join(f"{w:>8}" for w in words[:len(m)]))
        print("  " + "  ".join(f"{v:8.4f}" for v in m))
        return
    cols = words if m.shape[1] == len(words) else [f"dim {j}" for j in range(m.shape[1])]
    print(" " * 10 + "".join(f"{c:>9}" for c in cols))
    for w, row in zip(words, m):
        print(f"  {w:<8}" + "".join("     -inf" if np.isneginf(v) else f"{v:9.4f}" for v in row))


print("The sentence as 3-d embeddings (one row per token):")
show("inputs x (6, 3)", x)

# ---------------------------------------------------------------------------------------------------- part 1
print("\n=== Part 1: simplified self-attention (no weights), query = 'journey' ===")
query = x[1]
scores = x @ query                                   # dot product of 'journey' with every token
show("attention scores  x . x_journey   (book: 0.9544 1.4950 1.4754 0.8434 0.7070 1.0865)", scores)
weights = softmax(scores)
show("attention weights softmax(scores) (book: 0.1385 0.2379 0.2333 0.1240 0.1082 0.1581)", weights)
print(f"\ncontext vector z_journey = sum_i weights_i * x_i = {weights @ x}   (book: [0.4419 0.6515 0.5683])")
all_ctx = softmax(x @ x.T) @ x
show("all context vectors: softmax(x x^T) x", all_ctx)

# ---------------------------------------------------------------------------------------------------- part 2
print("\n=== Part 2: trainable weights, scaling, causal mask (NumPy by hand) ===")
d = 3
rng = np.random.default_rng(123)
W_q, W_k, W_v = (rng.random((3, d)) for _ in range(3))    # (d_in, d_out), as in the book
Q, K, V = x @ W_q, x @ W_k, x @ W_v
show("queries Q = x W_q", Q)
scores = Q @ K.T
show("scores Q K^T", scores)
mask = np.triu(np.ones((6, 6), dtype=bool), k=1)       # True above the diagonal: the future
masked = np.where(mask, -np.inf, scores / np.sqrt(d))
show("scaled by 1/sqrt(d) and causally masked (a token cannot look ahead)", masked)
A = softmax(masked)
show("attention weights: softmax of each row (rows sum to 1, zeros above the diagonal)", A)
context = A @ V
show("context vectors A V", context)

# ---------------------------------------------------------------------------------------------------- part 3
print("\n=== Part 3: the library's attention layer (1 head) with the same weights ===")
# the attention of a one-block, one-head GPT of width 3 (the model's own layer, taken from its first block)
cfg = tl.GPTConfig(vocab_size=8, context_length=6, n_layer=1, n_head=1, n_embd=3, qkv_bias=False, bias=True,
                   dropout=0.0)
attn = tl.GPT(cfg, dtype=np.float64).blocks[0].attn
# qkv.weight is (3 * d, d_in) in PyTorch's (out, in) layout: the rows are [W_q^T; W_k^T; W_v^T]
attn.qkv.weight.data[...] = np.concatenate([W_q.T, W_k.T, W_v.T], axis=0)
attn.proj.weight.data[...] = np.eye(3)                 # the output projection set to the identity
attn.proj.bias.data[...] = 0.0
attn.eval()
with ag.no_grad():
    out = attn(ag.Tensor(x[None])).data[0]              # (1, 6, 3) batch of one sentence
show("the library's attention output", out)
err = np.abs(out - context).max()
print(f"\nlargest difference from the hand-computed context vectors: {err:.2e}")
assert err < 1e-12, "the library and the hand computation disagree"
print("They agree: scores, mask, softmax and weighted sum are what the attention layer computes (in one fused op).")
done(f"the library's attention equals the hand computation (largest difference {err:.1e})")
