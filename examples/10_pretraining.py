"""Pretraining with the library's Trainer: the book's "The Verdict" run, nanoGPT's Shakespeare run, and a stand-in
that needs no download.

    python examples/10_pretraining.py                                  # stand-in: the package's own corpus, seconds
    python examples/10_pretraining.py --verdict the-verdict.txt --encoder-json encoder.json --vocab-bpe vocab.bpe
    python examples/10_pretraining.py --verdict the-verdict.txt        # no GPT-2 files: a BPE trained on the text
    python examples/10_pretraining.py --shakespeare input.txt --cpu    # nanoGPT's CPU setting (--device cuda: full)

Getting the data (the repository cannot ship it):
- "The Verdict" (20,479 characters; 5,145 GPT-2 tokens), the book's chapter 5 text:
  https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt
  and GPT-2's tokenizer files ``encoder.json`` and ``vocab.bpe`` (e.g. from
  https://openaipublic.blob.core.windows.net/gpt-2/models/124M/).
- tiny Shakespeare (~1.1 MB, 65 distinct characters):
  https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt

The book's set-up (GPT_CONFIG_124M with context 256): 12 layers, 12 heads, 768 wide, dropout 0.1, no qkv bias,
an output head separate from the token embedding (163M parameters); AdamW lr 4e-4, weight decay 0.1, no warmup,
schedule or clipping; batch 2 of 256-token windows with stride 256; 90/10 split; 10 epochs (90 steps); evaluation
every 5 steps. The model is re-initialised as the book's PyTorch model is (``book_init``): with GPT-2's
initialisation (``--init gpt2``) this tiny data set is not memorised in 90 steps and the training loss stays near 6.
The book reports training loss ~9.8 -> ~0.4 and validation loss bottoming near 6.3, ending ~6.4: 4,600 training
tokens are far too few for 163M parameters, so the model memorises them. Measured here (2 CPU cores, GPT-2 files):
5 min 13 s; train loss 0.45 at step 85, val loss lowest 6.14 (step 50), 6.68 at the end. These numbers are printed
as targets only when the run IS that set-up (the Verdict's text, GPT-2's tokenizer, 10 epochs, book init).

nanoGPT's Shakespeare (config/train_shakespeare_char.py): 6 layers, 6 heads, 384 wide (10.7M parameters), context
256, dropout 0.2, lr 1e-3 -> 1e-4 cosine over 5000 steps, batch 64: val loss ~1.47 (3 minutes on an A100;
``--device cuda``). ``--cpu``: 4 layers, 128 wide, context 64, batch 12, 2000 steps: nanoGPT reports ~1.88; measured
here 1.92 in 4 min 37 s.

What to expect without data (the stand-in): a 2-layer, 64-wide GPT on the package's embedded corpus with a
512-token BPE, 120 steps (fast setting: 15); the validation loss falls from ln(512) = 6.24 to about 4.9 (fast:
~5.5), and a sample of word-like text ends the run; neither book's numbers apply to it.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from course import FAST, done, lesson, section

from tinygrad_llm.train import TrainConfig, Trainer

BOOK = dict(
    preset="gpt2-124m", block_size=256, stride=256, batch_size=2, epochs=10, val_fraction=0.1,
    lr=4e-4, schedule="constant", warmup=0, weight_decay=0.1, betas=(0.9, 0.999), grad_clip=None,
    eval_every=5, eval_iters=5, sample_every=0, sample_tokens=50, sample_prompt="Every effort moves you",
    checkpoint_every=0, keep_last=1, seed=123,
    model=dict(context_length=256, dropout=0.1, qkv_bias=False, tie_weights=False),
)
BABY_GPT = dict(
    preset=None, tokenizer="char", block_size=256, stride=1, batch_size=64, max_steps=5000, lr=1e-3, min_lr=1e-4,
    warmup=100, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0, eval_every=250, eval_iters=200,
    sample_every=1000, sample_tokens=300, sample_prompt="\n", checkpoint_every=1000,
    model=dict(n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False, qkv_bias=False, tie_weights=True),
)
BABY_CPU = dict(block_size=64, batch_size=12, max_steps=2000, eval_every=250, eval_iters=20, sample_every=0,
                model=dict(n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False, qkv_bias=False, tie_weights=True))
STAND_IN = dict(
    preset=None, tokenizer="bpe", vocab_size=512, block_size=64, stride=64, batch_size=16, max_steps=120, lr=3e-3,
    warmup=20, eval_every=50, eval_iters=8, sample_every=0, sample_tokens=60, sample_prompt="The ", checkpoint_every=0,
    keep_last=1, seed=0, progress=False, model=dict(n_layer=2, n_head=4, n_embd=64, dropout=0.0),
)
VERDICT_CHARS = 20_479


def book_init(model, seed: int = 123) -> None:
    """Re-initialise like the book's PyTorch model, which keeps PyTorch's default initialisation: embeddings
    N(0, 1), Linear weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LayerNorm scale 1 and shift 0.

    Our GPT uses GPT-2's scheme (N(0, 0.02), scaled residual projections), under which this 163M-parameter model
    sits near the unigram loss (~6) for the whole 90 steps instead of memorising the text as in the book: with
    N(0, 1) embeddings the token identity dominates the residual stream, which makes memorising quick.
    """
    rng = np.random.default_rng(seed)
    fan_in = {}
    for name, p in model.named_parameters():
        if name.endswith(".weight") and p.ndim == 2:
            fan_in[name[: -len(".weight")]] = p.shape[1]
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        if name.endswith("_emb.weight"):
            p.data[...] = rng.standard_normal(p.shape)
        elif "norm" in owner:
            p.data[...] = 1.0 if name.endswith(".weight") else 0.0
        else:
            bound = 1.0 / np.sqrt(fan_in[owner])
            p.data[...] = rng.uniform(-bound, bound, p.shape)


def verdict_differences(args, text_len: int) -> list[str]:
    """How this run differs from the book's chapter-5 set-up (empty: it is that set-up)."""
    diffs = []
    if text_len != VERDICT_CHARS:
        diffs.append(f"the text has {text_len:,} characters, not the Verdict's {VERDICT_CHARS:,}")
    if not args.encoder_json:
        diffs.append(f"a {args.vocab_size}-token BPE trained on the text instead of GPT-2's tokenizer (lower losses)")
    if args.epochs != 10:
        diffs.append(f"{args.epochs} epochs instead of 10")
    if args.init != "book":
        diffs.append("GPT-2's initialisation instead of the book's (the loss stays near 6)")
    return diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verdict", help="the-verdict.txt: the book's chapter-5 run")
    ap.add_argument("--shakespeare", help="tiny Shakespeare input.txt: nanoGPT's character-level run")
    ap.add_argument("--encoder-json", help="GPT-2 encoder.json (with --vocab-bpe: GPT-2's exact tokenizer)")
    ap.add_argument("--vocab-bpe", help="GPT-2 vocab.bpe")
    ap.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary for --verdict without GPT-2 files")
    ap.add_argument("--epochs", type=int, default=10, help="--verdict: epochs (the book: 10)")
    ap.add_argument("--init", choices=["book", "gpt2"], default="book", help="--verdict: initialisation")
    ap.add_argument("--cpu", action="store_true", help="--shakespeare: nanoGPT's smaller CPU setting")
    ap.add_argument("--steps", type=int, default=None, help="override the number of steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", default="out-pretrain")
    ap.add_argument("--overwrite", action="store_true", help="replace a run already in --out-dir (the stand-in "
                    "always does: it is the lesson's scratch run)")
    args = ap.parse_args(argv)
    if args.verdict and args.shakespeare:
        ap.error("choose one of --verdict and --shakespeare")
    if bool(args.encoder_json) != bool(args.vocab_bpe):
        ap.error("give both --encoder-json and --vocab-bpe")

    mode = "verdict" if args.verdict else "shakespeare" if args.shakespeare else "stand-in"
    lesson("Lesson 10: pretraining" + {"verdict": " (the Verdict, the book's chapter 5)",
                                       "shakespeare": " (tiny Shakespeare, nanoGPT)",
                                       "stand-in": " (stand-in: the package's embedded corpus)"}[mode],
           "a real pretraining run with the library's Trainer: data split, schedule, evaluation, samples, checkpoint",
           {"verdict": "the book's losses only if this is the book's exact set-up (see the end)",
            "shakespeare": "val loss ~1.47 (full config, GPU) or ~1.88 (--cpu) after all steps",
            "stand-in": "val loss from ln(512) = 6.24 to ~4.9 in 120 steps (fast: 15 steps, ~5.5); no book's numbers"
            }[mode])

    tok = None
    if mode == "verdict":
        settings = {**BOOK, "epochs": args.epochs, "tokenizer": "bpe", "vocab_size": args.vocab_size,
                    "data": args.verdict}
        if args.encoder_json:
            from tinygrad_llm.tokenizer import BPETokenizer
            tok = BPETokenizer.from_gpt2_files(args.encoder_json, args.vocab_bpe)
    elif mode == "shakespeare":
        settings = {**BABY_GPT, **(BABY_CPU if args.cpu else {}), "data": args.shakespeare}
    else:
        print("No data given: training on the package's embedded corpus. For the book's run or nanoGPT's, download "
              "the texts listed in this file's docstring and pass --verdict or --shakespeare.")
        settings = dict(STAND_IN, max_steps=15 if FAST else STAND_IN["max_steps"])
        if FAST:
            settings.update(eval_every=5, eval_iters=2)
    if args.steps:
        settings["max_steps"] = args.steps
        settings.pop("epochs", None)
    cfg = TrainConfig(**settings, device=args.device, out_dir=args.out_dir,
                      overwrite=args.overwrite or mode == "stand-in")
    trainer = Trainer(cfg, tokenizer=tok)
    if mode == "verdict" and args.init == "book":
        book_init(trainer.model, cfg.seed)
    print(f"{trainer.model.num_parameters():,} parameters, {trainer.num_tokens:,} tokens (vocab "
          f"{trainer.tokenizer.vocab_size}), {trainer.config.max_steps} steps")
    section("training")
    summary = trainer.train()
    val = summary.get("val_loss", float("nan"))
    print(f"after {summary['step']} steps: train loss {summary['train_loss']:.3f}, val loss {val:.3f}")
    for s in summary["samples"]:
        print("sample:", s)

    section("how this compares")
    if mode == "verdict":
        text_len = len(open(args.verdict, encoding="utf-8").read())
        diffs = verdict_differences(args, text_len) + (["--steps overrides the epochs"] if args.steps else [])
        if not diffs:
            print("This is the book's set-up: the book reports train ~0.4 and val ~6.4 after 10 epochs "
                  "(measured here: 0.51 and 6.68).")
        else:
            print("The book's numbers (train ~0.4, val ~6.4 after 10 epochs) do not apply to this run: "
                  + "; ".join(diffs) + ".")
    elif mode == "shakespeare":
        full = not args.steps
        if full:
            print(f"nanoGPT reports val ~{'1.88' if args.cpu else '1.47'} for this configuration.")
        else:
            print("nanoGPT's numbers (val ~1.47 / ~1.88) are for the full number of steps; this run is shorter.")
    else:
        print(f"Stand-in expectation: val loss ~{'5.5' if FAST else '4.9'} after {summary['step']} steps "
              "(a different text, tokenizer and model from the book's and nanoGPT's runs).")
    done(f"{mode}: val loss {val:.3f} after {summary['step']} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
