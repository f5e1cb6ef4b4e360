"""The terminal chat (``tinygrad-llm chat``) and the model loading that it shares with the server.

    model, tok = load_for_serving(checkpoint="out/instruct")
    chat_loop(ChatService(model, tok), iter(sys.stdin.readline, ""), sys.stdout.write)

Each line typed is a user message; the answer streams as the model writes it. ``/reset`` starts a new
conversation, ``/exit`` (or end of input) leaves. When the conversation outgrows the context window, the oldest
turns are dropped (a system message stays).
"""
from __future__ import annotations

import sys
from typing import Callable, Iterable

__all__ = ["load_for_serving", "chat_loop"]


def load_for_serving(checkpoint: str | None = None, init_from: str | None = None, device: str = "cpu",
                     log: Callable[[str], None] | None = None):
    """(model, tokenizer) from a tinygrad-llm checkpoint (training or fine-tuning) or a Hugging Face folder,
    in eval mode on ``device``."""
    from ..finetune.common import load_base
    log = log or (lambda s: print(s, file=sys.stderr))
    model, tok = load_base(init_from=init_from, checkpoint=checkpoint, log=log)
    model.to(device)
    model.eval()
    return model, tok


def chat_loop(service, lines: Iterable[str], write: Callable[[str], object], system: str | None = None,
              options: dict | None = None, prompt: str = "you> ", flush: Callable[[], object] = lambda: None) -> int:
    """Run a conversation: each of ``lines`` is a user message; answers are written piece by piece with ``write``.
    ``options`` are request fields (max_tokens, temperature, top_k, top_p, seed, stop). Returns the turn count."""
    from .protocol import APIError
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    turns = 0
    write(prompt)
    flush()
    for line in lines:
        text = line.rstrip("\n")
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            history = list(base)
            write("(new conversation)\n" + prompt)
            flush()
            continue
        if not text.strip():
            write(prompt)
            flush()
            continue
        history.append({"role": "user", "content": text})
        try:
            ids = _fit(service, history, len(base))
            req, _ = service.start(ids, dict(options or {}), "messages", service.stop_ids)
        except (APIError, ValueError) as e:
            history.pop()
            write(f"error: {getattr(e, 'message', e)}\n{prompt}")
            flush()
            continue
        answer = []
        for kind, value in req.events():
            if kind == "text":
                answer.append(value)
                write(value)
                flush()
            elif kind == "error":
                write(f"\nerror: {value}")
        history.append({"role": "assistant", "content": "".join(answer)})
        turns += 1
        write("\n" + prompt)
        flush()
    write("\n")
    return turns


def _fit(service, history: list[dict], keep: int) -> list[int]:
    """The conversation's ids, dropping the oldest turns (after the first ``keep`` messages) until a reply fits."""
    while True:
        ids = service.chat_ids(history)
        if len(ids) < service.context_length - 1 or len(history) <= keep + 1:
            return ids
        del history[keep:keep + 2 if len(history) > keep + 2 else keep + 1]
