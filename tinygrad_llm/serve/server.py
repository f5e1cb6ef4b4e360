"""The HTTP server: OpenAI-compatible endpoints over the standard library's ThreadingHTTPServer.

    service = ChatService(model, tokenizer, name="my-model")       # the model worker + chat template
    server = make_server(service, host="127.0.0.1", port=8000)     # port 0: any free port (server.server_port)
    server.serve_forever()

Endpoints:
    GET  /                      the chat page (one self-contained HTML file, no CDN)
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok", ...} with the engine's counters
    POST /v1/chat/completions   messages -> the assistant's answer (the model's chat template)
    POST /v1/completions        prompt text -> its continuation
With ``"stream": true`` the answer comes as server-sent events, ``data: {chunk}`` lines and a final
``data: [DONE]``, in a chunked HTTP/1.1 response. Each connection has its own thread; all of them hand their
requests to the one model worker (``engine.Engine``). A client that disconnects mid-stream has its generation
cancelled at the next token. Any request problem is a 4xx JSON error (``protocol.APIError``), never a crash.

Text from clients is encoded as plain text: message contents and prompts never produce special tokens (the
tokenizer's ``encode`` and the chat template guarantee it), so "<|endoftext|>" typed by a user is just characters.
"""
from __future__ import annotations

import html
import json
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .engine import EngineBusy, Engine
from .page import PAGE
from . import protocol as P

__all__ = ["ChatService", "Server", "make_server", "MAX_BODY"]

MAX_BODY = 1 << 20          # bytes of a request body


