"""Trainer: the pretraining loop (next-token prediction) with eval, samples, JSONL log, checkpoints and exact resume.

    from tinygrad_llm.train import Trainer, TrainConfig
    summary = Trainer(TrainConfig(max_steps=300, out_dir="out")).train()

Where each part lives: the optimizer step in ``step.py`` (``TrainStep``), evaluation and samples in
``evaluation.py``, the checkpoint state and the resume rules in ``state.py``, the run folder (lock, one run per
folder, the resume point) in ``run_folder.py``, the stop signals in ``signals.py``. This file builds the pieces
and runs the loop: fetch ``grad_accum`` batches, call ``step_fn``, log, evaluate, sample, checkpoint.

Stopping. Ctrl-C, SIGTERM and SIGHUP ask the loop to stop at the end of the current step, which then saves a
checkpoint and returns; a KeyboardInterrupt raised inside a step (a second signal, or from a callback) rolls the
data position and generators back to the step's start and saves the last completed step. Either way ``train()``
returns normally with ``summary["interrupted"] = True`` (and ``summary["signal"]``, the signal's name).

Distributed. Pass ``comm`` (a ``tinygrad_llm.distributed`` Communicator): each rank reads its shard of every
global batch, rank 0 takes the run folder, logs, samples and writes checkpoints, evaluation is averaged over ranks,
and the ranks agree after every step whether to stop. Gradients are averaged by ``data_parallel``: an object with
``no_sync()`` and ``finish()``; by default ``tl.distributed.DataParallel(model, comm)`` is built, which broadcasts
rank 0's weights and all-reduces gradient buckets while backward runs.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autograd import backend

from . import build
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluation import sample_text, validation_loss
from .metrics import MetricsLog
from .run_folder import METRICS_FILE, RunFolder, RunFolderError, resume_source
from .signals import StopSignals
from .state import SCHEDULE_FIELDS, restore_state, resume_changes, trainer_state
from .graph_step import GraphEval, is_graphed, train_step_for
from .step import lm_loss, precision_setup

__all__ = ["Trainer", "lm_loss"]

Callback = Callable[["Trainer", dict], None]


class Trainer:
    """Build everything from ``config`` (or use the given pieces), then ``train()``.

    text: the training text (default: ``config.data`` or the embedded corpus). tokenizer / model: pre-built ones.
    comm / data_parallel: see the module doc. callbacks: ``fn(trainer, record)`` after every step (``record`` is
    the step's metrics dict); raising KeyboardInterrupt there stops cleanly. log: where status lines go (default:
    tqdm.write on rank 0). The run folder is locked from construction until ``train()`` ends (or ``close()``).
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
        self.folder = RunFolder(cfg.out_dir)
        self.out_dir = self.folder.path
        self.step = 0
        self.tokens_seen = 0
        self.last_val: dict[str, float] = {}
        self.metrics: MetricsLog | None = None
        try:
            self._build(text, tokenizer, model)
        except BaseException:
            self.close()
            raise

    def _build(self, text, tokenizer, model) -> None:
        cfg = self.config
        if self.world_size > 1:
            from ..distributed.launch import start_heartbeat
            start_heartbeat()  # lets the launcher name a frozen rank long before a collective times out
        build.require_device(cfg.device)
        if cfg.precision in ("mixed", "fp16", "bf16") and backend.parse_device(cfg.device)[0] == "cpu":
            what = "bfloat16 arithmetic (ml_dtypes)" if cfg.precision == "bf16" else "float16 matrix products"
            self.log(f"warning: precision {cfg.precision!r} on the CPU: NumPy computes {what} without hardware "
                     "support, many times slower than float32; use --precision fp32 on the CPU")
        self.autocast_dtype, self.loss_scaler = precision_setup(cfg.precision, cfg.device)

        ckpt = self._find_resume()
        self.resumed_from = ckpt.path if ckpt is not None else None
        self._take_folder(ckpt)
        state = ckpt.state if ckpt is not None else {}
        changes = resume_changes(state.get("train_config"), cfg, str(ckpt.path)) if ckpt is not None else {}

        if text is None:
            text = build.load_corpus(cfg.data, log=self.log)
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
        if tokenizer is None:
            tokenizer = build.build_tokenizer(cfg.tokenizer, text, cfg.vocab_size)
            if cfg.tokenizer == "bpe" and tokenizer.vocab_size < cfg.vocab_size:
                self.log(f"note: the training text yields {tokenizer.vocab_size} BPE tokens of the "
                         f"{cfg.vocab_size} asked for (no pair of tokens repeats any more)")
        self.tokenizer = tokenizer
        ids = build.encode_corpus(self.tokenizer, text)
        self.train_loader, self.val_loader, self.val_ids = build.build_loaders(ids, cfg, self.rank, self.world_size)
        self.num_tokens = len(ids)

        if model is None:
            from ..model import GPT
            mcfg = (build.model_config_from_dict(state["model_config"]) if "model_config" in state
                    else build.build_model_config(cfg, self.tokenizer.vocab_size))
            model = GPT(mcfg, seed=cfg.seed)
        self.model = model
        self.model_config = getattr(model, "config", None)
        if getattr(self.model_config, "vocab_size", self.tokenizer.vocab_size) < self.tokenizer.vocab_size:
            raise ValueError(f"the model's vocab_size {self.model_config.vocab_size} is smaller than the tokenizer's "
                             f"{self.tokenizer.vocab_size}")
        build.seed_generators(self.model, cfg.seed + 1000003 * self.rank)  # ranks draw different dropout masks
        self.model.to(cfg.device, dtype=np.dtype(cfg.dtype))
        self.model.train()
        if cfg.activation_checkpointing and self.model_config is not None:
            self.model_config.activation_checkpointing = cfg.activation_checkpointing
        if cfg.epochs:
            cfg.max_steps = max(1, cfg.epochs * len(self.train_loader) // cfg.grad_accum)
        from ..optim import AdamW, make_schedule
        self.optimizer = AdamW(self.model, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        self.schedule = make_schedule(cfg.schedule, cfg.lr, min(cfg.warmup, cfg.max_steps), cfg.max_steps, cfg.min_lr)
        if ckpt is not None:
            self.load_state(ckpt)
            self._announce(changes, state["train_config"])
        if self.world_size > 1 and self.data_parallel is None:
            # broadcasts rank 0's weights, then averages gradients in buckets overlapping backward
            from ..distributed import DataParallel, ShardedOptimizer
            self.data_parallel = DataParallel(self.model, self.comm, shard_optimizer=cfg.shard_optimizer)
            if cfg.shard_optimizer:        # ZeRO-1: the restored state is sliced to this rank's shard
                self.optimizer = ShardedOptimizer(self.optimizer, self.data_parallel)
        #: one optimizer step, ``(batches, step) -> StepOutput``: any callable of that signature may replace it
        #: (on a GPU, by default, the step recorded once as a CUDA graph and replayed: graph_step.py)
        self.step_fn = train_step_for(self.model, self.optimizer, self.schedule, cuda_graphs=cfg.cuda_graphs,
                                      log=self.log, grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip,
                                      autocast_dtype=self.autocast_dtype, loss_scaler=self.loss_scaler,
                                      data_parallel=self.data_parallel)
        self._graph_eval = GraphEval(self.model, self.autocast_dtype) if is_graphed(self.step_fn) else None
        if self.is_main:
            self.metrics = MetricsLog(self.out_dir / METRICS_FILE, resume_step=self.step if ckpt is not None else None)

    # ------------------------------------------------------------------------------------------ run folder
    def _find_resume(self) -> Checkpoint | None:
        r = self.config.resume
        if not r:
            return None
        path, note = resume_source(r, self.out_dir)
        if note:
            self.log(note)
        if path is None:
            if r != "auto":
                raise CheckpointError(f"{r}: no checkpoint here (no checkpoint.json, no 'latest', no step_* folders)")
            self.log(f"nothing to resume in {self.out_dir}: starting a fresh run")
            return None
        return load_checkpoint(path)

    def _take_folder(self, ckpt: Checkpoint | None) -> None:
        """Rank 0 locks the run folder, removes a crash's left-overs and makes sure it holds no other run; every
        rank learns whether that worked."""
        cfg, error = self.config, None
        if self.is_main:
            try:
                self.folder.lock()
                gone = self.folder.clean_stale()
                if gone:
                    self.log(f"removed left-overs of an interrupted checkpoint write: {', '.join(gone)}")
                here = ckpt is not None and ckpt.path.parent.resolve() == self.out_dir.resolve()
                resuming = here or (ckpt is None and cfg.resume == "auto")
                deleted = self.folder.claim(resuming=resuming, overwrite=cfg.overwrite)
                if deleted:
                    self.log(f"--overwrite: deleted the previous run in {self.out_dir} ({', '.join(deleted)})")
            except (RunFolderError, OSError) as e:
                error = e
        if self.world_size > 1:
            failed = self.comm.all_reduce_scalars([1.0 if error is not None else 0.0], op="max")[0] > 0
            if failed and error is None:
                raise RunFolderError(f"{self.out_dir}: rank 0 could not take the run folder (its message says why)")
        if error is not None:
            raise error

    def close(self) -> None:
        """Release the run folder and close the metrics log (``train()`` does this when it ends)."""
        if self.metrics is not None:
            self.metrics.close()
        self.folder.unlock()

    def __del__(self) -> None:
        folder = getattr(self, "folder", None)
        if folder is not None:
            folder.unlock()

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (see ``state.trainer_state``)."""
        getattr(self.step_fn, "sync_to_host", lambda: None)()   # a graphed step keeps its counters on the device
        return trainer_state(self)

    def load_state(self, ckpt: Checkpoint | str) -> None:
        """Restore model, optimizer, data position, generators and step from a checkpoint (or its path); checked
        fully first: a mismatched checkpoint raises CheckpointError and leaves the trainer as it was."""
        restore_state(self, ckpt)

    def _announce(self, changes: dict, saved: dict) -> None:
        """Say which settings differ from the resumed run's, and what a new learning-rate schedule does."""
        if not changes:
            return
        self.log("resuming with changed settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in
                                                              changes.items()))
        if any(k in changes for k in SCHEDULE_FIELDS + ("epochs",)):
            from ..optim import make_schedule
            old = TrainConfig.from_dict({k: saved[k] for k in SCHEDULE_FIELDS if k in saved})
            before = make_schedule(old.schedule, old.lr, min(old.warmup, old.max_steps), old.max_steps, old.min_lr)
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items() if k in SCHEDULE_FIELDS)
            self.log(f"the learning-rate schedule changes ({what}): from step {self.step} it follows the new one "
                     f"(lr at step {self.step}: {float(before(self.step)):.3g} before, "
                     f"{float(self.schedule(self.step)):.3g} now)")

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0); returns its folder."""
        path = None
        # a sharded optimizer gathers its state from every rank: all of them take part in state_dict()
        state = self.state_dict() if self.is_main or self.config.shard_optimizer and self.world_size > 1 else None
        if self.is_main:
            path = save_checkpoint(self.out_dir, self.step, state, keep_last=self.config.keep_last)
        if self.world_size > 1:
            self.comm.barrier()
        return path

    # ------------------------------------------------------------------------------------------ pieces
    def _to_device(self, a: np.ndarray):
        return backend.to_device(a, self.config.device) if self.config.device != "cpu" else a

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns {"loss", "lr", "grad_norm"}."""
        cfg = self.config
        batches = [tuple(self._to_device(a) for a in self.train_loader.next_batch()) for _ in range(cfg.grad_accum)]
        out = self.step_fn(batches, self.step)
        self.step += 1
        self.tokens_seen += cfg.batch_size * cfg.block_size * cfg.grad_accum * self.world_size
        # the host reads of the step's numbers: here, for the log
        return {"loss": float(out.loss), "lr": float(out.lr), "grad_norm": float(out.grad_norm)}

    def evaluate(self, iters: int | None = None) -> dict[str, float]:
        """Mean val loss over the first ``iters`` (default eval_iters) val batches, and its perplexity."""
        self.last_val = validation_loss(self.model, self.val_loader, iters or self.config.eval_iters,
                                        self._to_device, self.autocast_dtype, self.comm, graph_eval=self._graph_eval)
        return dict(self.last_val)

    def sample(self, prompt: str | None = None, max_new_tokens: int | None = None, temperature: float = 0.8,
               top_k: int | None = 40) -> str:
        """Generate text from ``prompt`` (default: config.sample_prompt) with a generator seeded from (seed, step),
        so sampling never disturbs the training randomness."""
        ctx = getattr(self.model_config, "context_length", self.config.block_size)
        return sample_text(self.model, self.tokenizer, self.config.sample_prompt if prompt is None else prompt,
                           max_new_tokens or self.config.sample_tokens, np.random.default_rng([self.config.seed,
                                                                                                self.step]),
                           self._to_device, ctx, temperature=temperature, top_k=top_k)

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
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> dict[str, Any]:
        from tqdm import tqdm
        cfg = self.config
        t_start = time.time()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and self.is_main),
                   dynamic_ncols=True, unit="step")
        interrupted, last_loss, tok_rate, samples = False, float("nan"), 0.0, []
        stop = StopSignals(self.log)
        with stop:
            try:
                while self.step < cfg.max_steps:
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
                    tok_rate = cfg.batch_size * cfg.block_size * cfg.grad_accum * self.world_size / max(
                        time.time() - t0, 1e-9)
                    last_loss = rec["loss"]
                    record = {"step": self.step, **rec, "tokens_per_s": round(tok_rate, 1), "tokens": self.tokens_seen}
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.1e}", tok_s=f"{tok_rate:,.0f}")
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                        record.update(self.evaluate())
                        self.log(f"step {self.step}: train loss {rec['loss']:.4f}, val loss {record['val_loss']:.4f} "
                                 f"(first {self.config.eval_iters} val batches), val ppl {record['val_ppl']:.2f}")
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
                        stop.request("KeyboardInterrupt")
                    if stop.agree(self.comm):
                        interrupted = True
                        break
            finally:
                bar.close()
        if interrupted:
            self.log(f"interrupted ({stop.name or 'KeyboardInterrupt'}): saving a checkpoint at step {self.step}")
        else:
            val = self.evaluate(iters=len(self.val_loader))
            if self.metrics:
                self.metrics.log(step=self.step, **val)
            windows = min(len(self.val_loader.dataset), len(self.val_loader) * self.val_loader.batch_size
                          * self.world_size)
            self.log(f"final: step {self.step}, val loss {val['val_loss']:.4f}, val ppl {val['val_ppl']:.2f} "
                     f"(all {windows} windows of the validation split)")
        path = self.save()
        if not interrupted and self.is_main and cfg.sample_tokens > 0:
            samples.append(self.sample())
        return {"step": self.step, "train_loss": last_loss, **self.last_val, "tokens_per_s": tok_rate,
                "elapsed_s": time.time() - t_start, "checkpoint": str(path) if path else None,
                "interrupted": interrupted, "signal": (stop.name or "KeyboardInterrupt") if interrupted else None,
                "samples": samples}
