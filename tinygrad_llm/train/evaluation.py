"""Evaluation and samples during training: the validation loss and a short generated text.

Validation windows are the validation split cut into non-overlapping ``block_size`` windows, in order (the same
windows ``tinygrad-llm eval`` reads). Periodic evaluations read the first ``eval_iters`` batches of them, to stay
cheap; the final one reads them all, so its number is the one ``tinygrad-llm eval`` reports for the checkpoint.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

import autograd as ag
from autograd import backend

from .step import lm_loss

__all__ = ["validation_loss", "sample_text"]


def validation_loss(model, loader, iters: int, to_device: Callable, autocast_dtype: str | None = None,
                    comm=None, graph_eval=None) -> dict[str, float]:
    """{"val_loss", "val_ppl"}: the mean loss per window over the first ``iters`` batches of ``loader`` (eval mode,
    no graph), averaged over ranks when ``comm`` has several (their shards are equal). ``graph_eval``: a
    ``graph_step.GraphEval``, which replays the forward pass from CUDA graphs and reads the sum once (GPU)."""
    iters = min(iters, len(loader))
    if graph_eval is not None:
        loss = graph_eval.mean_loss(loader._fetch(loader.batch_indices(0, i)) for i in range(iters))
        if comm is not None and comm.world_size > 1:
            loss = comm.all_reduce_scalars([loss], op="avg")[0]
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with ag.no_grad():
        for i in range(iters):
            x, y = loader._fetch(loader.batch_indices(0, i))
            with ag.amp.autocast(autocast_dtype):
                total += float(lm_loss(model, to_device(x), to_device(y)).item()) * len(x)
            count += len(x)   # a last, shorter batch weighs what its windows weigh
    model.train(was_training)
    loss = total / max(count, 1)
    if comm is not None and comm.world_size > 1:
        loss = comm.all_reduce_scalars([loss], op="avg")[0]
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int, rng: np.random.Generator, to_device: Callable,
                context_length: int, temperature: float = 0.8, top_k: int | None = 40) -> str:
    """``prompt`` and its continuation by ``model`` (the end-of-text token, or a newline, when prompt is empty);
    ``rng`` draws the tokens, so sampling never disturbs the training randomness."""
    from ..model import generate
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        eos = getattr(tokenizer, "eos_id", None)
        ids = [eos] if eos is not None else (tokenizer.encode("\n") or [0])
    ids = ids[-context_length:]
    idx = to_device(np.asarray([ids], dtype=np.int64))
    was_training = model.training
    model.eval()
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, rng=rng)
    model.train(was_training)
    out = backend.to_numpy(out.data if isinstance(out, ag.Tensor) else out)  # NumPy or CuPy ids
    new = [int(t) for t in np.asarray(out)[0, len(ids):]]
    return prompt + tokenizer.decode(new)
