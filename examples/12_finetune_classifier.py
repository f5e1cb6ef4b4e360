"""Classification fine-tuning: a GPT with a 2-class head on its last token, as in chapter 6 of Raschka's *Build a
Large Language Model (From Scratch)*, on a generated task you can reproduce offline, with baselines to beat.

    python examples/12_finetune_classifier.py                 # offline: the generated review task, seconds
    python examples/12_finetune_classifier.py SMSSpamCollection --init-from gpt2/    # the book's run

The generated task: short reviews such as "the food was not tasty but the staff was friendly", labelled by the
sentiment of the LAST clause, where "not" flips an adjective; 5% of the labels are flipped at random (so 95% is
the best any model can score). Three baselines show what the task asks for:
- the majority class: ~53%;
- counting positive minus negative adjectives: ~59% (blind to "not" and to "but");
- the same count, flipped when "not" occurs anywhere: ~80% (blind to which clause counts);
- only the rule that reads the last clause with its negation reaches the ~95% ceiling.
A 2-block GPT trained from scratch on 800 such reviews (70/10/20 split) must learn word order to beat 80%.

What to expect (offline): baselines 53% / 59% / 80%, and the GPT's test accuracy near 90% after 8 epochs (the fast
setting: 600 reviews, 4 epochs, ~79%: above the adjective count, at the negation rule); the two example
reviews classified at the end.

The book's run. Data: the UCI SMS Spam Collection
(https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip; "ham<TAB>text" / "spam<TAB>text" lines).
Weights: ``huggingface-cli download openai-community/gpt2 model.safetensors config.json vocab.json merges.txt
--local-dir gpt2`` (see lesson 11). The book's set-up (the defaults with a data file): classes balanced by
undersampling ham to 747, a 70/10/20 split, padding with <|endoftext|> to the longest training message, the last
position classified, only the last block, the final norm and the head trainable, AdamW lr 5e-5, weight decay 0.1,
batch 8, 5 epochs. The book reports about 97% training, 97% validation and 96% test accuracy (an epoch of GPT-2
small takes a while on two CPU cores; use ``--device cuda``). ``--lora-rank 16 --trainable head`` trains LoRA
adapters instead (the book's appendix E).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from course import FAST, done, lesson, section

from tinygrad_llm.finetune import classify_texts, run_classify

POSITIVE = ["good", "great", "lovely", "superb", "friendly", "tasty"]
NEGATIVE = ["bad", "awful", "dull", "rude", "bland", "noisy"]
NOUNS = ["food", "service", "room", "staff", "film", "music", "coffee", "view"]


def review(rng: np.random.Generator) -> tuple[str, bool]:
    """One review of one or two clauses; the label is the last clause's sentiment (True: positive)."""
    def clause() -> tuple[str, bool]:
        positive, negated = rng.random() < 0.5, rng.random() < 0.4
        adj = (POSITIVE if positive else NEGATIVE)[rng.integers(len(POSITIVE))]
        return f"the {NOUNS[rng.integers(len(NOUNS))]} was {'not ' if negated else ''}{adj}", positive != negated
    text, label = clause()
    if rng.random() < 0.5:
        second, label = clause()
        text = f"{text} but {second}"
    return text, label


def make_reviews(n: int, seed: int = 0, noise: float = 0.05) -> list[tuple[str, str]]:
    """(label, text) rows; a fraction ``noise`` of the labels flipped at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        text, label = review(rng)
        if rng.random() < noise:
            label = not label
        rows.append(("positive" if label else "negative", text))
    return rows


def count_score(words: list[str]) -> int:
    return sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)


def baselines(rows: list[tuple[str, str]]) -> dict[str, float]:
    labels = [label for label, _ in rows]
    majority = Counter(labels).most_common(1)[0][0]
    guess = lambda s: "positive" if s >= 0 else "negative"   # noqa: E731
    rules = {
        "majority class": lambda t: majority,
        "count adjectives": lambda t: guess(count_score(t.split())),
        "count, flipped by 'not'": lambda t: guess(-count_score(t.split()) if "not" in t.split()
                                                   else count_score(t.split())),
        "last clause with negation": lambda t: guess(-count_score(t.split(" but ")[-1].split())
                                                     if "not" in t.split(" but ")[-1].split()
                                                     else count_score(t.split(" but ")[-1].split())),
    }
    return {name: float(np.mean([rule(t) == y for y, t in rows])) for name, rule in rules.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", help="CSV/TSV of text and label (e.g. SMSSpamCollection); none: generated")
    ap.add_argument("--init-from", help="folder with GPT-2's model.safetensors + config.json + tokenizer files")
    ap.add_argument("--epochs", type=int, default=None, help="default 5 (8 for the generated task)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 8 (16 for the generated task)")
    ap.add_argument("--lr", type=float, default=None, help="default 5e-5 (2e-3 for the generated task)")
    ap.add_argument("--pool", default=None, choices=["last", "last_token"])
    ap.add_argument("--trainable", default=None, help="last_block | all | head | N")
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", default="out-classifier")
    args = ap.parse_args(argv)
    generated = args.data is None
    lesson("Lesson 12: classification fine-tuning",
           "a class head on the last token, accuracy against baselines, what 'learnable but not trivial' means",
           "baselines 53% / 59% / 80% / 95% (ceiling); the GPT near 90% (fast setting ~79%)" if generated else
           "the book: ~97% train, ~97% val, ~96% test on SMS spam with GPT-2 small")
    if generated:
        n = 600 if FAST else 800
        rows = make_reviews(n)
        data = str(Path(tempfile.mkdtemp()) / "reviews.tsv")
        Path(data).write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
        section(f"the generated task: {n} reviews")
        for label, text in rows[:4]:
            print(f"  {label:>8}: {text}")
        section("baselines (on all rows)")
        for name, acc in baselines(rows).items():
            print(f"  {name:<27} {acc:.1%}")
        base = dict(preset="micro", trainable=args.trainable or "all", pool=args.pool or "last_token",
                    epochs=args.epochs or (4 if FAST else 8), batch_size=args.batch_size or 16,
                    lr=args.lr or (1.5e-3 if FAST else 2e-3))
    else:
        if not args.init_from:
            ap.error("a data file needs --init-from (a GPT-2 weights folder); without a file the task is generated")
        data = args.data
        base = dict(init_from=args.init_from, trainable=args.trainable or "last_block", pool=args.pool or "last",
                    epochs=args.epochs or 5, batch_size=args.batch_size or 8, lr=args.lr or 5e-5, balance=True)
    trainable = base.pop("trainable")
    section("fine-tuning")
    res = run_classify(data, **base, trainable=int(trainable) if str(trainable).isdigit() else trainable,
                       lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, device=args.device, out_dir=args.out_dir)
    print(f"training accuracy {res['train_acc']:.1%}, validation {res.get('val_acc', float('nan')):.1%}, "
          f"test {res.get('test_acc', float('nan')):.1%}")
    examples = (["the coffee was not bad but the music was dull", "the room was noisy but the view was not bad"]
                if generated else
                ["You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
                 "Hey, just wanted to check if we're still on for dinner tonight? Let me know!"])  # the book's
    for text, label in zip(examples, classify_texts(res["model"], res["tokenizer"], examples, res["labels"])):
        print(f"{label:>8}: {text}")
    done(f"test accuracy {res.get('test_acc', float('nan')):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
