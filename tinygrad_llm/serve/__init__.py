"""Serving a model: an OpenAI-compatible HTTP server with a chat page, and a terminal chat.

    from tinygrad_llm.serve import ChatService, make_server, load_for_serving
    model, tok = load_for_serving(checkpoint="out/instruct")
    server = make_server(ChatService(model, tok, name="instruct"), "127.0.0.1", 8000)
    server.serve_forever()

Command line: ``tinygrad-llm serve --checkpoint DIR`` and ``tinygrad-llm chat --checkpoint DIR``
(``tinygrad_llm.serve.cli``). The model worker is ``engine.Engine``; request checking and the JSON bodies are in
``protocol``; the page is ``page.PAGE``.
"""
from .chat import chat_loop, load_for_serving
from .engine import Completion, Engine, EngineBusy, Request, SamplingParams, StreamText
from .protocol import APIError
from .server import ChatService, make_server

__all__ = ["ChatService", "make_server", "Engine", "EngineBusy", "Request", "SamplingParams", "Completion",
           "StreamText", "APIError", "chat_loop", "load_for_serving"]
