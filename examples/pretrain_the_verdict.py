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

What to expect: the book reports a training loss falling from ~9.8 to ~0.4 and a validation loss that bottoms out
near 6.3 and ends at ~6.4 after 10 epochs: 4,600 training tokens are far too few for 163M parameters, so the model
memorises them (sampled text reproduces passages of the story). With a BPE trained on the text (no GPT-2 files) the
vocabulary is smaller and the numbers differ (the losses are lower: fewer tokens to choose from).
On two CPU cores each step of this model takes seconds; the whole run takes tens of minutes (minutes on a GPU,
``--device cuda``).
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="the-verdict.txt")
    ap.add_argument("--encoder-json", help="GPT-2 encoder.json (with --vocab-bpe: GPT-2's exact tokenizer)")
    ap.add_argument("--vocab-bpe", help="GPT-2 vocab.bpe")
    ap.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary when no GPT-2 files are given")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", default="out-verdict")
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
