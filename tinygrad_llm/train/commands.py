"""The training-side subcommands of ``tinygrad-llm``: train, generate, eval, tokenizer, plot.

Each is a ``configure(parser)`` + ``run(args)`` pair registered with ``tinygrad_llm.cli.register_command``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..cli import UserError, register_command
from .config import TrainConfig, load_config_file

# ---------------------------------------------------------------------------------------------- train
# flag -> (TrainConfig field, type, help); model-size flags go to TrainConfig.model
_TRAIN_FLAGS = [
    ("--preset", "preset", str, "GPT preset: micro, tiny, small, llama-tiny, gpt2-124m, ..."),
    ("--tokenizer", "tokenizer", str, "'bpe' (trained on the data), 'char', a tokenizer JSON, or a GPT-2 files folder"),
    ("--vocab-size", "vocab_size", int, "BPE vocabulary size"),
    ("--data", "data", str, "a .txt file or folder of .txt files (default: the embedded Python-docs corpus)"),
    ("--val-fraction", "val_fraction", float, "held-out fraction at the end of the text"),
    ("--block-size", "block_size", int, "context length of the training windows"),
    ("--stride", "stride", int, "training window stride (default: block size / 4)"),
    ("--batch-size", "batch_size", int, "sequences per micro-batch (per rank)"),
    ("--grad-accum", "grad_accum", int, "micro-batches per optimizer step"),
    ("--steps", "max_steps", int, "optimizer steps"),
    ("--epochs", "epochs", int, "train for this many passes over the data (instead of --steps)"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--min-lr", "min_lr", float, "final learning rate of the cosine schedule (default lr/10)"),
    ("--warmup", "warmup", int, "linear warmup steps"),
    ("--schedule", "schedule", str, "cosine | constant"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (matrices only)"),
    ("--grad-clip", "grad_clip", float, "global gradient-norm clip (0: off)"),
    ("--eval-every", "eval_every", int, "evaluate every N steps (0: only at the end)"),
    ("--eval-iters", "eval_iters", int, "val batches per evaluation"),
    ("--sample-every", "sample_every", int, "print a sample every N steps (0: only at the end)"),
    ("--sample-tokens", "sample_tokens", int, "tokens per sample"),
    ("--sample-prompt", "sample_prompt", str, "prompt of the samples"),
    ("--checkpoint-every", "checkpoint_every", int,
     "save every N steps (0: only at the end; always at the end and on Ctrl-C, SIGTERM, SIGHUP)"),
    ("--keep-last", "keep_last", int, "checkpoints to keep (0: all)"),
    ("--out-dir", "out_dir", str, "the run folder (checkpoints, metrics.jsonl); one run per folder"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "cpu | cuda | cuda:N"),
    ("--dtype", "dtype", str, "parameter dtype (float32)"),
    ("--precision", "precision", str, "fp32 | tf32 | mixed | bf16 (mixed, bf16: for GPUs; slow on the CPU)"),
    ("--activation-checkpointing", "activation_checkpointing", int,
     "recompute every K-th block's activations in backward instead of keeping them (0: off, 1: every block)"),
    ("--init-from", "init_from", str, "start from pretrained weights (a Hugging Face folder: GPT-2, Llama 3, Qwen3, "
                                      "Gemma 3)"),
]
_MODEL_FLAGS = [("--n-layer", "n_layer", int), ("--n-head", "n_head", int), ("--n-embd", "n_embd", int),
                ("--dropout", "dropout", float)]


def configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a .json or .toml file of TrainConfig fields (flags override it)")
    defaults = TrainConfig()
    for flag, dest, typ, help in _TRAIN_FLAGS:
        d = getattr(defaults, dest)
        shown = f" (default: {d})" if d is not None and "default" not in help else ""
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help + shown)
    for flag, dest, typ in _MODEL_FLAGS:
        p.add_argument(flag, dest=f"model_{dest}", type=typ, default=None, help=f"model {dest} (overrides the preset)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue the run in --out-dir (no value), or resume from a checkpoint folder; only "
                        "max_steps, epochs, the lr schedule, eval/sample/checkpoint settings, device and precision "
                        "may change")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out-dir that holds another run, deleting that run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--shard-optimizer", action="store_true",
                   help="ZeRO-1 with several ranks: each keeps and updates 1/world_size of the optimizer state")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="on a GPU, run each step eagerly instead of replaying it from a CUDA graph")


def _saved_config(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """On --resume, the resumed run's own config is the base (flags given now still override it)."""
    from .checkpoint import read_checkpoint_json
    from .run_folder import resume_source
    path, _ = resume_source(args.resume, args.out_dir or base.out_dir)   # the Trainer tells the user about it
    if path is None:
        return base  # nothing to resume yet: a fresh run
    saved = read_checkpoint_json(path)["state"].get("train_config")
    if not isinstance(saved, dict):
        return base
    known = set(TrainConfig.field_names()) - {"resume", "overwrite"}
    return TrainConfig.from_dict({k: v for k, v in saved.items() if k in known})


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = load_config_file(args.config) if args.config else TrainConfig()
    if args.resume is not None:
        saved = _saved_config(args, base)
        if args.config:  # file settings override the saved run's, flags override both
            saved = load_config_file(args.config, saved)
        base = saved
    over = {dest: getattr(args, dest) for _, dest, _, _ in _TRAIN_FLAGS if getattr(args, dest) is not None}
    model = {dest: getattr(args, f"model_{dest}") for _, dest, _ in _MODEL_FLAGS
             if getattr(args, f"model_{dest}") is not None}
    if model:
        over["model"] = {**base.model, **model}
    if args.max_steps is not None and args.epochs is not None:
        raise UserError("give --steps or --epochs, not both")
    if args.max_steps is not None:
        over["epochs"] = None      # --steps now wins over epochs a config file or the resumed run set
    if args.resume is not None:
        over["resume"] = args.resume
    if args.overwrite:
        over["overwrite"] = True
    if args.no_progress:
        over["progress"] = False
    if getattr(args, "no_cuda_graphs", False):
        over["cuda_graphs"] = False
    if getattr(args, "shard_optimizer", False):
        over["shard_optimizer"] = True
    return TrainConfig.from_dict(over, base)


