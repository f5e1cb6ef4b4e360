"""Trainer: the pretraining loop (next-token prediction) with eval, samples, JSONL log, checkpoints and exact resume.

    from tinygrad_llm.train import Trainer, TrainConfig
    summary = Trainer(TrainConfig(max_steps=300, out_dir="out")).train()

One step = ``grad_accum`` micro-batches of (B, T) tokens: forward, ``(loss / grad_accum).backward()``, then (data
parallel) gradient averaging, global-norm clipping, the warmup+cosine learning rate, an AdamW step.

Exact resume. Everything random comes from state that the checkpoint stores: the data order is a function of
(seed, epoch) plus the loader position, dropout masks come from the modules' generators (their states are saved),
samples use a generator seeded from (seed, step), and the learning rate is a function of the step. So on CPU,
training 2N steps equals training N, saving and resuming for N more, bitwise (tests/test_train.py).

Ctrl-C. The first SIGINT asks the loop to stop at the end of the current step, which then saves a checkpoint and
returns; a KeyboardInterrupt raised inside a step (a second Ctrl-C, or from a callback) rolls the data position and
generators back to the step's start and saves the last completed step. Either way ``train()`` returns normally with
``summary["interrupted"] = True``.

Distributed (issue 6). Pass ``comm`` (a ``tinygrad_llm.distributed`` Communicator): each rank reads its shard of
every global batch, rank 0 logs, samples and writes checkpoints, evaluation is averaged over ranks. Gradients are
averaged by ``data_parallel``: an object with ``no_sync()`` (a context manager for the non-final micro-steps) and
``finish()`` (complete the gradient all-reduce); by default ``tl.distributed.DataParallel(model, comm)`` is built,
which broadcasts rank 0's weights and all-reduces gradient buckets while backward runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import autograd as ag
from autograd import backend
from autograd import functional as F

from . import build
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint
from .config import TrainConfig
from .metrics import MetricsLog

__all__ = ["Trainer", "lm_loss"]

Callback = Callable[["Trainer", dict], None]


def _precision_setup(cfg: TrainConfig):
    """(autocast dtype or None, GradScaler or None) for ``cfg.precision``; sets TF32 on GPUs."""
    if backend.parse_device(cfg.device)[0] == "cuda":
        from autograd import cuda as agcuda
        agcuda.set_tf32(cfg.precision != "fp32")
    if cfg.precision in ("mixed", "fp16"):
        return "float16", ag.amp.GradScaler()
    return None, None


def lm_loss(model, x, y) -> ag.Tensor:
    """Mean next-token cross-entropy of ``model`` on inputs x (B, T) and targets y (B, T)."""
    if hasattr(model, "loss"):
        return model.loss(x, y)
    return F.cross_entropy(model(x), y)


class Trainer:
    """Build everything from ``config`` (or use the given pieces), then ``train()``.

    text: the training text (default: ``config.data`` or the embedded corpus). tokenizer / model: pre-built ones
    (fine-tuning passes its own). comm / data_parallel: see the module doc. callbacks: ``fn(trainer, record)``
    after every step (``record`` is the step's metrics dict); raising KeyboardInterrupt there stops cleanly.
    log: where status lines go (default: tqdm.write on rank 0).
    """

    def __init__(self, config: TrainConfig, *, text: str | None = None, tokenizer=None, model=None,
                 comm=None, data_parallel=None, callbacks: list[Callback] = (), log: Callable[[str], None] | None = None):
        self.config = cfg = dataclasses.replace(config).validate()  # a copy: epochs may set max_steps
        self.comm = comm
        self.rank = comm.rank if comm is not None else 0
        self.world_size = comm.world_size if comm is not None else 1
        self.is_main = self.rank == 0
        self.data_parallel = data_parallel
        self.callbacks = list(callbacks)
        self._log = log
        self.out_dir = Path(cfg.out_dir)
        self.step = 0
        self.tokens_seen = 0
        self.last_val: dict[str, float] = {}
        self._stop_requested = False
        # precision: "fp32" (no TF32 on GPUs), "tf32" (float32 weights, TF32 matrix products where the GPU has them),
        # "mixed" / "fp16" (float16 matrix products under ag.amp.autocast, float32 master weights, dynamic loss
        # scaling with ag.amp.GradScaler: a step with inf/NaN gradients is skipped and the scale lowered)
        self.autocast_dtype, self.loss_scaler = _precision_setup(cfg)

        ckpt = self._find_resume()
        self.resumed_from = ckpt.path if ckpt is not None else None
        state = ckpt.state if ckpt is not None else {}
        if text is None:
            text = build.load_corpus(cfg.data)
        if cfg.init_from and model is None and ckpt is None:
            # continued pretraining / fine-tuning from released weights (a Hugging Face folder, any family)
            from ..model.hf import from_pretrained
            from ..tokenizer import from_pretrained as tokenizer_from_pretrained
            model = from_pretrained(cfg.init_from, dtype=np.dtype(cfg.dtype), dropout=cfg.model.get("dropout", 0.0))
            if tokenizer is None and cfg.tokenizer in ("bpe", "char"):
                tokenizer = tokenizer_from_pretrained(cfg.init_from)
        if tokenizer is None and "tokenizer" in state:
            from ..tokenizer import load_tokenizer
            tokenizer = load_tokenizer(state["tokenizer"])
        self.tokenizer = tokenizer or build.build_tokenizer(cfg.tokenizer, text, cfg.vocab_size)
        ids = build.encode_corpus(self.tokenizer, text)
        self.train_loader, self.val_loader, self.val_ids = build.build_loaders(ids, cfg, self.rank, self.world_size)
        self.num_tokens = len(ids)

        if model is None:
            GPT = _model_class()
            mcfg = (build.model_config_from_dict(state["model_config"]) if "model_config" in state
                    else build.build_model_config(cfg, self.tokenizer.vocab_size))
            model = GPT(mcfg, seed=cfg.seed) if _accepts(GPT, "seed") else GPT(mcfg)
        self.model = model
        self.model_config = getattr(model, "config", None)
        if getattr(self.model_config, "vocab_size", self.tokenizer.vocab_size) < self.tokenizer.vocab_size:
            raise ValueError(f"the model's vocab_size {self.model_config.vocab_size} is smaller than the tokenizer's "
                             f"{self.tokenizer.vocab_size}")
        build.seed_generators(self.model, cfg.seed + 1000003 * self.rank)  # ranks draw different dropout masks
        self.model.to(cfg.device, dtype=np.dtype(cfg.dtype))
        self.model.train()
        if cfg.epochs:
            cfg.max_steps = max(1, cfg.epochs * len(self.train_loader) // cfg.grad_accum)
        from ..optim import AdamW, make_schedule
        self.optimizer = AdamW(self.model, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        self.schedule = make_schedule(cfg.schedule, cfg.lr, min(cfg.warmup, cfg.max_steps), cfg.max_steps, cfg.min_lr)
        if ckpt is not None:
            self.load_state(ckpt)
        if self.world_size > 1 and self.data_parallel is None:
            # broadcasts rank 0's weights, then averages gradients in buckets overlapping backward
            from ..distributed import DataParallel
            self.data_parallel = DataParallel(self.model, comm)
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl",
                                  resume_step=self.step if ckpt is not None else None) if self.is_main else None

    # ------------------------------------------------------------------------------------------ state
    def _find_resume(self) -> Checkpoint | None:
        r = self.config.resume
        if not r:
            return None
        if r == "auto":
            try:
                resolve_checkpoint(self.out_dir)
            except CheckpointError:
                return None  # nothing to resume yet: start fresh
            r = str(self.out_dir)
        return load_checkpoint(r)

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (arrays as NumPy/CuPy; save_checkpoint copies them to the host)."""
        return {
            "model": dict(self.model.state_dict()),
            "model_config": build.model_config_to_dict(self.model_config) if self.model_config is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "loader": self.train_loader.state_dict(),
            "rng": build.rng_state(self.model),
            "tokenizer": self.tokenizer.to_dict(),
            "train_config": self.config.to_dict(),
            "last_val": self.last_val,
            "loss_scaler": self.loss_scaler.state_dict() if self.loss_scaler is not None else None,
        }

    def load_state(self, ckpt: Checkpoint | str) -> None:
        """Restore model, optimizer, data position, generators and step from a checkpoint (or its path).

        Everything is checked before anything changes: a mismatched checkpoint raises CheckpointError and leaves
        the trainer as it was.
        """
        if not isinstance(ckpt, Checkpoint):
            ckpt = load_checkpoint(ckpt)
        st = ckpt.state
        where = str(ckpt.path)
        try:
            have = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
            got = {k: tuple(v.shape) for k, v in ckpt.model.items()}
            if have != got:
                diff = sorted(set(have) ^ set(got)) or [k for k in have if have[k] != got[k]]
                raise ValueError(f"model tensors do not match this model (first differences: {diff[:5]})")
            opt = st["optimizer"]
            if len(opt["groups"]) != len(self.optimizer.param_groups):
                raise ValueError("optimizer parameter groups do not match")
            build.check_rng_state(self.model, st["rng"])
            probe = self.train_loader.shard(self.rank, self.world_size)
            loader_state = dict(st["loader"])
            if int(loader_state.get("world_size", 1)) != self.world_size:
                # resuming with a different number of ranks: keep the global position (samples consumed)
                consumed = int(loader_state["index"]) * int(loader_state["batch_size"]) * int(loader_state["world_size"])
                g = self.train_loader.batch_size * self.world_size
                loader_state.update(world_size=self.world_size, batch_size=self.train_loader.batch_size,
                                    index=consumed // g)
            probe.load_state_dict(loader_state)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: cannot resume this run from it: {e}") from None
        # all checks passed: apply
        self.model.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(opt)
        self.train_loader.load_state_dict(loader_state)
        build.set_rng_state(self.model, st["rng"])
        self.step = int(st["step"])
        self.tokens_seen = int(st.get("tokens_seen", 0))
        self.last_val = dict(st.get("last_val") or {})
        if self.loss_scaler is not None and st.get("loss_scaler"):
            self.loss_scaler.load_state_dict(st["loss_scaler"])

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0); returns its folder."""
        path = None
        if self.is_main:
            path = save_checkpoint(self.out_dir, self.step, self.state_dict(), keep_last=self.config.keep_last)
        if self.world_size > 1:
            self.comm.barrier()
        return path

    # ------------------------------------------------------------------------------------------ pieces
    def _to_device(self, a: np.ndarray):
        return backend.to_device(a, self.config.device) if self.config.device != "cpu" else a

    def _sync_grads(self) -> None:
        if self.data_parallel is not None:  # always set when world_size > 1 (see __init__)
            self.data_parallel.finish()

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns {"loss", "lr", "grad_norm"}."""
        cfg = self.config
        lr = float(self.schedule(self.step))
        self.optimizer.set_lr(lr)
        total = 0.0
        for micro in range(cfg.grad_accum):
            x, y = self.train_loader.next_batch()
            x, y = self._to_device(x), self._to_device(y)
            last = micro == cfg.grad_accum - 1
            sync = (self.data_parallel.no_sync() if self.data_parallel is not None and not last
                    else contextlib.nullcontext())
            with sync:
                with ag.amp.autocast(self.autocast_dtype):
                    loss = lm_loss(self.model, x, y)
                scaled = loss if cfg.grad_accum == 1 else loss * (1.0 / cfg.grad_accum)
                if self.loss_scaler is not None:
                    scaled = self.loss_scaler.scale(scaled)
                scaled.backward()
            total = total + loss.data  # stays on the device: one host sync per step, below
        self._sync_grads()
        params = [p for p in self.model.parameters() if p.requires_grad]
        finite = self.loss_scaler.unscale_and_check(params) if self.loss_scaler is not None else True
        gnorm = F_clip(params, cfg.grad_clip) if finite else float("inf")
        if self.loss_scaler is not None:
            self.loss_scaler.update()
        if math.isfinite(gnorm):  # a non-finite gradient skips the update (mixed precision overflow)
            self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        self.tokens_seen += cfg.batch_size * cfg.block_size * cfg.grad_accum * self.world_size
        return {"loss": float(total) / cfg.grad_accum, "lr": lr, "grad_norm": gnorm}

    def evaluate(self, iters: int | None = None) -> dict[str, float]:
        """Mean val loss over the first ``iters`` (default eval_iters) val batches, and its perplexity."""
        iters = min(iters or self.config.eval_iters, len(self.val_loader))
        was_training = self.model.training
        self.model.eval()
        total = 0.0
        with ag.no_grad():
            for i in range(iters):
                x, y = self.val_loader._fetch(self.val_loader.batch_indices(0, i))
                with ag.amp.autocast(self.autocast_dtype):
                    total += float(lm_loss(self.model, self._to_device(x), self._to_device(y)).item())
        self.model.train(was_training)
        loss = total / max(iters, 1)
        if self.world_size > 1:
            loss = self.comm.all_reduce_scalars([loss], op="avg")[0]
        self.last_val = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}
        return dict(self.last_val)

    def sample(self, prompt: str | None = None, max_new_tokens: int | None = None, temperature: float = 0.8,
               top_k: int | None = 40) -> str:
        """Generate text from ``prompt`` (default: config.sample_prompt, or the end-of-text token) with a generator
        seeded from (seed, step), so sampling never disturbs the training randomness."""
        from ..model import generate
        prompt = self.config.sample_prompt if prompt is None else prompt
        ids = self.tokenizer.encode(prompt) if prompt else []
        if not ids:
            eos = getattr(self.tokenizer, "eos_id", None)
            ids = [eos] if eos is not None else (self.tokenizer.encode("\n") or [0])
        n = max_new_tokens or self.config.sample_tokens
        ctx = getattr(self.model_config, "context_length", self.config.block_size)
        ids = ids[-ctx:]
        idx = self._to_device(np.asarray([ids], dtype=np.int64))
        was_training = self.model.training
        self.model.eval()
        kw = {"rng": np.random.default_rng([self.config.seed, self.step])} if _accepts(generate, "rng") else {}
        out = generate(self.model, idx, n, temperature=temperature, top_k=top_k, **kw)
        self.model.train(was_training)
        out = backend.to_numpy(out.data if isinstance(out, ag.Tensor) else out)  # NumPy or CuPy ids
        new = [int(t) for t in np.asarray(out)[0, len(ids):]]
        return prompt + self.tokenizer.decode(new)

    def log(self, msg: str) -> None:
        if not self.is_main:
            return
        if self._log is not None:
            self._log(msg)
        else:
            from tqdm import tqdm
            tqdm.write(msg)
            sys.stdout.flush()  # status lines show up promptly when stdout is a file or a pipe

    # ------------------------------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        """Train until ``max_steps``; returns a summary dict (step, losses, timing, checkpoint, samples)."""
        from tqdm import tqdm
        cfg = self.config
        t_start = time.time()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and self.is_main),
                   dynamic_ncols=True, unit="step")
        interrupted, last_loss, tok_rate, samples = False, float("nan"), 0.0, []
        old_handler = self._install_sigint()
        try:
            while self.step < cfg.max_steps and not self._stop_requested:
                snapshot = (self.train_loader.state_dict(), build.rng_state(self.model))
                t0 = time.time()
                try:
                    rec = self.train_step()
                except KeyboardInterrupt:  # mid-step: roll back to the last completed step
                    self.optimizer.zero_grad()
                    self.train_loader.load_state_dict(snapshot[0])
                    build.set_rng_state(self.model, snapshot[1])
                    interrupted = True
                    break
                dt = max(time.time() - t0, 1e-9)
                tok_rate = cfg.batch_size * cfg.block_size * cfg.grad_accum * self.world_size / dt
                last_loss = rec["loss"]
                record = {"step": self.step, "loss": rec["loss"], "lr": rec["lr"], "grad_norm": rec["grad_norm"],
                          "tokens_per_s": round(tok_rate, 1), "tokens": self.tokens_seen}
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.1e}", tok_s=f"{tok_rate:,.0f}")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                    record.update(self.evaluate())
                    self.log(f"step {self.step}: train loss {rec['loss']:.4f}, val loss {record['val_loss']:.4f}, "
                             f"val ppl {record['val_ppl']:.2f}")
                if self.metrics:
                    self.metrics.log(**record)
                if cfg.sample_every and self.step % cfg.sample_every == 0 and self.is_main:
                    self.log(f"--- sample at step {self.step} ---\n{self.sample()}\n---")
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.max_steps:
                    self.save()
                try:
                    for cb in self.callbacks:
                        cb(self, record)
                except KeyboardInterrupt:  # after a completed step: nothing to roll back
                    interrupted = True
                    break
            interrupted = interrupted or self._stop_requested
        finally:
            bar.close()
            self._restore_sigint(old_handler)
        if interrupted:
            self.log(f"interrupted: saving a checkpoint at step {self.step}")
        else:
            val = self.evaluate()
            if self.metrics:
                self.metrics.log(step=self.step, **val)
            self.log(f"final: step {self.step}, val loss {val['val_loss']:.4f}, val ppl {val['val_ppl']:.2f}")
        path = self.save()
        if not interrupted and self.is_main and cfg.sample_tokens > 0:
            samples.append(self.sample())
        if self.metrics:
            self.metrics.close()
        return {"step": self.step, "train_loss": last_loss, **self.last_val, "tokens_per_s": tok_rate,
                "elapsed_s": time.time() - t_start, "checkpoint": str(path) if path else None,
                "interrupted": interrupted, "samples": samples}

    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop_requested:  # second Ctrl-C: stop now (the step is rolled back)
                raise KeyboardInterrupt
            self._stop_requested = True
            self.log("Ctrl-C: finishing this step, then saving a checkpoint (press again to stop at once)")
        try:
            return signal.signal(signal.SIGINT, handler)
        except ValueError:
            return None

    @staticmethod
    def _restore_sigint(old) -> None:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def F_clip(params, max_norm: float | None) -> float:
    """Global-norm clipping when ``max_norm`` is set; returns the norm before clipping."""
    from ..optim import clip_grad_norm, grad_norm
    return clip_grad_norm(params, max_norm) if max_norm else grad_norm(params)


def _model_class():
    try:
        from ..model import GPT
    except ImportError:  # the package __init__ not written yet
        from ..model.gpt import GPT
    return GPT


def _accepts(fn, name: str) -> bool:
    import inspect
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
