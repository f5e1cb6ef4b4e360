"""A small client for OpenAI-compatible servers (ours, Ollama, vLLM ...), standard library only.

    out = post_json("http://127.0.0.1:8000/v1/chat/completions", {"messages": [...], "max_tokens": 50})
    for chunk in stream_events("http://127.0.0.1:8000/v1/completions", {"prompt": "Hi", "stream": True}):
        print(chunk["choices"][0]["text"], end="")

Errors are ``ClientError``: the HTTP status and the server's ``error.message`` when it answered, or why it could
not be reached.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Iterator

__all__ = ["ClientError", "post_json", "get_json", "stream_events"]


class ClientError(ValueError):
    """The server could not be reached, or answered with an HTTP error (``status``; None when unreachable)."""

    def __init__(self, message: str, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.body = status, body


def _open(url: str, body: dict | None, timeout: float):
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raw = e.read().decode("utf-8", "replace")
        try:
            parsed = json.loads(raw)
            detail = parsed["error"]["message"]
        except (ValueError, KeyError, TypeError):
            parsed, detail = None, raw
        raise ClientError(f"{url} answered HTTP {e.code}: {detail}"[:500], e.code, parsed) from None
    except (urllib.error.URLError, OSError) as e:
        raise ClientError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None


def _json(url: str, body: dict | None, timeout: float) -> dict:
    with _open(url, body, timeout) as resp:
        raw = resp.read().decode("utf-8")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ClientError(f"{url} did not answer JSON: {e}") from None


def post_json(url: str, body: dict, timeout: float = 120.0) -> dict:
    """POST ``body`` as JSON; the JSON answer."""
    return _json(url, body, timeout)


def get_json(url: str, timeout: float = 30.0) -> dict:
    """GET; the JSON answer."""
    return _json(url, None, timeout)


def stream_events(url: str, body: dict, timeout: float = 120.0) -> Iterator[dict]:
    """POST a streaming request; yields each server-sent ``data:`` chunk (parsed) until ``data: [DONE]``.
    A stream that ends without ``[DONE]`` raises ClientError (the answer is incomplete)."""
    with _open(url, {**body, "stream": True}, timeout) as resp:
        for raw in resp:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise ClientError(f"{url} stream error: {chunk['error'].get('message')}", 500, chunk)
            yield chunk
    raise ClientError(f"{url}: the stream ended without data: [DONE]")