def _distributed(cfg: TrainConfig):
    """(comm, data_parallel) when started by mpiexec or our launcher, else (None, None)."""
    try:
        from ..distributed import runtime
    except ImportError:
        return None, None
    if not (runtime.launched_by_mpi() or runtime.launched_by_launcher()):
        return None, None
    comm = runtime.init_distributed(device=cfg.device)
    if cfg.device.startswith("cuda"):
        cfg.device = runtime.gpu_device_for_rank(cfg.device)
    return comm, None  # the trainer builds the DataParallel wrapper itself once the model exists


def run_train(args: argparse.Namespace) -> int:
    from .trainer import Trainer
    cfg = train_config_from_args(args)
    comm, dp = _distributed(cfg)
    t0 = time.time()
    trainer = Trainer(cfg, comm=comm, data_parallel=dp)
    if trainer.is_main:
        m = trainer.model
        print(f"tinygrad-llm train: {m.num_parameters():,} parameters ({_describe(trainer)}), "
              f"{trainer.num_tokens:,} tokens, {trainer.config.max_steps} steps of {cfg.batch_size}x{cfg.block_size} "
              "tokens"
              + (f" x {cfg.grad_accum} accum" if cfg.grad_accum > 1 else "")
              + (f" x {trainer.world_size} ranks" if trainer.world_size > 1 else "")
              + (f"; resuming at step {trainer.step}" if trainer.resumed_from else ""), file=sys.stderr)
    summary = trainer.train()
    if trainer.is_main:
        total = time.time() - t0
        val = summary.get("val_loss")
        print(f"done: step {summary['step']}, " + (f"val loss {val:.4f} (ppl {summary['val_ppl']:.1f}), " if val
                                                   is not None else "")
              + f"{total:.0f} s; checkpoint {summary['checkpoint']}")
        samples = list(summary["samples"])
        if samples and not cfg.sample_prompt:  # one more, from a prompt, to show continuation
            try:
                samples.append(trainer.sample("The "))
            except ValueError:  # a char vocabulary without these characters
                pass
        for s in samples:
            print("--- sample ---\n" + s + "\n--------------")
        if summary["interrupted"]:
            print(f"resume with: tinygrad-llm train --out-dir {cfg.out_dir} --resume")
    return 0


def _describe(trainer) -> str:
    c = trainer.model_config
    return (f"{c.n_layer} layers, {c.n_head} heads, width {c.n_embd}, context {c.context_length}, "
            f"vocab {c.vocab_size}") if c is not None else type(trainer.model).__name__


# ---------------------------------------------------------------------------------------------- loading a checkpoint
def load_model(checkpoint: str, device: str = "cpu"):
    """(model, tokenizer, checkpoint) from a checkpoint folder or output folder."""
    from ..model import GPT
    from ..tokenizer import load_tokenizer
    from .build import model_config_from_dict
    from .build import require_device
    from .checkpoint import load_checkpoint
    require_device(device)
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("classifier"):
        raise UserError(f"{ckpt.path} is a classifier (from `tinygrad-llm finetune classify`), not a language model; "
                        f"classify texts with: tinygrad-llm finetune predict --checkpoint {checkpoint} --text TEXT")
    if not ckpt.get("model_config") or not ckpt.get("tokenizer"):
        raise UserError(f"{ckpt.path}: the checkpoint has no model_config/tokenizer (not written by the trainer)")
    model = GPT(model_config_from_dict(ckpt["model_config"]), init=False)
    model.load_state_dict(ckpt.model)
    model.to(device)
    model.eval()
    return model, load_tokenizer(ckpt["tokenizer"]), ckpt


