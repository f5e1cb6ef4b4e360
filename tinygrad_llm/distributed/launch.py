"""Start N ranks of a script on this machine: ``python -m tinygrad_llm.distributed.launch --nproc N script.py args``.

Each rank is ``python script.py args`` (or ``python -m module args``) with these environment variables:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` (rank 0's TCP
rendezvous: the TCP backend's hub, and how NCCL's unique id is shared) and ``TINYGRAD_LLM_LAUNCHER=1``.
The script calls ``init_distributed()`` and gets the right communicator.

With several ranks, ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` default to
cores / N (unless set), so CPU ranks do not oversubscribe the machine; under ``mpiexec`` set them yourself.

The command: ``script.py args``, ``-m module args``, ``tinygrad-llm SUBCOMMAND args`` (run as ``-m tinygrad_llm``
with this interpreter), or any other program on PATH (run as it is).

Every line a rank prints is forwarded with a ``[rank i]`` prefix. When a rank fails (non-zero exit), the launcher
terminates the others (SIGTERM, then SIGKILL after a grace period) and exits with that rank's code. The first
Ctrl-C, SIGTERM or SIGHUP is passed on to every rank (the trainer then saves a checkpoint and exits) and the
launcher waits for them; a second one terminates them all.

Heartbeats. Each rank that calls ``start_heartbeat()`` (the Trainer does with several ranks) touches a file every
second from a background thread. A rank whose heartbeat stops for ``heartbeat_timeout`` seconds (stopped,
swapping, stuck in native code) is reported at once, naming its pid and state, instead of the other ranks
waiting silently for their collective's timeout.
"""
from __future__ import annotations

import argparse
import difflib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Collection

