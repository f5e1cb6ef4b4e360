"""tinygrad-llm: build, train and fine-tune GPT-style language models on NumPy/CuPy with our own autograd.

    import tinygrad_llm as tl
    cfg = tl.GPTConfig.preset("tiny")
    model = tl.GPT(cfg, seed=0)
    logits = model(idx)                                   # idx (B, T) int array -> (B, T, V) Tensor
    out = tl.generate(model, idx, max_new_tokens=20, temperature=0.8, top_k=40)

``nn`` and ``model`` are imported at once; the other subpackages (tokenizer, data, optim, train, distributed,
finetune, pretrained, cli) are imported the first time they are used (``tl.optim.AdamW``), so importing the
package stays fast and a subpackage's optional dependencies (mpi4py, cupy) are only needed when it is used.
"""
from __future__ import annotations

import importlib

from . import model, nn
from .model import GPT, GPTConfig, generate

__version__ = "0.1.0"

# attribute -> module path, imported on first access (PEP 562)
_LAZY = {
    "tokenizer": "tinygrad_llm.tokenizer",
    "data": "tinygrad_llm.data",
    "optim": "tinygrad_llm.optim",
    "train": "tinygrad_llm.train",
    "distributed": "tinygrad_llm.distributed",
    "finetune": "tinygrad_llm.finetune",
    "pretrained": ("tinygrad_llm.pretrained", "tinygrad_llm.finetune.pretrained"),
    "cli": "tinygrad_llm.cli",
}

__all__ = ["GPT", "GPTConfig", "generate", "nn", "model", *_LAZY]


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'tinygrad_llm' has no attribute {name!r}")
    candidates = target if isinstance(target, tuple) else (target,)
    for i, path in enumerate(candidates):
        try:
            mod = importlib.import_module(path)
        except ModuleNotFoundError as e:
            # only swallow "this candidate does not exist"; a missing dependency inside it must surface
            if e.name != path or i == len(candidates) - 1:
                raise
            continue
        globals()[name] = mod
        return mod
    raise AttributeError(name)  # pragma: no cover


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