class ChatService:
    """What the handlers need: the engine, the tokenizer, the chat template, the served model's name.

    ``template``: a template name ("llama3", "chatml", "gemma", "alpaca") or a model family; default: the one the
    tokenizer's special tokens belong to.
    """

    def __init__(self, model, tokenizer, name: str = "tinygrad-llm", template=None, max_tokens: int = 512,
                 max_active: int = 32, max_queue: int = 256):
        from ..tokenizer.chat import chat_template_for
        self.model, self.tokenizer, self.name = model, tokenizer, name
        # the tokenizer's special tokens tell its template (Llama 3, ChatML, Gemma; none: Alpaca, the book's)
        self.template = chat_template_for(template if template is not None else tokenizer, tokenizer)
        self.stop_ids = self.template.stop_ids_for(tokenizer)
        self.max_tokens = int(max_tokens)
        self.context_length = int(model.config.context_length)
        self.engine = Engine(model, tokenizer, max_active=max_active, max_queue=max_queue)
        self.created = int(time.time())

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return self.template.encode(self.tokenizer, messages, add_generation_prompt=True)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))        # plain text: never special tokens

    def start(self, ids: list[int], body: dict, param: str, stop_ids):
        """Check the prompt against the context and queue it; returns (request, stream flag)."""
        if not ids:
            raise P.APIError(400, "the prompt is empty: give some text", param)
        room = self.context_length - len(ids)
        if room <= 0:
            raise P.APIError(400, f"the prompt is {len(ids)} tokens long but the model's context is "
                                  f"{self.context_length} tokens; shorten it", param, code="context_length_exceeded")
        params, stream = P.sampling_params(body, min(self.max_tokens, room))
        try:
            return self.engine.submit(ids, params, stop_ids), stream
        except EngineBusy as e:
            raise P.APIError(429, f"the server is busy: {e}", None, type="server_busy") from None

    def close(self) -> None:
        self.engine.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tinygrad-llm"
    timeout = 120                            # seconds a socket read or write may wait (a silent client goes)
    service: ChatService                     # set on the subclass made by make_server
    quiet = True

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        if not self.quiet:
            super().log_message(format, *args)

    # ------------------------------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _error(self, e: P.APIError) -> None:
        self._json(e.status, P.error_body(e))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own refusals (a malformed request line, an unknown method) as JSON errors too."""
        self.close_connection = True
        if code == 501:                      # an HTTP method we do not implement
            code, message = 405, f"method {self.command!r} is not allowed here; use GET or POST"
        e = P.APIError(code, message or explain or HTTPStatus(code).phrase, type="invalid_request_error")
        self.send_response(code)
        body = json.dumps(P.error_body(e)).encode("utf-8")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise P.APIError(411, "the request needs a Content-Length header (a JSON body)")
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise P.APIError(400, f"bad Content-Length {length!r}") from None
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            raise P.APIError(413, f"the request body is {n} bytes; at most {MAX_BODY} are accepted")
        return P.parse_body(self.rfile.read(n))

    def _check_model(self, body: dict) -> None:
        m = body.get("model")
        if m is None:
            return
        if not isinstance(m, str):
            raise P.APIError(400, f"'model' must be a string, got {json.dumps(m)[:40]}", "model")
        if m != self.service.name:
            raise P.APIError(404, f"the model {m!r} does not exist; this server has {self.service.name!r} "
                                  "(see /v1/models)", "model", code="model_not_found")

    # ------------------------------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        path = self.path.split("?", 1)[0]
        s = self.service
        if path in ("/", "/index.html"):
            page = PAGE.replace("__MODEL__", html.escape(s.name))
            self._send(200, page.encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/v1/models":
            self._json(200, P.models_body(s.name, s.created, s.context_length))
        elif path == "/health":
            self._json(200, {"status": "ok", "model": s.name, **s.engine.stats})
        else:
            self._error(P.APIError(404, f"no such endpoint: GET {path}", type="not_found"))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        try:
            if path not in ("/v1/chat/completions", "/v1/completions"):
                self.close_connection = True
                raise P.APIError(404, f"no such endpoint: POST {path} (try /v1/chat/completions or "
                                      "/v1/completions)", type="not_found")
            body = self._body()
            self._check_model(body)
            s = self.service
            if path == "/v1/chat/completions":
                messages = P.chat_messages(body)
                try:
                    ids = s.chat_ids(messages)
                except ValueError as e:               # e.g. a character a char-level vocabulary lacks
                    raise P.APIError(400, f"cannot encode the messages: {e}", "messages") from None
                req, stream = s.start(ids, body, "messages", s.stop_ids)
            else:
                prompt = P.completion_prompt(body)
                try:
                    ids = s.encode_text(prompt)
                except ValueError as e:
                    raise P.APIError(400, f"cannot encode the prompt: {e}", "prompt") from None
                eos = getattr(s.tokenizer, "eos_id", None)
                req, stream = s.start(ids, body, "prompt", [eos] if eos is not None else [])
        except P.APIError as e:
            self._error(e)
            return
        except Exception as e:  # a bug, not a bad request: still a JSON answer, and the server goes on
            self._error(P.APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))
            return
        chat = path == "/v1/chat/completions"
        try:
            if stream:
                self._stream(req, chat)
            else:
                self._complete(req, chat)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            req.cancel()                                 # the client went away: stop generating for it
            self.close_connection = True

    def _complete(self, req, chat: bool) -> None:
        s = self.service
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        try:
            c = req.wait()
        except RuntimeError as e:
            self._error(P.APIError(500, f"generation failed: {e}", type="server_error"))
            return
        self._json(200, P.chat_response(rid, s.name, c) if chat else P.completion_response(rid, s.name, c))

    def _stream(self, req, chat: bool) -> None:
        s = self.service
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if chat:
                self._event(P.chat_chunk(rid, s.name, {"role": "assistant", "content": ""}))
            for kind, value in req.events():
                if kind == "text":
                    self._event(P.chat_chunk(rid, s.name, {"content": value}) if chat
                                else P.completion_chunk(rid, s.name, value))
                elif kind == "done":
                    self._event(P.chat_chunk(rid, s.name, {}, value.finish_reason, value) if chat
                                else P.completion_chunk(rid, s.name, "", value.finish_reason, value))
                else:
                    self._event(P.error_body(P.APIError(500, f"generation failed: {value}", type="server_error")))
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
        finally:
            req.cancel()                                 # no-op when finished; else the client went away

    def _event(self, obj: dict) -> None:
        self._chunk(b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


class Server(ThreadingHTTPServer):
    """One thread per connection; a client that hangs up is not an error worth a traceback."""
    daemon_threads = True
    request_queue_size = 128                 # the listen backlog: many clients may connect at once (default 5)

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def make_server(service: ChatService, host: str = "127.0.0.1", port: int = 8000, quiet: bool = True) -> Server:
    """A threading HTTP server answering with ``service`` (not started: call ``serve_forever``)."""
    handler = type("BoundHandler", (Handler,), {"service": service, "quiet": quiet})
    return Server((host, port), handler)
