"""Instruction fine-tuning (the book's chapter 7): Alpaca-format prompts, the padding/masking collate, responses.

    data = load_instruction_data("instruction-data.json")     # [{"instruction", "input", "output"}, ...]
    train, val, test = split_instruction_data(data)             # 85% / 5% / 10%, in file order (as the book)
    ds = InstructionDataset(train, tokenizer)                   # each entry: prompt + response token ids
    x, y = collate([ds[i] for i in range(8)], pad_id=50256, allowed_max_length=1024)
    loss = model.loss(x, y)                                     # positions with target -100 are ignored
    generate_responses(model, tokenizer, test, "responses.json")  # each entry + "model_response"

Prompt format (Alpaca, exactly as the book's ``format_input``; the "### Input" section only when input is
non-empty)::

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:
    {input}

    ### Response:
    {output}

The prompt part (through "### Response:\\n") and the output are tokenized separately and concatenated, so the
number of prompt tokens is exact (for ``mask_prompt``). No EOS is appended to the text: ``collate`` pads with
``pad_id`` (GPT-2's <|endoftext|>, 50256) and keeps the first pad as the target after the last token, so the model
learns to end its responses with it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..tokenizer.chat import ALPACA_INSTRUCTION, ALPACA_PREAMBLE, ALPACA_RESPONSE

__all__ = ["format_input", "format_example", "RESPONSE_HEADER", "load_records", "load_instruction_data",
           "split_instruction_data",
           "InstructionDataset", "collate", "generate_response", "generate_responses"]

# the same strings as the chat template "alpaca" (a served instruction-tuned model sees exactly this format)
PREAMBLE, RESPONSE_HEADER = ALPACA_PREAMBLE, ALPACA_RESPONSE


def format_input(entry: dict) -> str:
    """The instruction (and input, when non-empty) in Alpaca format, without the response header (the book's)."""
    text = f"{PREAMBLE}{ALPACA_INSTRUCTION}{entry['instruction']}"
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text


def format_example(entry: dict) -> tuple[str, str]:
    """(prompt, response): ``format_input(entry) + RESPONSE_HEADER`` and ``entry['output']``."""
    return format_input(entry) + RESPONSE_HEADER, str(entry.get("output", ""))


def load_records(path: str | os.PathLike, fields: Sequence[str] = ("instruction", "output")) -> list[dict]:
    """A JSON list (or JSON Lines) of records that each have the string ``fields``; "input" defaults to ""."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: neither a JSON list nor JSON Lines: {e}") from None
    wanted = ", ".join(fields)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{p}: expected a non-empty JSON list of records with {wanted} (and input)")
    for i, r in enumerate(data):
        missing = [k for k in fields if not isinstance(r, dict) or not isinstance(r.get(k), str)]
        if missing:
            raise ValueError(f"{p}: record {i} needs string fields {missing} ('input' may be empty), "
                             f"got {sorted(r) if isinstance(r, dict) else r}")
        r.setdefault("input", "")
    return data


def load_instruction_data(path: str | os.PathLike) -> list[dict]:
    """A JSON list of {"instruction", "input", "output"} records (JSON Lines also accepted); checks each record."""
    return load_records(path, ("instruction", "output"))


def split_instruction_data(data: list, train: float = 0.85, test: float = 0.10) -> tuple[list, list, list]:
    """(train, val, test) in file order: the first ``train`` fraction, then ``test``, the rest validation
    (the book: 85% / 10% / 5%). Each split gets at least one record when there are three or more."""
    n = len(data)
    n_train, n_test = int(n * train), int(n * test)
    if n >= 3:
        n_train, n_test = min(max(n_train, 1), n - 2), max(n_test, 1)
    tr, te = data[:n_train], data[n_train:n_train + n_test]
    va = data[n_train + n_test:]
    return tr, va, te


class InstructionDataset:
    """Token ids of each entry: ``ds[i]`` -> {"input_ids": list[int], "prompt_length": int}.

    ``max_length`` (e.g. the model's context length) truncates long examples (prompt first, then response).
    """

    def __init__(self, data: Sequence[dict], tokenizer, max_length: int | None = None):
        self.items = []
        for entry in data:
            prompt, response = format_example(entry)
            p_ids, r_ids = list(tokenizer.encode(prompt)), list(tokenizer.encode(response))
            ids = (p_ids + r_ids)[:max_length] if max_length else p_ids + r_ids
            self.items.append({"input_ids": ids, "prompt_length": min(len(p_ids), len(ids))})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate(batch: Sequence, pad_id: int = 50256, ignore_index: int = -100, allowed_max_length: int | None = None,
            mask_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets (B, L) int64 for a batch of token sequences (the book's ``custom_collate_fn``).

    batch: lists of token ids, or dicts {"input_ids", "prompt_length"} (``InstructionDataset`` items; the prompt
        length is needed by ``mask_prompt``).
    Each sequence gets one ``pad_id`` appended, then all are padded with ``pad_id`` to the longest + 1; inputs are
    the first L = longest tokens and targets the same shifted left by one. In the targets the first pad of each row
    (the end-of-text to predict after the last token) stays, the pads after it become ``ignore_index``; pads are
    found by position, so a real <|endoftext|> inside a text stays a target. ``mask_prompt`` also sets the targets
    of the prompt's tokens (all predictions made before the first response token) to ``ignore_index``.
    ``allowed_max_length`` crops inputs and targets to that many positions.

    Example: [[1, 2, 3], [4]] with pad 0 -> inputs [[1, 2, 3], [4, 0, 0]], targets [[2, 3, 0], [0, -100, -100]].
    """
    if len(batch) == 0:
        raise ValueError("collate: empty batch")
    seqs, prompt_lens = [], []
    for item in batch:
        if isinstance(item, dict):
            seqs.append(list(item["input_ids"]))
            prompt_lens.append(item.get("prompt_length"))
        else:
            seqs.append(list(item))
            prompt_lens.append(None)
    if mask_prompt and any(p is None for p in prompt_lens):
        raise ValueError("collate: mask_prompt needs items with a 'prompt_length' (use InstructionDataset items)")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("collate: a sequence is empty")
    longest = max(len(s) for s in seqs)
    padded = np.full((len(seqs), longest + 1), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
    inputs = padded[:, :-1].copy()
    targets = padded[:, 1:].copy()
    for i, s in enumerate(seqs):
        targets[i, len(s):] = ignore_index        # target len(s)-1 is the kept end-of-text pad
        if mask_prompt:
            targets[i, :max(prompt_lens[i] - 1, 0)] = ignore_index
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs, targets


def generate_response(model, tokenizer, entry: dict, max_new_tokens: int = 256, eos_id: int | None = None,
                      temperature: float = 0.0, top_k: int | None = None, rng=None) -> str:
    """The model's response to one entry: greedy (default) continuation of the prompt, cut at ``eos_id``, with
    the response header removed and whitespace stripped (as the book)."""
    from ..model.generate import generate
    prompt = format_input(entry) + RESPONSE_HEADER
    ids = list(tokenizer.encode(prompt))
    ctx = model.config.context_length
    room = max(ctx - 1, 1)
    ids = ids[-room:]
    n_new = max(0, min(max_new_tokens, ctx - len(ids)))
    out = generate(model, np.asarray([ids], dtype=np.int64), n_new, temperature=temperature, top_k=top_k,
                   eos_id=eos_id, rng=rng)
    new = [int(t) for t in np.asarray(out)[0, len(ids):]]
    if eos_id is not None and eos_id in new:
        new = new[:new.index(eos_id)]
    return tokenizer.decode(new).replace("### Response:", "").strip()


def generate_responses(model, tokenizer, entries: Sequence[dict], out_path: str | os.PathLike | None = None,
                       max_new_tokens: int = 256, eos_id: int | None = None, progress: bool = False,
                       **kwargs: Any) -> list[dict]:
    """Each entry with a ``"model_response"`` key added (copies); written as a JSON list to ``out_path`` if given."""
    it = entries
    if progress:
        from tqdm import tqdm
        it = tqdm(entries, desc="responses", leave=False)
    out = []
    for e in it:
        r = dict(e)
        r["model_response"] = generate_response(model, tokenizer, e, max_new_tokens, eos_id, **kwargs)
        out.append(r)
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
