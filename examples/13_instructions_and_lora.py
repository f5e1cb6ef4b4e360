"""Instruction-tune GPT-2 on Alpaca-style data, as in chapter 7 of Raschka's *Build a Large Language Model
(From Scratch)*, then write its answers to the held-out test instructions to a JSON file.

    # the book's run: GPT-2 medium (355M) weights + the book's 1,100 instructions
    python examples/finetune_instructions.py instruction-data.json --init-from gpt2-medium/
    # no downloads: a tiny random model on synthetic instructions (about half a minute on a CPU)
    python examples/finetune_instructions.py --demo

Data: a JSON list of {"instruction", "input", "output"} records, e.g. the book's
https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json .
Each becomes the Alpaca prompt ("Below is an instruction that describes a task. Write a response that
appropriately completes the request.\\n\\n### Instruction:\\n...\\n\\n### Input:\\n...\\n\\n### Response:\\n") followed
by the output. Weights: a folder with Hugging Face's GPT-2 files, e.g.
``huggingface-cli download openai-community/gpt2-medium model.safetensors config.json vocab.json merges.txt
--local-dir gpt2-medium``.

The book's set-up (the defaults here): the first 85% of the records train, the next 10% are the test set and the
last 5% validate (935 / 110 / 55); batches of 8 padded with <|endoftext|> to the longest (+1), the first pad kept as
the end-of-text target and the rest ignored (-100), crop at 1,024 tokens; AdamW lr 5e-5, weight decay 0.1, 2 epochs;
greedy answers of up to 256 tokens stopped at <|endoftext|>. The book reports the training loss falling from ~2.6
to ~0.3 and the validation loss to ~0.66, and answers such as "The meal is cooked by the chef every day." for
"Rewrite the sentence using a simile." style instructions. ``--mask-prompt`` leaves the prompt tokens out of the
loss (the book's exercise 7.2); ``--lora-rank 8`` trains LoRA adapters only. GPT-2 medium on two CPU cores is slow
(hours for the full run): use ``--device cuda``, or ``--steps`` / a smaller model to try it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tinygrad_llm.finetune import run_instruct
from tinygrad_llm.finetune.demo import write_demo_instructions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", help="instruction-data.json")
    ap.add_argument("--init-from", help="folder with GPT-2's model.safetensors + config.json + tokenizer files")
    ap.add_argument("--demo", action="store_true", help="synthetic data and a tiny random model (no downloads)")
    ap.add_argument("--epochs", type=int, default=None, help="default 2 (5 with --demo)")
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None, help="default 5e-5 (2e-3 with --demo)")
    ap.add_argument("--mask-prompt", action="store_true")
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--num-responses", type=int, default=None, help="answer only the first N test records")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", default="out-instruct")
    args = ap.parse_args(argv)
    if args.demo:
        data = args.data or write_demo_instructions(Path(tempfile.mkdtemp()) / "instructions.json")
        base = dict(preset="micro", context_length=256) if not args.init_from else dict(init_from=args.init_from)
        lr, epochs, max_new = args.lr or 2e-3, args.epochs or 5, min(args.max_new_tokens, 24)
    else:
        if not (args.data and args.init_from):
            ap.error("give instruction-data.json and --init-from (GPT-2 weights folder), or --demo")
        data, base = args.data, dict(init_from=args.init_from)
        lr, epochs, max_new = args.lr or 5e-5, args.epochs or 2, args.max_new_tokens
    res = run_instruct(data, **base, epochs=epochs, max_steps=args.steps, batch_size=args.batch_size, lr=lr,
                       mask_prompt=args.mask_prompt, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                       max_new_tokens=max_new, num_responses=args.num_responses, device=args.device,
                       out_dir=args.out_dir)
    ev = res["evals"][-1] if res["evals"] else {}
    print(f"final train loss {ev.get('train_loss', float('nan')):.3f}, val loss {ev.get('val_loss', float('nan')):.3f}"
          f" (the book, GPT-2 medium: ~0.3 and ~0.66); responses in {res['responses']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
