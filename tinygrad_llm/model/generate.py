"""Text generation: greedy, temperature, top-k, top-p (nucleus), EOS stop, batched prompts, KV cache.

How a step runs. With ``use_cache=True`` the prompt is run once through the model (prefill), filling a KV cache,
then each new token is fed alone: its queries attend to the cached keys and values, so a step costs O(T) instead
of recomputing O(T^2) attention over the whole sequence. ``use_cache=False`` is the reference: every step runs the
whole sequence, cropped to its last ``context_length`` tokens. Once a sequence outgrows the context window the
cache cannot slide (learned positions and RoPE angles of cached keys would shift), so from then on each step
recomputes the cropped window without the cache: exactly what ``use_cache=False`` does, so both give the same
tokens. Every family generates this way; a sliding-window layer caches (in a ring) and reads only the keys inside
its window.

Sampling runs in NumPy on the host with the caller's ``rng``: only the last position's logits (B, V) are copied
from the GPU per step, and a seed gives the same tokens on CPU and GPU.
"""
from __future__ import annotations

import numpy as np

from autograd import Tensor, backend, no_grad

from .graph_decode import graph_decoder

__all__ = ["generate", "sample_next"]


def generate(model, idx, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, eos_id: int | None = None, use_cache: bool = True, rng=None,
             return_logits: bool = False):
    """Extend ``idx`` (B, T) (or (T,)) by up to ``max_new_tokens`` tokens; returns (B, T + n) int64 ids.

    temperature: 0 picks the argmax (greedy; top_k/top_p are then irrelevant); > 0 samples from
        softmax(logits / temperature) restricted by ``top_k`` (the k most likely tokens) and ``top_p`` (the smallest
        set of most likely tokens whose probability reaches top_p; the most likely token is always kept).
    eos_id: a row that emits it is finished; finished rows are padded with eos_id while others continue, and
        generation stops early (n < max_new_tokens) once every row has finished.
    rng: a ``numpy.random.Generator`` or an int seed (None: fresh entropy) for sampling.
    return_logits: also return the raw logits of each step, a float NumPy array (B, n, V).

    The model runs in eval mode (dropout off) under ``no_grad``; its previous mode is restored afterwards. The
    result lives where ``idx`` lived: a NumPy input gives a NumPy result, a CuPy input a CuPy one (a list: NumPy).
    """
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"generate: top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")

    data = idx.data if isinstance(idx, Tensor) else idx
    if not hasattr(data, "dtype"):
        data = np.asarray(data, dtype=np.int64)
    if data.dtype.kind not in "iu":
        raise TypeError(f"generate: token ids must be integers, got dtype {data.dtype}")
    squeeze = data.ndim == 1
    if squeeze:
        data = data[None, :]
    if data.ndim != 2 or data.shape[1] == 0:
        raise ValueError(f"generate: expected a prompt of shape (B, T) with T >= 1, got {tuple(data.shape)}")
    in_device = backend.device_of(data)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    ctx = model.config.context_length
    dev = model.device
    seq = backend.to_device(data.astype(np.int64), dev)          # all tokens so far, on the model's device
    xp = backend.xp_of(seq)
    b = seq.shape[0]
    finished = np.zeros(b, dtype=bool)
    step_logits = []
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            fits = use_cache and seq.shape[1] <= ctx
            cache = model.new_cache(b, seq.shape[1] + max_new_tokens) if fits else None
            decode = graph_decoder(model, cache)                   # None unless a GPU and a GPT-2-style model
            for _ in range(max_new_tokens):
                t = seq.shape[1]
                if cache is not None and t > ctx:
                    cache = None                                   # window full: recompute from now on
                if cache is not None and decode is not None and t - cache.pos == 1:
                    logits = decode(seq[:, -1:])                   # one new token: the step replayed as a CUDA graph
                elif cache is not None:
                    logits = model(seq[:, cache.pos:], cache=cache, last_only=True)
                else:
                    logits = model(seq[:, -ctx:], last_only=True)
                last = backend.to_numpy(logits.data[:, -1, :])
                if return_logits:
                    step_logits.append(last.copy())
                nxt = sample_next(last, temperature, top_k, top_p, rng)
                if eos_id is not None:
                    nxt[finished] = eos_id
                    finished |= nxt == eos_id
                seq = xp.concatenate([seq, backend.to_device(nxt[:, None], dev)], axis=1)
                if eos_id is not None and finished.all():
                    break
    finally:
        model.train(was_training)

    out = backend.to_device(seq, in_device)
    if squeeze:
        out = out[0]
    if return_logits:
        n = len(step_logits)
        v = model.config.vocab_size
        logits_arr = np.stack(step_logits, axis=1) if n else np.zeros((b, 0, v), dtype=np.float32)
        return out, (logits_arr[0] if squeeze else logits_arr)
    return out


def sample_next(logits: np.ndarray, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """One token id per row of ``logits`` (B, V) (NumPy), as ``generate`` documents; returns int64 (B,)."""
    if temperature == 0.0:
        return logits.argmax(axis=-1).astype(np.int64)
    rng = rng if rng is not None else np.random.default_rng()
    z = logits.astype(np.float64) / temperature
    b, v = z.shape
    rows = np.arange(b)[:, None]
    if top_k is not None and top_k < v:
        keep = np.argpartition(-z, top_k - 1, axis=-1)[:, :top_k]   # exactly k indices per row
        masked = np.full_like(z, -np.inf)
        masked[rows, keep] = z[rows, keep]
        z = masked
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-z, axis=-1, kind="stable")
        zs = z[rows, order]
        ps = np.exp(zs - zs[:, :1])
        ps /= ps.sum(axis=-1, keepdims=True)
        before = np.cumsum(ps, axis=-1) - ps                      # probability mass ranked above each token
        drop_sorted = before >= top_p                            # the top token has before == 0: always kept
        drop = np.zeros_like(drop_sorted)
        drop[rows, order] = drop_sorted
        z = np.where(drop, -np.inf, z)
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    u = rng.random(b)[:, None]
    nxt = (np.cumsum(p, axis=-1) < u).sum(axis=-1)               # inverse-CDF draw, one uniform per row
    nxt = np.minimum(nxt, v - 1)
    # rounding could land on a zero-probability token at the very end of the CDF: move it to the last kept one
    bad = p[np.arange(b), nxt] == 0
    if bad.any():
        last_kept = v - 1 - np.argmax((p[bad] > 0)[:, ::-1], axis=-1)
        nxt[bad] = last_kept
    return nxt.astype(np.int64)