# the rank side of the launcher lives in runtime.py; re-exported here for ``from ...launch import init_distributed``
from .runtime import get_rank, get_world_size, init_distributed  # noqa: F401


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``addr`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


HEARTBEAT_ENV = "TINYGRAD_LLM_HEARTBEAT_DIR"
_heartbeat: threading.Thread | None = None


def start_heartbeat(interval: float = 1.0) -> bool:
    """Rank side: touch ``$TINYGRAD_LLM_HEARTBEAT_DIR/rank_<RANK>`` every ``interval`` seconds from a daemon
    thread (once per process). Returns False when not started by the launcher."""
    global _heartbeat
    folder = os.environ.get(HEARTBEAT_ENV)
    if not folder or "RANK" not in os.environ:
        return False
    if _heartbeat is not None:
        return True
    path = Path(folder) / f"rank_{os.environ['RANK']}"

    def beat() -> None:
        while True:
            time.sleep(interval)
            try:
                path.write_text(f"{time.time()}\n")
            except OSError:  # the launcher is gone and removed the folder
                return
    path.write_text(f"{time.time()}\n")   # the first beat before returning: the launcher knows this rank beats
    _heartbeat = threading.Thread(target=beat, name="tinygrad-llm-heartbeat", daemon=True)
    _heartbeat.start()
    return True


def _process_state(pid: int) -> str:
    """'stopped', 'running', 'sleeping' ... from /proc (Linux), else ''."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
    return {"R": "running", "S": "sleeping", "D": "in uninterruptible I/O", "T": "stopped", "t": "stopped (traced)",
            "Z": "a zombie"}.get(state, state)


def _check_heartbeats(folder: Path, procs: list[subprocess.Popen], timeout: float, reported: set, out,
                      started: float) -> None:
    """Report (once) each running rank whose heartbeat is older than ``timeout`` s; a rank that never beat counts
    from the launch once another rank beats (they all run the same program)."""
    now = time.time()
    files = [folder / f"rank_{rank}" for rank in range(len(procs))]
    anyone = any(f.is_file() for f in files)
    for rank, (p, f) in enumerate(zip(procs, files)):
        if p.poll() is not None or not anyone:
            continue  # exited, or this program sends no heartbeats
        try:
            age = now - f.stat().st_mtime
        except FileNotFoundError:
            age = now - started
        if age < timeout:
            reported.discard(rank)
        elif rank not in reported:
            reported.add(rank)
            state = _process_state(p.pid)
            out.write(f"[launch] rank {rank} (pid {p.pid}{', ' + state if state else ''}) has sent no heartbeat "
                      f"for {age:.0f} s: it is frozen; the other ranks wait for it in their next collective "
                      "(Ctrl-C stops them all)\n")
            out.flush()


def rank_command(command: list[str], commands: Collection[str] = ()) -> list[str]:
    """The argv of one rank for ``command`` (see the module doc); ValueError for a script or program that does not
    exist. ``commands``: the ``tinygrad-llm`` subcommands (a bare one means ``tinygrad-llm NAME``; they are also
    what a misspelling is compared with)."""
    if not command:
        raise ValueError("launch needs a command: launch --nproc 2 train.py [args] (or -m module, or tinygrad-llm ...)")
    head = command[0]
    if commands and head in commands:
        command, head = ["tinygrad-llm", *command], "tinygrad-llm"
    if Path(head).name == "tinygrad-llm" and not head.endswith(".py"):
        sub = command[1] if len(command) > 1 else None
        if commands and sub is not None and not sub.startswith("-") and sub not in commands:
            raise ValueError(f"unknown tinygrad-llm command {sub!r}{_did_you_mean(sub, commands)}")
        return [sys.executable, "-m", "tinygrad_llm", *command[1:]]
    if head.startswith("-") or Path(head).is_file():
        return [sys.executable, *command]
    if head.endswith(".py"):
        raise ValueError(f"no script {head!r}")
    program = shutil.which(head)
    if program is None:
        hint = _did_you_mean(head, commands) if commands else ""
        raise ValueError(f"{head!r} is not a tinygrad-llm command, a script or a program on PATH{hint}")
    return [program, *command[1:]]


def _did_you_mean(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (commands: {', '.join(sorted(choices))})"


def _forward(stream, prefix: str, out, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        with lock:
            out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            out.flush()
    stream.close()


def launch(nproc: int, command: list[str], master_addr: str = "127.0.0.1", master_port: int | None = None,
           env: dict | None = None, grace: float = 5.0, prefix_output: bool = True,
           heartbeat_timeout: float = 60.0, commands: Collection[str] = ()) -> int:
    """Run ``command`` as ``nproc`` ranks; return 0 when all succeed, else the first failure's code.

    ``command``: ``["script.py", args...]``, ``["-m", "module", args...]``, ``["tinygrad-llm", sub, args...]``
    or a program on PATH (``rank_command``). heartbeat_timeout: seconds without a heartbeat before a rank is
    reported frozen (0: never).
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    argv = rank_command(list(command), commands)
    beats = Path(tempfile.mkdtemp(prefix="tinygrad-llm-heartbeat-"))
    port = master_port or free_port(master_addr)
    base = dict(os.environ if env is None else env)
    if nproc > 1:
        # N ranks each running a BLAS pool as wide as the machine oversubscribe the cores; OpenBLAS's spinning
        # threads then make CPU ranks ~30x slower. Give each rank its share unless the user chose (as torchrun).
        share = str(max(1, (os.cpu_count() or 1) // nproc))
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            base.setdefault(var, share)
    base.update(WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR=master_addr,
                MASTER_PORT=str(port), TINYGRAD_LLM_LAUNCHER="1", PYTHONUNBUFFERED="1")
    base[HEARTBEAT_ENV] = str(beats)
    started = time.time()
    lock = threading.RLock()   # re-entrant: the signal handler may run while the main thread holds it
    procs: list[subprocess.Popen] = []
    threads = []
    for rank in range(nproc):
        e = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
        p = subprocess.Popen(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)   # own process group: we can end a rank and its children
        procs.append(p)
        t = threading.Thread(target=_forward, args=(p.stdout, f"[rank {rank}] " if prefix_output else "",
                                                    sys.stdout, lock), daemon=True)
        t.start()
        threads.append(t)

    code = 0
    stopping = {"signal": None}    # the first stop signal, passed on to the ranks; they are then waited for
    reported: set[int] = set()
    last_check = time.monotonic()

    def stop(sig) -> None:
        if stopping["signal"] is not None:  # a second one: stop everything now
            raise SystemExit(128 + int(sig))
        stopping["signal"] = sig
        with lock:
            sys.stderr.write(f"[launch] {signal.Signals(sig).name}: passed on to every rank, which save and exit "
                             "(again to kill them)\n")
        _signal_all(procs, sig)   # the ranks are in their own sessions and did not get it

    old = _on_signals(stop)
    try:
        while True:
            try:
                states = [p.poll() for p in procs]
                failed = [(r, c) for r, c in enumerate(states) if c not in (None, 0)]
                if failed and stopping["signal"] is None:
                    rank, code = failed[0]
                    with lock:
                        sys.stderr.write(f"[launch] rank {rank} exited with code {code}; stopping the other ranks\n")
                        sys.stderr.flush()
                    break
                if all(c is not None for c in states):
                    code = next((c for c in states if c), 0)
                    break
                if heartbeat_timeout and time.monotonic() - last_check >= min(1.0, heartbeat_timeout / 2):
                    last_check = time.monotonic()
                    with lock:
                        _check_heartbeats(beats, procs, heartbeat_timeout, reported, sys.stderr, started)
                time.sleep(0.05)
            except KeyboardInterrupt:
                stop(signal.SIGINT)
    except SystemExit as e:
        code = int(e.code or 1)
    finally:
        _terminate(procs, grace)
        for t in threads:
            t.join(timeout=10.0)  # the ranks have exited: the pipes reach EOF soon (slow under load)
        _restore_signals(old)
        shutil.rmtree(beats, ignore_errors=True)
    return code


def _on_signals(stop):
    """Route SIGTERM and SIGHUP to ``stop(signum)`` (Ctrl-C arrives as KeyboardInterrupt); returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            sig = getattr(signal, name)
            old[sig] = signal.signal(sig, lambda signum, frame: stop(signum))
    return old


def _restore_signals(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)


def _signal_all(procs: list[subprocess.Popen], sig) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _terminate(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM every running rank's process group, then SIGKILL what is still there after ``grace`` seconds."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    for p in alive:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="python -m tinygrad_llm.distributed.launch",
        description="Start N ranks of a training script on this machine (one per GPU, or CPU ranks).")
    p.add_argument("--nproc", "--nproc-per-node", type=int, default=2, dest="nproc",
                   help="number of ranks to start (default 2)")
    p.add_argument("--master-addr", default="127.0.0.1", help="rendezvous address (default 127.0.0.1)")
    p.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: a free one)")
    p.add_argument("--no-prefix", action="store_true", help="do not prefix output lines with [rank i]")
    p.add_argument("--heartbeat-timeout", type=float, default=60.0,
                   help="report a rank whose heartbeat stopped for this many seconds (0: off; default 60)")
    p.add_argument("-m", dest="module", default=None, help="run a module (like python -m) instead of a script")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="script.py and its arguments, or tinygrad-llm SUBCOMMAND ..., or a program on PATH")
    return p


def main(argv: list[str] | None = None, commands: Collection[str] = ()) -> int:
    """The command line (also what ``tinygrad-llm launch`` calls, with its subcommand names as ``commands``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":          # "tinygrad-llm launch -- --nproc 2 ..." passes its separator on
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.module:
        command = ["-m", args.module, *command]
    if not command:
        parser.error("give the command to run: launch --nproc 2 train.py [args] (or -m module [args], "
                     "or tinygrad-llm train [args])")
    return launch(args.nproc, command, args.master_addr, args.master_port, prefix_output=not args.no_prefix,
                  heartbeat_timeout=args.heartbeat_timeout, commands=commands)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:  # a command that does not exist, a bad --nproc: a usage error, not a traceback
        build_parser().error(str(e))
