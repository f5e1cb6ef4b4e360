"""Instruction fine-tuning (chapter 7 of Raschka's *Build a Large Language Model (From Scratch)*) and LoRA
(its appendix E): the prompt template, the batches with masked targets, a tuning run, and low-rank adapters by hand.

    python examples/13_instructions_and_lora.py                    # offline: generated instructions, seconds
    python examples/13_instructions_and_lora.py instruction-data.json --init-from gpt2-medium/   # the book's run

Part 1: every record {instruction, input, output} becomes the Alpaca prompt ("Below is an instruction ...
### Instruction: ... ### Input: ... ### Response:") followed by the output. A batch pads every sequence with
<|endoftext|>; the targets are the inputs shifted by one, the first pad stays as the "stop here" target and the
rest become -100 (ignored by the loss); ``mask_prompt`` also ignores the prompt, so only the answer is learned.
Part 2: a small GPT (from scratch, no pretraining) tuned on 120 generated records of four kinds (opposites,
plurals, capitals, rewriting a sentence). It learns the response FORMAT quickly; 100 records cannot teach it the
facts, which is what pretraining (lesson 10, 11) is for: expect answers such as "The capital of Egypt is Cairo."
to the question about Italy.
Part 3: LoRA. A frozen weight W gets a trainable update (alpha / r) A B of rank r: B starts at zero, so the model
is unchanged at first; only A and B (a few percent of the parameters) train; ``merge_lora`` folds them into W.

What to expect: the masked target row; the loss falling from ln(512) = 6.2 to ~0.9 in 6 epochs (fast setting:
2 epochs, ~2.2); answers in the right template; LoRA with ~5% of the parameters trainable, identical logits at
initialisation, gradients only on A and B, and merged logits equal to the adapted model's (~1e-6 in float32).

The book's run: data https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/
instruction-data.json, weights ``huggingface-cli download openai-community/gpt2-medium model.safetensors
config.json vocab.json merges.txt --local-dir gpt2-medium``; the first 85% train, 10% test, 5% validate; batches of
8; AdamW lr 5e-5, weight decay 0.1, 2 epochs; greedy answers of up to 256 tokens. The book reports the training
loss falling from ~2.6 to ~0.3 and the validation loss to ~0.66 (hours on two CPU cores: use ``--device cuda``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from course import FAST, done, lesson, section

import autograd as ag
import tinygrad_llm as tl
from tinygrad_llm.finetune import run_instruct
from tinygrad_llm.finetune.demo import demo_instructions, write_demo_instructions
from tinygrad_llm.finetune.instruct import InstructionDataset, collate, format_example
from tinygrad_llm.finetune.lora import apply_lora, lora_parameters, merge_lora
from tinygrad_llm.tokenizer import CharTokenizer


def part1() -> None:
    section("part 1: the template and a batch with masked targets")
    entry = demo_instructions(4)[3]
    prompt, response = format_example(entry)
    print(prompt + response)
    tok = CharTokenizer.train("".join("".join(format_example(e)) for e in demo_instructions(8)) + "\x00")
    pad = tok.encode("\x00")[0]
    ds = InstructionDataset(demo_instructions(8)[:2], tok)
    x, y = collate([ds[0], ds[1]], pad_id=pad, mask_prompt=True)
    print(f"\nbatch of 2 (characters as tokens): inputs {x.shape}, targets {y.shape}")
    tail = slice(-12, None)
    print("last 12 inputs, row 1: ", x[1, tail].tolist())
    print("last 12 targets, row 1:", y[1, tail].tolist(), " (-100: padding after the kept end-of-text target)")
    n_prompt = int((y[0] == -100).sum())
    print(f"row 0: {n_prompt} of {y.shape[1]} targets ignored (the prompt, masked), "
          f"{y.shape[1] - n_prompt} learned (the answer and its end)")


def part3(model, tok, records: list[dict]) -> float:
    section("part 3: LoRA on the tuned model")
    ds = InstructionDataset(records[:8], tok, model.config.context_length)
    x, y = collate([ds[i] for i in range(len(ds))], pad_id=tok.eos_id, mask_prompt=True)
    with ag.no_grad():
        before = model(x).numpy()
    report = apply_lora(model, rank=4, alpha=8.0)
    print(report)
    with ag.no_grad():
        at_init = model(x).numpy()
    print(f"logits right after apply_lora equal the original's: {np.array_equal(before, at_init)} (B starts at zero)")
    opt = tl.optim.AdamW([p for _, p in lora_parameters(model)], lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(5 if FAST else 20):
        _, loss = model(x, y)
        loss.backward()
        graded = {n for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        opt.zero_grad()
        first = loss.item() if first is None else first
    with ag.no_grad():
        last = model(x, y)[1].item()
    only_lora = all(n.endswith(("lora_A", "lora_B")) for n in graded)
    print(f"{5 if FAST else 20} LoRA steps on one batch: loss {first:.3f} -> {last:.3f}; gradients only on A and B: "
          f"{only_lora}")
    with ag.no_grad():
        adapted = model(x).numpy()
    merge_lora(model)
    with ag.no_grad():
        merged = model(x).numpy()
    err = float(np.abs(adapted - merged).max())
    print(f"after merge_lora (W + (alpha/r) A B, plain Linear layers again): largest logit difference {err:.1e}")
    return err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", help="instruction-data.json; none: generated records")
    ap.add_argument("--init-from", help="folder with GPT-2's model.safetensors + config.json + tokenizer files")
    ap.add_argument("--epochs", type=int, default=None, help="default 2 (6 for the generated records)")
    ap.add_argument("--lr", type=float, default=None, help="default 5e-5 (3e-3 for the generated records)")
    ap.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters only (the whole run)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", default="out-instruct")
    args = ap.parse_args(argv)
    generated = args.data is None
    lesson("Lesson 13: instruction fine-tuning and LoRA",
           "the Alpaca template, masked targets, an instruction-tuning run, LoRA adapters and merging them",
           "loss 6.2 -> ~0.9 (fast ~2.2), answers in the template; LoRA ~5% trainable, merged = adapted" if generated
           else "the book: train loss ~2.6 -> ~0.3, val ~0.66 (GPT-2 medium)")
    part1()
    section("part 2: instruction tuning")
    if generated:
        data = write_demo_instructions(Path(tempfile.mkdtemp()) / "instructions.json")
        base = dict(preset="micro", context_length=256, mask_prompt=True, max_new_tokens=24, num_responses=3,
                    epochs=args.epochs or (2 if FAST else 6), lr=args.lr or 3e-3)
    else:
        if not args.init_from:
            ap.error("a data file needs --init-from (a GPT-2 weights folder); without a file the records are generated")
        data = args.data
        base = dict(init_from=args.init_from, epochs=args.epochs or 2, lr=args.lr or 5e-5)
    res = run_instruct(data, **base, batch_size=8, lora_rank=args.lora_rank, device=args.device,
                       out_dir=args.out_dir)
    ev = res["evals"][-1] if res["evals"] else {}
    final = ev.get("train_loss", float("nan"))
    print(f"final train loss {final:.3f}, val loss {ev.get('val_loss', float('nan')):.3f}; "
          f"responses in {res['responses']}")
    if generated:
        err = part3(res["model"], res["tokenizer"], demo_instructions(120))
        done(f"train loss {final:.3f}; LoRA merged = adapted to {err:.1e}")
    else:
        done(f"train loss {final:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
