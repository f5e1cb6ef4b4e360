"""The OpenAI-compatible request and response bodies: checking a request's fields, building the JSON answers.

A bad request raises ``APIError(status, message, param)``; the server answers it as
``{"error": {"message", "type", "param", "code"}}`` with that HTTP status. Accepted fields (others are ignored, as
OpenAI-compatible servers do): ``model``, ``messages`` (chat) or ``prompt`` (completions), ``max_tokens`` (or
``max_completion_tokens``), ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``, ``stream``, ``n`` (1 only),
``ignore_eos``.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

from .engine import Completion, SamplingParams

__all__ = ["APIError", "parse_body", "sampling_params", "chat_messages", "completion_prompt", "error_body",
           "chat_response", "chat_chunk", "completion_response", "completion_chunk", "models_body", "new_id"]

MAX_STOP = 4


class APIError(Exception):
    """A request the server refuses: HTTP ``status``, a message for the client, the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code


def error_body(e: APIError) -> dict:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


def parse_body(raw: bytes) -> dict:
    """The request's JSON object, or a 400 naming what is wrong with it."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not UTF-8: {e}") from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _number(body: dict, name: str, default, lo: float, hi: float, lo_open: bool = False):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise APIError(400, f"'{name}' must be a number, got {json.dumps(v)[:50]}", name)
    if v < lo or v > hi or (lo_open and v == lo):
        raise APIError(400, f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", name)
    return float(v)


def _integer(body: dict, name: str, default, lo: int | None = None):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise APIError(400, f"'{name}' must be an integer, got {json.dumps(v)[:50]}", name)
    if lo is not None and v < lo:
        raise APIError(400, f"'{name}' must be >= {lo}, got {v}", name)
    return v


def _bool(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise APIError(400, f"'{name}' must be true or false, got {json.dumps(v)[:50]}", name)
    return v


def sampling_params(body: dict, default_max_tokens: int) -> tuple[SamplingParams, bool]:
    """(SamplingParams, stream) from the request's fields."""
    name = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = _integer(body, name, default_max_tokens, lo=0)
    if _integer(body, "n", 1) != 1:
        raise APIError(400, "'n' must be 1: this server returns one choice per request", "n")
    top_k = _integer(body, "top_k", None)
    if top_k is not None and top_k < 1:
        top_k = None                                     # 0 / -1 mean "no limit" in other servers
    top_p = _number(body, "top_p", None, 0.0, 1.0, lo_open=True)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP:
        stops = list(stop)
    else:
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOP} strings", "stop")
    params = SamplingParams(max_tokens=max_tokens, temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
                            top_k=top_k, top_p=top_p, seed=_integer(body, "seed", None), stop=stops,
                            ignore_eos=_bool(body, "ignore_eos"))
    return params, _bool(body, "stream")


def _content_text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):                        # OpenAI content parts: [{"type": "text", "text": ...}]
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise APIError(400, f"'{where}[{j}]' must be a text part {{\"type\": \"text\", \"text\": ...}} "
                                    "(this model reads text only)", f"{where}[{j}]")
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(400, f"'{where}' must be a string, got {type(content).__name__}", where)


def chat_messages(body: dict) -> list[dict]:
    """The conversation as [{"role", "content": str}], checked."""
    msgs = body.get("messages")
    if msgs is None:
        raise APIError(400, "'messages' is required: a list of {\"role\", \"content\"} objects", "messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"'{where}' must be an object with 'role' and 'content'", where)
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"'{where}.role' must be 'system', 'user' or 'assistant', got "
                                f"{json.dumps(role)[:40]}", f"{where}.role")
        out.append({"role": role, "content": _content_text(m.get("content"), f"{where}.content")})
    return out


def completion_prompt(body: dict) -> str:
    """The completion's prompt text (a string, or a list holding one string)."""
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if not isinstance(p, str):
        raise APIError(400, "'prompt' is required and must be a string", "prompt")
    return p


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _usage(c: Completion) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def chat_response(rid: str, model: str, c: Completion) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason}], "usage": _usage(c)}


def chat_chunk(rid: str, model: str, delta: dict, finish_reason: str | None = None,
               completion: Completion | None = None) -> dict:
    out = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    if completion is not None:
        out["usage"] = _usage(completion)
    return out


def completion_response(rid: str, model: str, c: Completion) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}],
            "usage": _usage(c)}


def completion_chunk(rid: str, model: str, text: str, finish_reason: str | None = None,
                     completion: Completion | None = None) -> dict:
    out = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if completion is not None:
        out["usage"] = _usage(completion)
    return out


def models_body(name: str, created: int, context_length: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                        "owned_by": "tinygrad-llm", "context_length": context_length}]}
