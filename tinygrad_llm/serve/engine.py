"""The model worker: one thread owns the model and serves every request, a token at a time, in turn.

    engine = Engine(model, tokenizer)                  # starts the worker thread
    req = engine.submit(prompt_ids, SamplingParams(max_tokens=50, stop=["\\n\\n"]), stop_ids=[eos])
    for kind, value in req.events():                   # ("text", delta) ... then ("done", Completion)
        ...
    req.cancel()                                       # a client went away: the worker drops the request
    engine.close()

Requests wait in a bounded queue; the worker keeps up to ``max_active`` of them in flight and advances each by one
token per round (round robin), so concurrent streams all make progress and none waits for another to finish. Each
request has its own KV cache: the prompt is run once (prefill), then each new token alone, exactly as
``tl.generate`` does with ``use_cache=True``, so greedy answers are the same tokens. Generation stops at a stop
token (not part of the text), a stop string (cut before it), ``max_tokens``, or the end of the context window.

Text is streamed as it becomes final: a trailing piece that could still grow into a stop string, or an incomplete
UTF-8 character (decoded as U+FFFD), is held back until the next token decides it.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from autograd import backend, no_grad

from ..model.generate import sample_next

__all__ = ["SamplingParams", "Completion", "Request", "Engine", "EngineBusy", "StreamText"]


@dataclass
class SamplingParams:
    """What to generate: ``max_tokens`` new tokens at most; temperature 0 is greedy; ``seed`` makes sampling
    repeatable; ``stop`` strings end the text (cut before them); ``ignore_eos`` keeps going past stop tokens."""
    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    ignore_eos: bool = False


@dataclass
class Completion:
    """The end of a request: the whole text, the new token ids, why it stopped ("stop" | "length" | "cancelled")."""
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    seconds: float = 0.0

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class EngineBusy(RuntimeError):
    """The request queue is full."""


class StreamText:
    """Incremental detokenisation with stop strings: ``push(ids)`` -> (new final text, stopped)."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0                 # characters of the decoded text already handed out
        self.text = ""

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids)
        start = max(0, self.sent - max((len(s) for s in self.stop), default=0))
        cut = min((i for i in (text.find(s, start) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = text[:cut]
            return self._take(len(self.text)), True
        self.text = text
        return self._take(len(text) - self._holdback(text)), False

    def finish(self) -> str:
        """Everything not yet handed out (at the end, incomplete pieces are final)."""
        return self._take(len(self.text))

    def _holdback(self, text: str) -> int:
        hold = len(text) - len(text.rstrip("\ufffd"))           # an incomplete UTF-8 character at the end
        for s in self.stop:                                      # a suffix that may become a stop string
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return hold

    def _take(self, upto: int) -> str:
        upto = max(upto, self.sent)
        out, self.sent = self.text[self.sent:upto], upto
        return out


class Request:
    """One generation in the engine. Read ``events()``; ``cancel()`` to stop it early."""

    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, stop_ids: Sequence[int], tokenizer):
        self.prompt_ids = [int(t) for t in prompt_ids]
        self.params = params
        self.stop_ids = set() if params.ignore_eos else {int(t) for t in stop_ids}
        self.stream = StreamText(tokenizer, params.stop)
        self.rng = np.random.default_rng(params.seed)
        self.cache = None
        self.started = time.perf_counter()
        self._events: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self.result: Completion | None = None

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def events(self, timeout: float | None = None) -> Iterator[tuple[str, object]]:
        """("text", str) pieces, then one ("done", Completion) or ("error", message)."""
        while True:
            kind, value = self._events.get(timeout=timeout)
            yield kind, value
            if kind in ("done", "error"):
                return

    def wait(self, timeout: float | None = None) -> Completion:
        """Block until the request ends; returns its Completion (raises RuntimeError on an engine error)."""
        for kind, value in self.events(timeout):
            if kind == "error":
                raise RuntimeError(str(value))
        assert self.result is not None
        return self.result

    def _emit(self, kind: str, value: object) -> None:
        self._events.put((kind, value))

    def _finish(self, reason: str) -> None:
        tail = self.stream.finish()
        if tail:
            self._emit("text", tail)
        self.result = Completion(self.stream.text, list(self.stream.ids), reason, len(self.prompt_ids),
                                 time.perf_counter() - self.started)
        self.cache = None                                       # free the KV cache now
        self._emit("done", self.result)


class Engine:
    """The worker thread around ``model`` (see the module docstring). ``max_queue`` waiting requests at most."""

    def __init__(self, model, tokenizer, max_active: int = 32, max_queue: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.context_length = int(model.config.context_length)
        self.max_active = int(max_active)
        self._inbox: queue.Queue = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        # counters, written by the worker thread only
        self.stats = {"requests": 0, "finished": 0, "cancelled": 0, "errors": 0, "tokens": 0}
        model.eval()
        self._thread = threading.Thread(target=self._loop, name="tinygrad-llm-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, stop_ids: Sequence[int] = ()) -> Request:
        """Queue a generation. The prompt must be 1..context_length-1 tokens (checked by the caller's validation);
        ``max_tokens`` is reduced to what the context window leaves."""
        if not prompt_ids:
            raise ValueError("the prompt is empty (0 tokens)")
        if len(prompt_ids) >= self.context_length:
            raise ValueError(f"the prompt is {len(prompt_ids)} tokens; the model's context is {self.context_length}")
        if self._stop.is_set():
            raise RuntimeError("the engine is closed")
        req = Request(prompt_ids, params, stop_ids, self.tokenizer)
        try:
            self._inbox.put_nowait(req)
        except queue.Full:
            raise EngineBusy(f"{self._inbox.maxsize} requests are already waiting; retry later") from None
        return req

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------ the worker
    def _loop(self) -> None:
        active: list[Request] = []
        while not self._stop.is_set():
            while len(active) < self.max_active:
                try:
                    active.append(self._inbox.get(timeout=0.1) if not active else self._inbox.get_nowait())
                    self.stats["requests"] += 1
                except queue.Empty:
                    break
            if not active:
                continue
            for req in list(active):
                try:
                    done = self._advance(req)
                except Exception as e:  # a failure of one request must not stop the server
                    self.stats["errors"] += 1
                    req.cache = None
                    req._emit("error", f"{type(e).__name__}: {e}")
                    done = True
                if done:
                    active.remove(req)
        while True:                                  # closed: nobody may wait forever on a request
            try:
                active.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for req in active:
            req.cancel()
            req._finish("cancelled")

    def _advance(self, req: Request) -> bool:
        """One token for ``req``; True when it has finished."""
        if req.cancelled:
            self.stats["cancelled"] += 1
            req._finish("cancelled")
            return True
        limit = min(req.params.max_tokens, self.context_length - len(req.prompt_ids))
        if len(req.stream.ids) >= limit:
            self.stats["finished"] += 1
            req._finish("length")
            return True
        model = self.model
        with no_grad():
            if req.cache is None:
                req.cache = model.new_cache(1, len(req.prompt_ids) + limit)
                new = np.asarray([req.prompt_ids], dtype=np.int64)
            else:
                new = np.asarray([req.stream.ids[-1:]], dtype=np.int64)
            logits = model(backend.to_device(new, model.device), cache=req.cache, last_only=True)
            last = backend.to_numpy(logits.data[:, -1, :])
        p = req.params
        token = int(sample_next(last, p.temperature, p.top_k, p.top_p, req.rng)[0])
        self.stats["tokens"] += 1
        if token in req.stop_ids:
            self.stats["finished"] += 1
            req._finish("stop")
            return True
        delta, stopped = req.stream.push(token)
        if delta:
            req._emit("text", delta)
        if stopped:
            self.stats["finished"] += 1
            req._finish("stop")
            return True
        return False
