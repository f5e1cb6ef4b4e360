"""The PyTorch reference GPT the benchmarks compare against (GPT-2 blocks: LayerNorm, fused QKV, SDPA, tanh GELU,
biases, tied embedding), written once. PyTorch is imported by the benchmark scripts only, never by the package.

    model = torch_gpt(vocab, context, n_layer, n_head, n_embd, dropout=0.0).cuda()
    loss = model(idx, targets)                       # training: mean cross-entropy
    logits = model.decode(idx, caches, pos)          # inference: static KV caches written in place at pos
"""
from __future__ import annotations

import math


def torch_gpt(vocab: int, context: int, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.0,
              gpt2_init: bool = False, checkpointing: bool = False):
    """A torch.nn.Module; ``gpt2_init``: N(0, 0.02) weights (0.02 / sqrt(2 L) for the output projections), zero
    biases (else PyTorch's default initialisation); ``checkpointing``: every block through
    ``torch.utils.checkpoint`` in training."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as Fn

    C, H, L, V, T, p = n_embd, n_head, n_layer, vocab, context, dropout
    D = C // H

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.fc_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
            self.drop = nn.Dropout(p)

        def _attend(self, x, kv=None):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (z.view(b, t, H, D).transpose(1, 2) for z in (q, k, v))
            if kv is None:
                y = Fn.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p if self.training else 0.0)
            else:
                kc, vc, pos = kv
                kc[:, :, pos:pos + t] = k
                vc[:, :, pos:pos + t] = v
                y = Fn.scaled_dot_product_attention(q, kc[:, :, :pos + t], vc[:, :, :pos + t], is_causal=t > 1)
            x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, C)))
            return x + self.drop(self.fc_proj(Fn.gelu(self.fc(self.ln2(x)), approximate="tanh")))

        def forward(self, x, kv=None):
            return self._attend(x, kv)

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.drop = nn.Dropout(p)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            self.head = nn.Linear(C, V, bias=False)
            self.head.weight = self.wte.weight
            if gpt2_init:
                for name, w in self.named_parameters():
                    if name.endswith("bias"):
                        nn.init.zeros_(w)
                    elif w.ndim == 2:
                        nn.init.normal_(w, 0.0, 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02)

        def forward(self, idx, targets):
            x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))
            for blk in self.blocks:
                if checkpointing and self.training:
                    from torch.utils.checkpoint import checkpoint
                    x = checkpoint(blk, x, use_reentrant=False)
                else:
                    x = blk(x)
            return Fn.cross_entropy(self.head(self.ln_f(x)).view(-1, V), targets.view(-1))

        def decode(self, idx, caches, pos: int):
            """Logits (B, 1, V) of the last position; ``caches``: per layer (k, v) buffers (B, H, T_max, D)."""
            x = self.wte(idx) + self.wpe(torch.arange(pos, pos + idx.shape[1], device=idx.device))
            for blk, (kc, vc) in zip(self.blocks, caches):
                x = blk(x, (kc, vc, pos))
            return self.head(self.ln_f(x[:, -1:]))

    return GPT()
