"""Pretrain a GPT-2-sized model on "The Verdict", as in chapter 5 of Raschka's *Build a Large Language Model
(From Scratch)*.

    python examples/pretrain_the_verdict.py the-verdict.txt --encoder-json encoder.json --vocab-bpe vocab.bpe
    python examples/pretrain_the_verdict.py the-verdict.txt            # no GPT-2 files: a BPE trained on the text

The text (20,479 characters; 5,145 GPT-2 tokens) is the book's
https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt and GPT-2's
tokenizer files are OpenAI's ``encoder.json`` and ``vocab.bpe``.

The book's set-up (GPT_CONFIG_124M with context 256): 12 layers, 12 heads, 768 wide, dropout 0.1, no qkv bias,
an output head separate from the token embedding (163M parameters); AdamW lr 4e-4, weight decay 0.1, betas
(0.9, 0.999), no warmup, no schedule, no clipping; batch 2; windows of 256 tokens with stride 256; 90/10 split;
10 epochs (9 batches each: 90 steps); evaluation every 5 steps over 5 batches.

Initialisation: by default the model is re-initialised as the book's PyTorch model is (``--init book``, see
``book_init``); with GPT-2's initialisation (``--init gpt2``) this tiny data set is not memorised in 90 steps and the
training loss stays near 6.

What to expect: the book reports a training loss falling from ~9.8 to ~0.4 and a validation loss that bottoms out
near 6.3 and ends at ~6.4 after 10 epochs: 4,600 training tokens are far too few for 163M parameters, so the model
memorises them (sampled text reproduces passages of the story). With a BPE trained on the text (no GPT-2 files) the
vocabulary is smaller and the numbers differ (the losses are lower: fewer tokens to choose from).
Measured here (2 CPU cores, default ``--init book``, GPT-2 files): 5 min 13 s for the 90 steps (~3 s a step);
train loss 0.45 at step 85 and 0.51 on the last batch, val loss lowest at 6.14 (step 50) and 6.68 at the end:
the book's curve. With ``--init gpt2`` the training loss is still 6.06 after 10 epochs (val 6.66).
"""
from __future__ import annotations

import argparse
import sys

from tinygrad_llm.train import Trainer, TrainConfig

BOOK = dict(
    preset="gpt2-124m", block_size=256, stride=256, batch_size=2, epochs=10, val_fraction=0.1,
    lr=4e-4, schedule="constant", warmup=0, weight_decay=0.1, betas=(0.9, 0.999), grad_clip=None,
    eval_every=5, eval_iters=5, sample_every=0, sample_tokens=50, sample_prompt="Every effort moves you",
    checkpoint_every=0, keep_last=1, seed=123,
    model=dict(context_length=256, dropout=0.1, qkv_bias=False, tie_weights=False),
)


def book_init(model, seed: int = 123) -> None:
    """Re-initialise like the book's PyTorch model, which keeps PyTorch's default initialisation: embeddings
    N(0, 1), Linear weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LayerNorm scale 1 and shift 0.

    Our GPT uses GPT-2's scheme (N(0, 0.02), scaled residual projections), under which this 163M-parameter model
    sits near the unigram loss (~6) for the whole 90 steps instead of memorising the text as in the book: with
    N(0, 1) embeddings the token identity dominates the residual stream, which makes memorising quick.
    """
    import numpy as np
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="the-verdict.txt")
    ap.add_argument("--encoder-json", help="GPT-2 encoder.json (with --vocab-bpe: GPT-2's exact tokenizer)")
    ap.add_argument("--vocab-bpe", help="GPT-2 vocab.bpe")
    ap.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary when no GPT-2 files are given")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", default="out-verdict")
    ap.add_argument("--init", choices=["book", "gpt2"], default="book",
                    help="book: PyTorch's default initialisation, as the book's model (default); gpt2: ours")
    args = ap.parse_args(argv)

    tok = None  # None: the trainer trains a BPE of --vocab-size on the text
    if args.encoder_json or args.vocab_bpe:
        if not (args.encoder_json and args.vocab_bpe):
            ap.error("give both --encoder-json and --vocab-bpe")
        from tinygrad_llm.tokenizer import BPETokenizer
        tok = BPETokenizer.from_gpt2_files(args.encoder_json, args.vocab_bpe)
    cfg = TrainConfig(**{**BOOK, "epochs": args.epochs}, tokenizer="bpe", vocab_size=args.vocab_size,
                      data=args.data, device=args.device, out_dir=args.out_dir)
    trainer = Trainer(cfg, tokenizer=tok)  # the tokenizer is saved in the checkpoint
    if args.init == "book":
        book_init(trainer.model, cfg.seed)
    print(f"{trainer.model.num_parameters():,} parameters, {trainer.num_tokens:,} tokens "
          f"(vocab {trainer.tokenizer.vocab_size}), {trainer.config.max_steps} steps", file=sys.stderr)
    summary = trainer.train()
    print(f"after {args.epochs} epochs: train loss {summary['train_loss']:.3f}, val loss "
          f"{summary.get('val_loss', float('nan')):.3f} (the book, with GPT-2's tokenizer: ~0.4 and ~6.4)")
    for s in summary["samples"]:
        print(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
