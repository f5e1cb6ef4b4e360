"""The ``tinygrad-llm`` command (also ``python -m tinygrad_llm``).

    tinygrad-llm train                        # a small GPT on the embedded corpus, on the CPU, in a few minutes
    tinygrad-llm generate --checkpoint out --prompt "The list"
    tinygrad-llm eval --checkpoint out --data notes.txt
    tinygrad-llm tokenizer train|encode|decode ...
    tinygrad-llm plot --log out/metrics.jsonl
    tinygrad-llm launch --nproc 2 -- train ...
    tinygrad-llm finetune classify|instruct|dpo|evaluate ...   (tinygrad_llm.finetune)
    tinygrad-llm serve --checkpoint out       # OpenAI-compatible HTTP server + chat page (tinygrad_llm.serve)
    tinygrad-llm chat --checkpoint out        # chat in the terminal
    tinygrad-llm bench ...                        (benchmarks)

Adding a subcommand. Each command is a pair of small functions registered by name::

    from tinygrad_llm.cli import register_command
    def configure(parser): parser.add_argument("--foo")         # an argparse (sub)parser: add flags/subparsers
    def run(args) -> int: ...                                   # 0 on success
    register_command("mycmd", "one-line help", configure, run)

Modules listed in ``PLUGINS`` are imported before the parser is built and register their commands from there, so
no one edits a giant function. Bad inputs raise ``UserError`` (or the usual ValueError / FileNotFoundError / CheckpointError ...):
``main`` prints ONE line on stderr and returns 2; never a traceback (set TINYGRAD_LLM_DEBUG=1 to see one).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable

__all__ = ["main", "register_command", "UserError", "build_parser", "COMMANDS", "PLUGINS"]


class UserError(Exception):
    """A bad input from the user: reported as one line on stderr, exit code 2."""


@dataclass
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    raw: bool = False  # run(Namespace(command=name, rest=[...])) with the unparsed arguments (launch)


COMMANDS: dict[str, Command] = {}

#: modules that add commands with register_command at import (each optional: skipped when not importable)
PLUGINS = ["tinygrad_llm.train.commands", "tinygrad_llm.finetune.cli", "tinygrad_llm.serve.cli",
           "tinygrad_llm.bench"]


def register_command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None],
                     run: Callable[[argparse.Namespace], int], replace: bool = True, raw: bool = False) -> None:
    """Add (or replace) the subcommand ``name``: ``configure(parser)`` adds its flags, ``run(args)`` runs it.

    raw=True: argparse is bypassed and ``args.rest`` holds the arguments as typed (for wrappers such as launch).
    """
    if name in COMMANDS and not replace:
        return
    COMMANDS[name] = Command(name, help, configure, run, raw)


def _load_plugins() -> None:
    for mod in PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and (mod == e.name or mod.startswith(e.name + ".")):
                continue  # an optional plugin that is not installed
            raise


# ---------------------------------------------------------------------------------------------- launch
def _configure_launch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER,
                        help="--nproc N [--master-addr A --master-port P --heartbeat-timeout S] -- COMMAND... "
                             "(e.g. -- tinygrad-llm train, or train ..., or script.py); "
                             "see python -m tinygrad_llm.distributed.launch --help")


def _run_launch(args: argparse.Namespace) -> int:
    """``launch --nproc 2 train ...``, ``launch --nproc 2 -- tinygrad-llm train ...`` and ``launch ... script.py``;
    a name that is none of these is a usage error naming the closest subcommand."""
    try:
        from .distributed.launch import main as launch_main
    except ImportError as e:
        raise UserError(f"'launch' needs tinygrad_llm.distributed ({e})") from None
    return int(launch_main(list(args.rest), commands=[n for n in COMMANDS if n != "launch"]) or 0)


register_command("launch", "start N ranks of a command on this machine (data-parallel training)", _configure_launch,
                 _run_launch, raw=True)


def _configure_trace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="trace", help="folder for the pages")
    parser.add_argument("--graph", choices=("mlp", "attention", "both"), default="both")


def _run_trace(args: argparse.Namespace) -> int:
    from autograd.viz_html import write_examples
    for path in write_examples(args.out, args.graph):
        print(f"wrote {path}: open it in a browser and click 'next' through the backward pass")
    return 0


register_command("trace", "interactive backward-pass pages: a 2-layer MLP and one attention head", _configure_trace,
                 _run_trace)


# ---------------------------------------------------------------------------------------------- parser and main
class _HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to a flag's help when it has a default worth showing and the text does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (d is None or d is False or d is argparse.SUPPRESS or "default" in text.lower() or not action.option_strings
                or isinstance(d, (list, dict))):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """The parser of the command and of every subcommand (nested subparsers inherit the class): defaults shown."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = _Parser(
        prog="tinygrad-llm",
        description="Build, train and fine-tune GPT models from scratch on NumPy/CuPy. "
                    "Start with: tinygrad-llm train")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    order = ["train", "generate", "eval", "tokenizer", "plot", "launch", "finetune", "serve", "chat", "bench"]
    for name in sorted(COMMANDS, key=lambda n: (order.index(n) if n in order else len(order), n)):
        cmd = COMMANDS[name]
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [UserError, ValueError, FileNotFoundError, IsADirectoryError,
                                       NotADirectoryError, PermissionError, UnicodeDecodeError, KeyError]
    from .distributed.comm import DistributedError   # a peer rank died, hangs or timed out: say so, no traceback
    from .train.checkpoint import CheckpointError
    return tuple(errs + [CheckpointError, DistributedError])


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 1 unexpected error, 130 Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        if argv and argv[0] in COMMANDS and COMMANDS[argv[0]].raw and not {"-h", "--help"} & set(argv[1:2]):
            args = argparse.Namespace(command=argv[0], rest=argv[1:], _run=COMMANDS[argv[0]].run)
        else:
            args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    debug = os.environ.get("TINYGRAD_LLM_DEBUG") == "1"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"tinygrad-llm {args.command}: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as e:
        if debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"tinygrad-llm {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not a bad input: still one line, with a way to see the traceback
        if debug:
            raise
        print(f"tinygrad-llm {args.command}: internal error: {type(e).__name__}: {e} "
              "(set TINYGRAD_LLM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
