"""Classification fine-tuning (the book's chapter 6): a GPT whose LM head is replaced by an n-class head.

    clf = GPTClassifier(gpt, num_classes=2, trainable="last_block")   # freezes all but last block, final norm, head
    logits = clf(ids, lengths)                  # ids (B, T) padded with EOS, lengths (B,) -> (B, num_classes)
    texts, labels, names = read_labeled_file("sms.tsv")
    ds = ClassificationDataset(texts, labels, tokenizer)   # token ids, truncated to the context length
    for ids, lengths, y in ds.batches(8, shuffle=True, rng=0): ...
    accuracy(clf, ds)                            # fraction of correct argmax predictions

Which hidden state is classified. ``pool="last_token"`` (default) takes each row's last real token (ids are padded
on the right with the EOS id, and ``lengths`` says where each text ends), so padding never changes a prediction and
batches can be padded only to their longest row. ``pool="last"`` is the book's choice: every text padded with EOS
to one fixed length (the longest training text) and the hidden state at the final position classified; the model
then has to learn to see through the padding.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from autograd import Tensor, backend, no_grad
from autograd import functional as F

from ..nn.layers import Linear
from ..nn.module import Module

__all__ = ["GPTClassifier", "set_trainable", "read_labeled_file", "ClassificationDataset", "accuracy",
           "evaluate_loss", "classify_texts"]


class GPTClassifier(Module):
    """``gpt`` (a GPT) + ``head`` Linear(n_embd, num_classes) on one position's final-normed hidden state.

    ``forward(idx, lengths=None)``: idx (B, T) ints -> logits (B, num_classes). With ``lengths`` (B,) (pool
    "last_token") row b is classified at position lengths[b] - 1; without, at the last position T - 1.
    Parameter names: ``gpt.<GPT names>`` and ``head.weight`` (num_classes, C), ``head.bias``. The GPT's own LM
    head is not used (when tied it is the token embedding and costs nothing).
    """

    def __init__(self, gpt: Module, num_classes: int, trainable: str | int = "last_block", pool: str = "last_token",
                 seed: int | None = 0):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"GPTClassifier: num_classes must be >= 2, got {num_classes}")
        if pool not in ("last_token", "last"):
            raise ValueError(f"GPTClassifier: pool must be 'last_token' or 'last', got {pool!r}")
        self.gpt = gpt
        self.num_classes, self.pool = int(num_classes), pool
        self.pad_to: int | None = None   # pool "last": the fixed padded length used in training (set by run_classify)
        c = gpt.config.n_embd
        self.head = Linear(c, self.num_classes, bias=True, dtype=gpt.dtype, rng=seed)
        if gpt.device != "cpu":
            self.head.to(gpt.device)
        set_trainable(self, trainable)

    @property
    def config(self):
        return self.gpt.config

    def forward(self, idx, lengths=None) -> Tensor:
        h = self.gpt.forward_hidden(idx)                       # (B, T, C)
        b, t = h.shape[0], h.shape[1]
        if lengths is None or self.pool == "last":
            last = h[:, -1]                                     # (B, C)
        else:
            pos = np.asarray(backend.to_numpy(lengths), dtype=np.int64) - 1
            if pos.shape != (b,) or pos.min() < 0 or pos.max() >= t:
                raise ValueError(f"GPTClassifier: lengths must be (B,) = ({b},) values in 1..{t}, got {lengths}")
            rows, cols = np.arange(b), pos
            if h.device != "cpu":  # index a CuPy array with CuPy indices
                rows, cols = backend.to_device(rows, h.device), backend.to_device(cols, h.device)
            last = h[rows, cols]
        return self.head(last)

    def loss(self, idx, labels, lengths=None) -> Tensor:
        """Mean cross-entropy of the class logits against labels (B,) ints."""
        y = np.asarray(backend.to_numpy(labels), dtype=np.int64)
        logits = self.forward(idx, lengths)
        if backend.device_of(y) != logits.device:
            y = backend.to_device(y, logits.device)
        return F.cross_entropy(logits, y)


def set_trainable(clf: GPTClassifier, trainable: str | int = "last_block") -> int:
    """Freeze the classifier's GPT except what ``trainable`` names; the head always trains. Returns the number of
    trainable scalars.

    "last_block" (the book): the last transformer block + the final norm + the head; an int n: the last n blocks +
    final norm + head (0: the head alone); "all": everything; "none"/"lora": only the head (then ``apply_lora``).
    """
    gpt = clf.gpt
    n_layer = len(gpt.blocks)
    if trainable == "all":
        clf.requires_grad_(True)
        return clf.num_parameters(trainable_only=True)
    if trainable == "last_block":
        n = 1
    elif trainable in ("none", "lora", "head"):
        n = 0
    else:
        try:
            n = int(trainable)
        except (TypeError, ValueError):
            raise ValueError(f"trainable must be 'last_block', 'all', 'head' or a number of blocks, "
                             f"got {trainable!r}") from None
        if not 0 <= n <= n_layer:
            raise ValueError(f"trainable: {n} blocks asked, the model has {n_layer}")
    gpt.requires_grad_(False)
    for block in list(gpt.blocks)[n_layer - n:] if n else []:
        block.requires_grad_(True)
    if n:
        gpt.final_norm.requires_grad_(True)
    clf.head.requires_grad_(True)
    return clf.num_parameters(trainable_only=True)


# ------------------------------------------------------------------------------------------------ data
_TEXT_NAMES = ("text", "sentence", "message", "sms", "review", "content", "document")
_LABEL_NAMES = ("label", "labels", "class", "category", "target", "y")


def read_labeled_file(path: str | os.PathLike, text_col: str | int | None = None, label_col: str | int | None = None,
                      delimiter: str | None = None, label_names: Sequence[str] | None = None
                      ) -> tuple[list[str], list[int], list[str]]:
    """(texts, label ids, label names) from a CSV or TSV file of text and label.

    The delimiter is a tab for .tsv/.txt files and for files with no extension (the SMS Spam Collection's
    ``SMSSpamCollection`` is "ham<TAB>text" lines), else a comma (or ``delimiter``). A header row is used when it
    names the columns (text/sentence/message..., label/class/...); without one, of two columns the one with fewer
    distinct values is the label. Labels that are all integers keep their values (0..K-1); otherwise the sorted
    distinct strings are numbered (ham -> 0, spam -> 1), unless ``label_names`` gives the order.
    """
    p = Path(path)
    raw = p.read_text(encoding="utf-8-sig")
    if delimiter is None:
        delimiter = "," if p.suffix.lower() == ".csv" else "\t"
    rows = [r for r in csv.reader(io.StringIO(raw), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL) if r]
    if not rows:
        raise ValueError(f"{p}: no rows")
    head = [c.strip().lower() for c in rows[0]]

    def col(spec, names):
        if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
            return int(spec)
        if isinstance(spec, str):
            if spec.lower() not in head:
                raise ValueError(f"{p}: no column {spec!r} in the header {rows[0]}")
            return head.index(spec.lower())
        return next((head.index(n) for n in names if n in head), None)

    ti, li = col(text_col, _TEXT_NAMES), col(label_col, _LABEL_NAMES)
    has_header = (ti is not None and head[ti] in _TEXT_NAMES) or (li is not None and head[li] in _LABEL_NAMES) \
        or (isinstance(text_col, str) and not text_col.isdigit())
    body = rows[1:] if has_header else rows
    ncol = max(len(r) for r in body) if body else 0
    if ti is None or li is None:
        if ncol < 2:
            raise ValueError(f"{p}: expected two columns (text and label) separated by {delimiter!r}")
        if li is None and ti is None:
            distinct = [len({r[j] for r in body if len(r) > j}) for j in (0, 1)]
            li = 0 if distinct[0] < distinct[1] else 1
        if ti is None:
            ti = 1 - li if li in (0, 1) else 0
        if li is None:
            li = 1 - ti if ti in (0, 1) else 1
    texts, raw_labels = [], []
    for k, r in enumerate(body, 2 if has_header else 1):
        if len(r) <= max(ti, li):
            raise ValueError(f"{p}: row {k} has {len(r)} column(s), expected at least {max(ti, li) + 1}: {r}")
        texts.append(r[ti])
        raw_labels.append(r[li].strip())
    if not texts:
        raise ValueError(f"{p}: no data rows")
    if label_names is not None:
        names = list(label_names)
    elif all(s.lstrip("-").isdigit() for s in raw_labels):
        k = max(int(s) for s in raw_labels) + 1
        if min(int(s) for s in raw_labels) < 0:
            raise ValueError(f"{p}: integer labels must be >= 0")
        names = [str(i) for i in range(k)]
    else:
        names = sorted(set(raw_labels))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(raw_labels) - set(index))
    if unknown:
        raise ValueError(f"{p}: labels {unknown[:5]} are not among the label names {names}")
    return texts, [index[s] for s in raw_labels], names


class ClassificationDataset:
    """Texts as token ids (truncated to ``max_length``) with integer labels.

    ``batches(batch_size, shuffle, rng, pad_to)`` yields (ids (B, L) int64 right-padded with ``pad_id``, lengths
    (B,), labels (B,)); L is the longest row of the batch, or ``pad_to`` (the book's fixed length; pool "last").
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[int], tokenizer, max_length: int | None = None,
                 pad_id: int = 50256):
        if len(texts) != len(labels):
            raise ValueError(f"ClassificationDataset: {len(texts)} texts but {len(labels)} labels")
        self.ids = [list(tokenizer.encode(t)) or [pad_id] for t in texts]
        if max_length is not None:
            self.ids = [s[:max_length] for s in self.ids]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.pad_id = int(pad_id)

    @property
    def max_length(self) -> int:
        return max(len(s) for s in self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int, shuffle: bool = False, rng=None, pad_to: int | None = None,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        order = np.arange(len(self))
        if shuffle:
            np.random.default_rng(rng).shuffle(order)
        for s in range(0, len(order), batch_size):
            sel = order[s:s + batch_size]
            if drop_last and len(sel) < batch_size and len(order) >= batch_size:
                break
            lengths = np.asarray([len(self.ids[i]) for i in sel], dtype=np.int64)
            width = max(int(lengths.max()), pad_to or 0)
            ids = np.full((len(sel), width), self.pad_id, dtype=np.int64)
            for r, i in enumerate(sel):
                ids[r, :lengths[r]] = self.ids[i]
            yield ids, lengths, self.labels[sel]


def _batches_for(clf: GPTClassifier, ds: ClassificationDataset, batch_size: int, pad_to: int | None):
    return ds.batches(batch_size, pad_to=pad_to if clf.pool == "last" else None)


def accuracy(clf: GPTClassifier, ds: ClassificationDataset, batch_size: int = 16, max_batches: int | None = None,
             pad_to: int | None = None) -> float:
    """Fraction of rows whose argmax class equals the label (eval mode, no graph)."""
    correct = total = 0
    was = clf.training
    clf.eval()
    with no_grad():
        for k, (ids, lengths, y) in enumerate(_batches_for(clf, ds, batch_size, pad_to)):
            if max_batches is not None and k >= max_batches:
                break
            pred = backend.to_numpy(clf(ids, lengths).data).argmax(-1)
            correct += int((pred == y).sum())
            total += len(y)
    clf.train(was)
    return correct / max(total, 1)


def evaluate_loss(clf: GPTClassifier, ds: ClassificationDataset, batch_size: int = 16,
                  max_batches: int | None = None, pad_to: int | None = None) -> float:
    """Mean cross-entropy over (up to ``max_batches`` of) ``ds``."""
    losses, weights = [], []
    was = clf.training
    clf.eval()
    with no_grad():
        for k, (ids, lengths, y) in enumerate(_batches_for(clf, ds, batch_size, pad_to)):
            if max_batches is not None and k >= max_batches:
                break
            losses.append(float(clf.loss(ids, y, lengths).item()))
            weights.append(len(y))
    clf.train(was)
    return float(np.average(losses, weights=weights)) if losses else float("nan")


def classify_texts(clf: GPTClassifier, tokenizer, texts: Sequence[str], label_names: Sequence[str] | None = None,
                   max_length: int | None = None, pad_to: int | None = None) -> list:
    """Predicted label (name when ``label_names`` is given, else id) of each text. With pool "last" texts are
    truncated and padded to ``pad_to`` (default ``clf.pad_to``, the training length), as the book's
    ``classify_review``."""
    from .common import eos_id_of
    pad_to = pad_to or clf.pad_to
    ds = ClassificationDataset(texts, [0] * len(texts), tokenizer,
                               max_length or pad_to or clf.config.context_length, eos_id_of(tokenizer))
    preds = []
    clf.eval()
    with no_grad():
        for ids, lengths, _ in _batches_for(clf, ds, 16, pad_to):
            preds += [int(i) for i in backend.to_numpy(clf(ids, lengths).data).argmax(-1)]
    return [label_names[i] for i in preds] if label_names is not None else preds
