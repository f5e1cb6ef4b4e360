"""A GPT block by hand: LayerNorm, causal multi-head attention, GELU MLP and the two residual connections, in
NumPy, checked against the library's block.

    python examples/07_gpt_block.py

GPT-2's block is "pre-norm": each sub-layer reads a normalised copy of the residual stream and adds its output
back to the stream,

    x = x + attn(layer_norm_1(x))          # tokens look at earlier tokens
    x = x + mlp(layer_norm_2(x))           # each token is transformed on its own: fc -> GELU -> proj

LayerNorm rescales every token vector to mean 0 and variance 1, then applies a learned scale and shift. GELU is
the smooth ReLU GPT-2 uses, in its tanh form 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). The residual
additions let gradients reach early layers unchanged (d(x + f(x))/dx = 1 + f'(x)).

What to expect: normalised tokens with mean 0 and std 1, a GELU vs ReLU table (gelu(-1) = -0.1588,
gelu(1) = 0.8412), 12 C^2 + 13 C parameters per block, and the hand-made block equal to the library's to ~1e-15.
"""
from __future__ import annotations

import math

import numpy as np

from course import done, lesson, section, softmax

import autograd as ag
import tinygrad_llm as tl

np.set_printoptions(precision=4, suppress=True)
lesson("Lesson 07: a GPT block",
       "LayerNorm, GELU, causal multi-head attention and residual connections, as one pre-norm block",
       "LayerNorm output mean 0 / std 1; gelu(1) = 0.8412; the hand-made block = the library's block to ~1e-15")

B, T, C, H = 2, 5, 8, 2                                   # batch, tokens, width, heads
D = C // H                                                # width of one head
cfg = tl.GPTConfig(vocab_size=16, context_length=T, n_layer=1, n_head=H, n_embd=C, dropout=0.0)
block = tl.GPT(cfg, dtype=np.float64).blocks[0]          # the library's block (float64 for an exact comparison)
rng = np.random.default_rng(0)
for _, p in block.named_parameters():                     # random values everywhere, norms' scales included
    p.data[...] = rng.standard_normal(p.shape) * 0.5
P = {name: p.data for name, p in block.named_parameters()}
x = rng.standard_normal((B, T, C))


def layer_norm(v: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = cfg.norm_eps) -> np.ndarray:
    mean = v.mean(axis=-1, keepdims=True)
    var = v.var(axis=-1, keepdims=True)                   # the biased variance, as GPT-2
    return (v - mean) / np.sqrt(var + eps) * w + b


def gelu(v: np.ndarray) -> np.ndarray:
    return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))


section("LayerNorm: every token vector to mean 0, variance 1 (before the learned scale and shift)")
n = layer_norm(x, np.ones(C), np.zeros(C))
print(f"input token 0: mean {x[0, 0].mean():+.4f}, std {x[0, 0].std():.4f}")
print(f"normalised:    mean {n[0, 0].mean():+.4f}, std {n[0, 0].std():.4f}  (all tokens: max |mean| "
      f"{np.abs(n.mean(-1)).max():.1e}, std {n.std(-1).min():.4f}..{n.std(-1).max():.4f})")

section("GELU vs ReLU")
v = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
print("x      ", v)
print("relu(x)", np.maximum(v, 0))
print("gelu(x)", gelu(v), " (smooth, slightly negative for x < 0)")

section("the block by hand")
h = layer_norm(x, P["norm1.weight"], P["norm1.bias"])
qkv = h @ P["attn.qkv.weight"].T + P["attn.qkv.bias"]           # (B, T, 3C): PyTorch's (out, in) weight layout
q, k, val = np.split(qkv, 3, axis=-1)
heads = lambda a: a.reshape(B, T, H, D).transpose(0, 2, 1, 3)    # noqa: E731  (B, T, C) -> (B, H, T, D)
q, k, val = heads(q), heads(k), heads(val)
scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D)             # (B, H, T, T)
scores = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf, scores)   # no looking ahead
weights = softmax(scores)
ctx = (weights @ val).transpose(0, 2, 1, 3).reshape(B, T, C)     # heads side by side again
x1 = x + ctx @ P["attn.proj.weight"].T + P["attn.proj.bias"]     # residual 1
h2 = layer_norm(x1, P["norm2.weight"], P["norm2.bias"])
mlp = gelu(h2 @ P["ffn.fc.weight"].T + P["ffn.fc.bias"]) @ P["ffn.proj.weight"].T + P["ffn.proj.bias"]
out = x1 + mlp                                                    # residual 2
print(f"attention weights of head 0, sequence 0 (rows sum to 1, zeros above the diagonal):\n{weights[0, 0]}")
print(f"hidden width of the MLP: {P['ffn.fc.weight'].shape[0]} = 4 x {C}")
n_params = sum(a.size for a in P.values())
print(f"parameters in the block: {n_params} = 12 C^2 + 13 C = {12 * C * C + 13 * C}")

section("the library's block on the same input")
with ag.no_grad():
    lib = block(ag.Tensor(x)).numpy()
err = float(np.abs(lib - out).max())
print(f"output {lib.shape}; largest difference from the hand-made block: {err:.2e}")
assert err < 1e-12, "the hand-made block and the library's block disagree"
done(f"the hand-made block equals the library's (largest difference {err:.1e})")
