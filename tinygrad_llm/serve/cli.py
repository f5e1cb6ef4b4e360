"""``tinygrad-llm serve`` and ``tinygrad-llm chat``: registered with ``tinygrad_llm.cli.register_command`` at import.

    tinygrad-llm serve --checkpoint out/instruct [--host 127.0.0.1 --port 8000]
    tinygrad-llm chat --checkpoint out/instruct --temperature 0.7 --top-p 0.9
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["configure_serve", "run_serve", "configure_chat", "run_chat"]


def _model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model (one of)")
    src.add_argument("--checkpoint", help="a checkpoint folder (or output folder) of tinygrad-llm train/finetune")
    src.add_argument("--init-from", help="a Hugging Face folder (GPT-2, Llama 3, Qwen3, Gemma 3)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--max-tokens", type=int, default=512, help="default answer length limit (default 512)")
    p.add_argument("--chat-template", help="llama3 | chatml | gemma | alpaca (default: the tokenizer's)")


def configure_serve(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                                                       "0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument("--model-name", help="the model id clients use (default: the checkpoint folder's name)")
    p.add_argument("--max-active", type=int, default=32, help="requests generated in turn at the same time")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request")


def configure_chat(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--system", help="a system message for the conversation")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)


def _load(args: argparse.Namespace):
    from ..cli import UserError
    from .chat import load_for_serving
    if bool(args.checkpoint) == bool(args.init_from):
        raise UserError("give the model: --checkpoint DIR (tinygrad-llm checkpoint) or --init-from DIR "
                        "(Hugging Face folder)")
    if args.max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    return load_for_serving(args.checkpoint, args.init_from, args.device)


def _name(args: argparse.Namespace) -> str:
    p = Path(args.checkpoint or args.init_from).resolve()
    if p.name.startswith("step_"):
        p = p.parent
    return p.name or "tinygrad-llm"


def run_serve(args: argparse.Namespace) -> int:
    from .server import ChatService, make_server
    from ..cli import UserError
    model, tok = _load(args)
    service = ChatService(model, tok, name=args.model_name or _name(args), template=args.chat_template,
                          max_tokens=args.max_tokens, max_active=args.max_active)
    try:
        server = make_server(service, args.host, args.port, quiet=not args.verbose)
    except OSError as e:
        service.close()
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    print(f"serving {service.name!r} ({service.template.name} chat template) on http://{host}:{port}/ "
          f"(OpenAI API under /v1); Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.close()
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from .chat import chat_loop
    from .server import ChatService
    model, tok = _load(args)
    service = ChatService(model, tok, name=_name(args), template=args.chat_template, max_tokens=args.max_tokens)
    opts = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    print(f"chatting with {service.name!r} ({service.template.name} template); /reset for a new conversation, "
          "/exit to leave", file=sys.stderr)
    try:
        chat_loop(service, iter(sys.stdin.readline, ""), sys.stdout.write, system=args.system,
                  options={k: v for k, v in opts.items() if v is not None}, flush=sys.stdout.flush)
    except KeyboardInterrupt:
        print()
    finally:
        service.close()
    return 0


def _register() -> None:
    from ..cli import register_command
    register_command("serve", "serve a model over HTTP: OpenAI-compatible API and a chat page", configure_serve,
                     run_serve)
    register_command("chat", "chat with a model in the terminal", configure_chat, run_chat)


_register()
