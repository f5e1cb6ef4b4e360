"""tinygrad-llm: build, train and fine-tune GPT-style language models on NumPy/CuPy with our own autograd.

    import tinygrad_llm as tl
    cfg = tl.GPTConfig.preset("tiny")
    model = tl.GPT(cfg, seed=0)
    logits = model(idx)                                   # idx (B, T) int array -> (B, T, V) Tensor
    out = tl.generate(model, idx, max_new_tokens=20, temperature=0.8, top_k=40)
    model = tl.from_pretrained("Llama-3.2-1B/")          # a Hugging Face folder; model.save_pretrained("out/")

``nn`` and ``model`` are imported at once; the other subpackages (tokenizer, data, optim, train, distributed,
finetune, cli) are imported the first time they are used (``tl.optim.AdamW``), so importing the
package stays fast and a subpackage's optional dependencies (mpi4py, cupy) are only needed when it is used.
"""
from __future__ import annotations

import importlib

from . import model, nn
from .model import GPT, GPTConfig, generate
from .model.hf import from_pretrained

__version__ = "0.1.0"

# attribute -> module path, imported on first access (PEP 562)
_LAZY = {
    "tokenizer": "tinygrad_llm.tokenizer",
    "data": "tinygrad_llm.data",
    "optim": "tinygrad_llm.optim",
    "train": "tinygrad_llm.train",
    "distributed": "tinygrad_llm.distributed",
    "finetune": "tinygrad_llm.finetune",
    "cli": "tinygrad_llm.cli",
}

__all__ = ["GPT", "GPTConfig", "generate", "from_pretrained", "nn", "model", *_LAZY]


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'tinygrad_llm' has no attribute {name!r}")
    mod = importlib.import_module(target)
    globals()[name] = mod
    return mod


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
