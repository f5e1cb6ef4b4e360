"""What every lesson shares: the import path, the fast setting, and how a lesson talks.

A lesson runs from a checkout with or without ``pip install -e .``. ``COURSE_FAST=1`` in the environment (or
``--fast`` on the command line) runs it with smaller settings, as the test suite does; the numbers it prints are
then the ones ``tests/test_examples.py`` checks.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("autograd") is None:  # a checkout without `pip install -e .`: the repository's copy
    sys.path.insert(0, str(ROOT))

#: smaller settings for the test suite (and for a first, quick look)
FAST = os.environ.get("COURSE_FAST") == "1" or "--fast" in sys.argv
if "--fast" in sys.argv:
    sys.argv.remove("--fast")

_T0 = time.perf_counter()


def softmax(s: np.ndarray) -> np.ndarray:
    """softmax over the last axis, by hand: exp(s - max) / sum(exp(s - max)) (subtracting the row's maximum gives
    the same result and never overflows)."""
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def lesson(title: str, teaches: str, expect: str) -> None:
    """The lesson's first lines: what it teaches and what the learner should see."""
    print("=" * 100)
    print(title + ("   [fast settings]" if FAST else ""))
    print("-" * 100)
    print("What it teaches:", teaches)
    print("What to expect: ", expect)
    print("=" * 100)


def section(title: str) -> None:
    print(f"\n--- {title} " + "-" * max(0, 95 - len(title)))


def done(summary: str) -> None:
    """The last line: the lesson's result and how long it took."""
    print(f"\nDone in {time.perf_counter() - _T0:.1f} s: {summary}")