# ---------------------------------------------------------------------------------------------- generate
def configure_generate(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint folder (or an output folder: its latest)")
    src.add_argument("--init-from", help="a Hugging Face folder (GPT-2, Llama 3, Qwen3, Gemma 3: config.json, "
                                         "*.safetensors, tokenizer.json)")
    p.add_argument("--prompt", default="", help="text to continue (default: start of text)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature, 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, default=None, help="sample within the top-p probability mass only")
    p.add_argument("--num-samples", type=int, default=1, help="how many continuations")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")


def _check_generate_args(args: argparse.Namespace) -> None:
    for ok, msg in ((args.max_new_tokens >= 0, "--max-new-tokens must be >= 0"),
                    (args.num_samples >= 1, "--num-samples must be >= 1"),
                    (args.temperature >= 0, "--temperature must be >= 0 (0: greedy)"),
                    (args.top_k is None or args.top_k >= 1, "--top-k must be >= 1"),
                    (args.top_p is None or 0 < args.top_p <= 1, "--top-p must be in (0, 1]")):
        if not ok:
            raise UserError(msg)


def run_generate(args: argparse.Namespace) -> int:
    from ..model import generate
    _check_generate_args(args)
    from ..model.hf import from_pretrained, is_hf_folder
    folder = args.init_from or (args.checkpoint if is_hf_folder(args.checkpoint) else None)
    if folder:
        from ..tokenizer import from_pretrained as tokenizer_from_pretrained
        model, tok = from_pretrained(folder, device=args.device), tokenizer_from_pretrained(folder)
        model.eval()
    else:
        model, tok, _ = load_model(args.checkpoint, args.device)
    ctx = model.config.context_length
    ids = tok.encode(args.prompt) if args.prompt else []
    if getattr(tok, "add_bos", False) and tok.bos_id is not None:
        ids = [tok.bos_id] + ids                 # Llama and Gemma expect every text to start with it
    if len(ids) > ctx:
        raise UserError(f"the prompt is {len(ids)} tokens long, longer than the model's context of {ctx} tokens; "
                        "shorten it")
    if not ids:
        eos = getattr(tok, "eos_id", None)
        ids = [eos] if eos is not None else (tok.encode("\n") or [0])
    rng = np.random.default_rng(args.seed)
    for i in range(args.num_samples):
        out = generate(model, np.asarray([ids], dtype=np.int64), args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, rng=rng)
        new = [int(t) for t in np.asarray(out if isinstance(out, np.ndarray) else out.get())[0, len(ids):]]
        if i:
            print("---")
        print(args.prompt + tok.decode(new))
    return 0


# ---------------------------------------------------------------------------------------------- eval
def configure_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (or an output folder: its latest)")
    p.add_argument("--data", default=None, help="a text file or folder (default: the validation split of the "
                                               "run's training text: the number training's final evaluation "
                                               "reported)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    p.add_argument("--max-batches", type=int, default=None, help="evaluate at most this many batches")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")


def run_eval(args: argparse.Namespace) -> int:
    """Mean loss over every non-overlapping window of the text (the validation windows of training; its periodic
    evaluations read only the first ``eval_iters`` batches of them, its final one all)."""
    if args.batch_size < 1 or (args.max_batches is not None and args.max_batches < 1):
        raise UserError("--batch-size and --max-batches must be >= 1")
    import autograd as ag
    from .build import encode_corpus, load_corpus
    model, tok, ckpt = load_model(args.checkpoint, args.device)
    tcfg = ckpt.get("train_config") or {}
    text = load_corpus(args.data if args.data is not None else tcfg.get("data"))
    ids = encode_corpus(tok, text)
    if args.data is None:  # the training run's own validation split
        frac = tcfg.get("val_fraction", 0.1)
        ids = ids[int(round(len(ids) * (1 - frac))):]
    if len(ids) < 2:
        raise UserError(f"{args.data or 'the corpus'}: fewer than 2 tokens, nothing to evaluate")
    T = min(model.config.context_length, (ckpt.get("train_config") or {}).get("block_size", 10**9), len(ids) - 1)
    n = (len(ids) - 1) // T
    starts = np.arange(n) * T
    if args.max_batches:
        starts = starts[:args.max_batches * args.batch_size]
    total, count = 0.0, 0
    with ag.no_grad():
        for b in range(0, len(starts), args.batch_size):
            s = starts[b:b + args.batch_size]
            pos = s[:, None] + np.arange(T + 1)
            chunk = ids[pos]
            loss = model.loss(chunk[:, :-1], chunk[:, 1:])
            total += float(loss.item()) * len(s)
            count += len(s)
    loss = total / count
    print(json.dumps({"val_loss": round(loss, 6), "val_ppl": round(math.exp(min(loss, 700)), 4),
                      "tokens": int(count * T), "windows": int(count), "context": int(T)}))
    return 0


# ---------------------------------------------------------------------------------------------- tokenizer
def configure_tokenizer(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tok_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a tokenizer on a text and save it as JSON")
    t.add_argument("--data", default=None, help="text file or folder (default: the embedded corpus)")
    t.add_argument("--type", choices=["bpe", "char"], default="bpe")
    t.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size (at most: fewer when the "
                                                               "text runs out of repeated pairs)")
    t.add_argument("--out", required=True, help="output JSON file")
    for name, help in (("encode", "text -> token ids"), ("decode", "token ids -> text")):
        s = sub.add_parser(name, help=help)
        src = s.add_mutually_exclusive_group(required=True)
        src.add_argument("--tokenizer", help="tokenizer JSON, or 'gpt2:DIR' with encoder.json + vocab.bpe")
        src.add_argument("--checkpoint", help="use a checkpoint's tokenizer")
        s.add_argument("input", nargs="*", help="text (encode) or ids (decode); default: read stdin")
        if name == "encode":
            s.add_argument("--allow-special", action="store_true",
                           help="turn special-token text such as <|endoftext|> into its id (default: plain text)")


def _get_tokenizer(args):
    if args.checkpoint:
        from .checkpoint import load_checkpoint
        from ..tokenizer import load_tokenizer
        return load_tokenizer(load_checkpoint(args.checkpoint)["tokenizer"])
    from .build import build_tokenizer
    spec = args.tokenizer[5:] if args.tokenizer.startswith("gpt2:") else args.tokenizer
    if spec in ("bpe", "char"):
        raise UserError("--tokenizer needs a file: a tokenizer JSON or gpt2:DIR")
    return build_tokenizer(spec, "")


def run_tokenizer(args: argparse.Namespace) -> int:
    from .build import build_tokenizer, load_corpus
    if args.tok_command == "train":
        text = load_corpus(args.data)
        t0 = time.time()
        tok = build_tokenizer(args.type, text, args.vocab_size)
        tok.save(args.out)
        print(f"saved a {args.type} tokenizer with {tok.vocab_size} tokens to {args.out} "
              f"({time.time() - t0:.1f} s)", file=sys.stderr)
        if args.type == "bpe" and tok.vocab_size < args.vocab_size:
            print(f"note: the text yields {tok.vocab_size} tokens of the {args.vocab_size} asked for (no pair of "
                  "tokens repeats any more); more text gives more", file=sys.stderr)
        return 0
    tok = _get_tokenizer(args)
    data = " ".join(args.input) if args.input else sys.stdin.read()
    if args.tok_command == "encode":
        ids = tok.encode(data, allowed_special="all") if args.allow_special else tok.encode(data)
        print(" ".join(str(i) for i in ids))
    else:
        try:
            ids = [int(x) for x in data.replace(",", " ").split()]
        except ValueError:
            raise UserError("decode expects integer token ids separated by spaces or commas") from None
        bad = [i for i in ids if not 0 <= i < tok.vocab_size]
        if bad:
            raise UserError(f"token id {bad[0]} is out of range [0, {tok.vocab_size})")
        sys.stdout.write(tok.decode(ids) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------- plot
def configure_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", nargs="?", default="out/metrics.jsonl", help="metrics.jsonl, or an output folder")
    p.add_argument("--out", default=None, help="PNG file (default: beside the log)")


def run_plot(args: argparse.Namespace) -> int:
    from .plot import MatplotlibMissing, plot_metrics
    log = Path(args.log)
    if log.is_dir():
        log = log / "metrics.jsonl"
    try:
        out = plot_metrics(log, args.out)
    except MatplotlibMissing as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}")
    return 0


register_command("train", "train a GPT (no arguments: a small one on the embedded corpus, a few CPU minutes)",
                 configure_train, run_train)
register_command("generate", "generate text from a checkpoint", configure_generate, run_generate)
register_command("eval", "validation loss and perplexity of a checkpoint on a text", configure_eval, run_eval)
register_command("tokenizer", "train / encode / decode with a tokenizer", configure_tokenizer, run_tokenizer)
register_command("plot", "loss-curve PNG from a metrics log (needs matplotlib)", configure_plot, run_plot)
