"""What both fine-tuning tasks share: where the base model and tokenizer come from, a small training loop, saving.

Base model sources (``load_base``):
- ``init_from``: a Hugging Face folder of any supported family (``config.json`` + ``model.safetensors`` or shards +
  ``tokenizer.json``, or GPT-2's ``vocab.json``/``merges.txt``), read by ``tinygrad_llm.from_pretrained``;
- ``checkpoint``: a checkpoint written by ``tinygrad-llm train`` (its model config and tokenizer are inside);
- ``preset``: a freshly initialised model of a ``GPTConfig`` preset (for demos and tests), with a byte-level BPE
  tokenizer trained on the fine-tuning texts (or the given one).

The output folder (``claim_out_dir``) follows the training run folder's rules (``tinygrad_llm.train.run_folder``):
one run per folder unless ``overwrite``, an exclusive lock for the whole run, a crash's temporaries removed.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

import autograd as ag

__all__ = ["load_base", "fit", "save_finetuned", "eos_id_of", "claim_out_dir"]


def eos_id_of(tokenizer, default: int = 50256) -> int:
    """The tokenizer's end-of-text id (GPT-2's 50256 when it names none and the vocabulary is that large)."""
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
        if tokenizer.vocab_size > default:
            return default
        raise ValueError("the tokenizer has no end-of-text token; fine-tuning pads with it (use a BPE tokenizer "
                         "trained with '<|endoftext|>' or GPT-2's)")
    return int(eos)


@contextlib.contextmanager
def claim_out_dir(out_dir: str | os.PathLike, overwrite: bool = False, log: Callable[[str], None] = print,
                  inputs: dict[str, str | None] | None = None) -> Iterator[Path]:
    """Hold ``out_dir`` for one fine-tuning run (``with claim_out_dir(...) as folder:``): take its lock (a
    RunFolderError naming the process that holds it), remove a crash's temporaries, refuse a folder holding another
    run unless ``overwrite`` (which deletes that run's checkpoints, ``latest`` and ``metrics.jsonl``). ``inputs``:
    flag name -> path the run reads (its base model); one inside ``out_dir`` is refused under ``overwrite``, which
    would delete it before it is read."""
    from ..train.run_folder import RunFolder, RunFolderError
    folder = RunFolder(out_dir)
    if overwrite:
        here = folder.path.resolve()
        for flag, path in (inputs or {}).items():
            if path and (here == Path(path).resolve() or here in Path(path).resolve().parents):
                raise RunFolderError(f"{flag} {path} lies in --out-dir {out_dir}, which --overwrite would delete "
                                     "before it is read; choose another --out-dir")
    folder.lock()
    try:
        gone = folder.clean_stale()
        if gone:
            log(f"removed left-overs of an interrupted checkpoint write: {', '.join(gone)}")
        deleted = folder.claim(resuming=False, overwrite=overwrite, resumable=False)
        if deleted:
            log(f"--overwrite: deleted the previous run in {folder.path} ({', '.join(deleted)})")
        yield folder.path
    finally:
        folder.unlock()


def load_base(init_from: str | None = None, checkpoint: str | None = None, preset: str | None = None,
              tokenizer=None, texts: Iterable[str] = (), vocab_size: int = 512, context_length: int | None = None,
              dtype=np.float32, dropout: float = 0.0, seed: int = 0, log: Callable[[str], None] = print):
    """(model, tokenizer) from exactly one of ``init_from``, ``checkpoint``, ``preset`` (see the module doc).

    ``tokenizer``: a Tokenizer object, a path (tokenizer JSON, or a folder with GPT-2 files), or None.
    """
    from ..model.hf import from_pretrained
    from ..tokenizer import BPETokenizer, from_pretrained as tokenizer_from_pretrained, load_tokenizer
    given = [n for n, v in (("init_from", init_from), ("checkpoint", checkpoint), ("preset", preset)) if v]
    if len(given) != 1:
        raise ValueError(f"fine-tuning needs exactly one base model: --init-from DIR (GPT-2 weights), --checkpoint "
                         f"DIR (a tinygrad-llm checkpoint) or --preset NAME (random init); got {given or 'none'}")
    if isinstance(tokenizer, (str, os.PathLike)):
        p = Path(tokenizer)
        tokenizer = tokenizer_from_pretrained(p)      # a folder, our tokenizer JSON or a tokenizer.json
    if init_from:
        model = from_pretrained(init_from, dtype=dtype, dropout=dropout)
        tokenizer = tokenizer or tokenizer_from_pretrained(init_from)
        log(f"loaded {model.config.family} weights from {init_from}: {model.num_parameters():,} parameters")
    elif checkpoint:
        from ..train.build import model_config_from_dict
        from ..train.checkpoint import load_checkpoint
        from ..model.gpt import GPT
        ck = load_checkpoint(checkpoint)
        if ck.get("classifier"):
            raise ValueError(f"{ck.path} is a classifier checkpoint (its weights end in a class head, not a language "
                             "model head); fine-tune from the language model it came from, or classify texts with "
                             f"tinygrad-llm finetune predict --checkpoint {checkpoint} --text TEXT")
        if not ck.get("model_config"):
            raise ValueError(f"{ck.path}: the checkpoint has no model_config; is it a tinygrad-llm train checkpoint?")
        cfg = model_config_from_dict(ck["model_config"]).replace(dropout=dropout)
        model = GPT(cfg, seed=None, dtype=dtype, init=False)
        model.load_state_dict(ck.model)
        if tokenizer is None and ck.get("tokenizer"):
            tokenizer = load_tokenizer(ck["tokenizer"])
        log(f"loaded checkpoint {ck.path} (step {ck.step}): {model.num_parameters():,} parameters")
    else:
        from ..model.config import GPTConfig
        from ..model.gpt import GPT
        if tokenizer is None:
            text = "\n".join(texts)
            tokenizer = BPETokenizer.train(text, max(vocab_size, 257))
            log(f"trained a BPE tokenizer on the fine-tuning texts: {tokenizer.vocab_size} tokens")
        over = {"vocab_size": tokenizer.vocab_size, "dropout": dropout}
        if context_length:
            over["context_length"] = int(context_length)
        model = GPT(GPTConfig.preset(preset, **over), seed=seed, dtype=dtype)
        log(f"new {preset} model (random init): {model.num_parameters():,} parameters")
    if tokenizer is None:
        raise ValueError("no tokenizer: pass --tokenizer (a tokenizer JSON or a folder with GPT-2's files)")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{model.config.vocab_size}")
    return model, tokenizer


def fit(model, params, loss_fn: Callable[[Any], ag.Tensor], train_batches: Callable[[int], Iterable],
        epochs: int = 1, max_steps: int | None = None, lr: float = 5e-5, weight_decay: float = 0.1,
        grad_clip: float | None = 1.0, eval_fn: Callable[[], dict] | None = None, eval_every: int = 0,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """A plain AdamW loop over ``epochs`` (or ``max_steps``): ``loss_fn(batch)`` -> scalar loss Tensor for each
    batch of ``train_batches(epoch)``; ``eval_fn()`` -> dict of metrics after each epoch (and every ``eval_every``
    steps). Only ``params`` with requires_grad are updated. Returns {"losses": [...], "evals": [...], "steps": n}.
    """
    from ..optim import AdamW, clip_grad_norm
    params = [(n, p) for n, p in params if p.requires_grad]
    if not params:
        raise ValueError("fit: no trainable parameters")
    opt = AdamW(params, lr=lr, weight_decay=weight_decay)
    losses, evals, step, t0 = [], [], 0, time.time()
    model.train()
    done = False
    for epoch in range(epochs):
        for batch in train_batches(epoch):
            loss = loss_fn(batch)
            loss.backward()
            if grad_clip:
                clip_grad_norm([p for _, p in params], grad_clip)
            opt.step()
            opt.zero_grad()
            model.zero_grad()   # frozen parameters may still have received gradients
            step += 1
            value = float(loss.item())
            if not math.isfinite(value):
                raise FloatingPointError(f"fine-tuning diverged: loss {value} at step {step} (lower --lr?)")
            losses.append(value)
            if eval_every and eval_fn is not None and step % eval_every == 0:
                evals.append({"step": step, **eval_fn()})
                model.train()
                log(f"step {step}: train loss {value:.4f} " + _fmt(evals[-1]))
            if max_steps is not None and step >= max_steps:
                done = True
                break
        if eval_fn is not None and not (eval_every and step % eval_every == 0):
            evals.append({"step": step, "epoch": epoch + 1, **eval_fn()})
            model.train()
        recent = losses[-max(1, min(len(losses), 20)):]
        log(f"epoch {epoch + 1}: step {step}, recent batch loss {np.mean(recent):.4f}, "
            + (_fmt(evals[-1]) if evals else "") + f" ({time.time() - t0:.1f}s)")
        if done:
            break
    model.eval()
    return {"losses": losses, "evals": evals, "steps": step, "seconds": time.time() - t0}


def _fmt(d: dict) -> str:
    return " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()
                    if k not in ("step", "epoch"))


def save_finetuned(out_dir: str | os.PathLike, model, tokenizer, step: int, extra: dict[str, Any],
                   model_config=None) -> Path:
    """A checkpoint in the trainer's format (``tinygrad_llm.train.save_checkpoint``): model tensors, model config,
    tokenizer, plus ``extra`` (task settings, metrics). Returns the checkpoint folder."""
    from ..train.checkpoint import save_checkpoint
    cfg = model_config if model_config is not None else model.config
    state = {"model": dict(model.state_dict()), "model_config": cfg.to_dict(), "step": int(step),
             "tokenizer": tokenizer.to_dict(), **extra}
    return save_checkpoint(out_dir, step, state, keep_last=1)
