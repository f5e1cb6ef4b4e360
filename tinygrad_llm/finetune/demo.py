"""Tiny synthetic datasets for trying the fine-tuning commands without downloads (``--demo``).

``write_demo_classification``: SMS-like messages, "ham<TAB>text" / "spam<TAB>text" lines without a header, the
format of the SMS Spam Collection file the book uses. ``write_demo_instructions``: Alpaca-style JSON records
(antonyms, plurals, capitals, sentence rewrites) in the format of the book's ``instruction-data.json``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["demo_classification", "demo_instructions", "write_demo_classification", "write_demo_instructions"]

_SPAM = ["WINNER! You have won a free prize, call now to claim", "URGENT: your cash reward is waiting, text WIN",
         "Free entry to win a holiday, reply YES now", "Claim your free mobile upgrade today, click the link",
         "Congratulations, you won 1000 pounds cash! Call to claim", "Exclusive offer: free ringtones, text STOP"]
_HAM = ["Are we still meeting for lunch tomorrow?", "I'll be home late tonight, save me some dinner",
        "Thanks for the call, see you at the station", "Can you pick up milk on the way back?",
        "Sorry I missed you, call me when you are free", "The meeting moved to three, see you there"]
_FILL = ["ok", "now", "today", "please", "", "!!", "thanks", "later", "x"]


def demo_classification(n: int = 240, seed: int = 0) -> list[tuple[str, str]]:
    """(label, text) pairs, about half spam, with varied filler words."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "spam" if rng.random() < 0.5 else "ham"
        base = (_SPAM if label == "spam" else _HAM)[rng.integers(6)]
        words = [w for w in (rng.choice(_FILL), base, rng.choice(_FILL)) if w]
        rows.append((label, " ".join(words)))
    return rows


def write_demo_classification(path: str | os.PathLike, n: int = 240, seed: int = 0) -> str:
    """Write ``demo_classification`` as a header-less TSV (label first, as SMSSpamCollection); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(f"{label}\t{text}\n" for label, text in demo_classification(n, seed)), encoding="utf-8")
    return str(p)


_ANTONYMS = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("early", "late"),
             ("light", "dark"), ("open", "closed"), ("strong", "weak"), ("full", "empty"), ("old", "new")]
_PLURALS = [("cat", "cats"), ("box", "boxes"), ("child", "children"), ("mouse", "mice"), ("city", "cities"),
            ("leaf", "leaves"), ("tooth", "teeth"), ("bus", "buses"), ("person", "people"), ("book", "books")]
_CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Germany", "Berlin"), ("Kenya", "Nairobi")]


def demo_instructions(n: int = 120, seed: int = 0) -> list[dict]:
    """Alpaca-style records {instruction, input, output}; some with an empty input, as in the book's data."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a, b = _ANTONYMS[rng.integers(len(_ANTONYMS))]
            out.append({"instruction": "Provide the opposite of the given word.", "input": a,
                        "output": f"The opposite of {a} is {b}."})
        elif kind == 1:
            a, b = _PLURALS[rng.integers(len(_PLURALS))]
            out.append({"instruction": "What is the plural form of the word?", "input": a,
                        "output": f"The plural of {a} is {b}."})
        elif kind == 2:
            a, b = _CAPITALS[rng.integers(len(_CAPITALS))]
            out.append({"instruction": f"What is the capital of {a}?", "input": "",
                        "output": f"The capital of {a} is {b}."})
        else:
            a, b = _ANTONYMS[rng.integers(len(_ANTONYMS))]
            out.append({"instruction": "Rewrite the sentence using the opposite adjective.",
                        "input": f"The room is {a}.", "output": f"The room is {b}."})
    return out


def write_demo_instructions(path: str | os.PathLike, n: int = 120, seed: int = 0) -> str:
    """Write ``demo_instructions`` as a JSON list; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(demo_instructions(n, seed), indent=1) + "\n", encoding="utf-8")
    return str(p)
