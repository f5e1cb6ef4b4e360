"""Start N ranks of a script on this machine: ``python -m tinygrad_llm.distributed.launch --nproc N script.py args``.

Each rank is ``python script.py args`` (or ``python -m module args``) with these environment variables:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` (rank 0's TCP
rendezvous: the TCP backend's hub, and how NCCL's unique id is shared) and ``TINYGRAD_LLM_LAUNCHER=1``.
The script calls ``init_distributed()`` and gets the right communicator.

With several ranks, ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` default to
cores / N (unless set), so CPU ranks do not oversubscribe the machine; under ``mpiexec`` set them yourself.

Every line a rank prints is forwarded with a ``[rank i]`` prefix. When a rank fails (non-zero exit), the launcher
terminates the others (SIGTERM, then SIGKILL after a grace period) and exits with that rank's code. The first
Ctrl-C is passed on to every rank as SIGINT (the trainer then saves a checkpoint and exits); a second one, or a
SIGTERM to the launcher, terminates them all.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

# the rank side of the launcher lives in runtime.py; re-exported here for ``from ...launch import init_distributed``
from .runtime import get_rank, get_world_size, init_distributed  # noqa: F401


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``addr`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def _forward(stream, prefix: str, out, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        with lock:
            out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            out.flush()
    stream.close()


def launch(nproc: int, command: list[str], master_addr: str = "127.0.0.1", master_port: int | None = None,
           env: dict | None = None, grace: float = 5.0, prefix_output: bool = True) -> int:
    """Run ``python <command>`` as ``nproc`` ranks; return 0 when all succeed, else the first failure's code.

    ``command``: ``["script.py", args...]`` or ``["-m", "module", args...]``.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    if not command:
        raise ValueError("launch needs a script (or -m module) to run")
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
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    threads = []
    for rank in range(nproc):
        e = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
        p = subprocess.Popen([sys.executable, *command], env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)   # own process group: we can end a rank and its children
        procs.append(p)
        t = threading.Thread(target=_forward, args=(p.stdout, f"[rank {rank}] " if prefix_output else "",
                                                    sys.stdout, lock), daemon=True)
        t.start()
        threads.append(t)

    code = 0
    interrupted = False
    old_term = _on_sigterm()
    try:
        while True:
            try:
                states = [p.poll() for p in procs]
                failed = [(r, c) for r, c in enumerate(states) if c not in (None, 0)]
                if failed:
                    rank, code = failed[0]
                    with lock:
                        sys.stderr.write(f"[launch] rank {rank} exited with code {code}; stopping the other ranks\n")
                        sys.stderr.flush()
                    break
                if all(c == 0 for c in states):
                    break
                time.sleep(0.05)
            except KeyboardInterrupt:
                if interrupted:            # second Ctrl-C: stop everything now
                    code = 130
                    break
                # first Ctrl-C: pass it on (the ranks are in their own sessions and did not get it), so a trainer
                # can finish its step and save a checkpoint; the loop then sees them exit
                interrupted = True
                with lock:
                    sys.stderr.write("[launch] Ctrl-C: passed on to every rank (press again to kill them)\n")
                _signal_all(procs, signal.SIGINT)
    finally:
        _terminate(procs, grace)
        for t in threads:
            t.join(timeout=10.0)  # the ranks have exited: the pipes reach EOF soon (slow under load)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return code


def _on_sigterm():
    """Make SIGTERM to the launcher end the ranks too (through the ``finally`` above); returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise SystemExit(128 + signum)
    return signal.signal(signal.SIGTERM, handler)


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
    p.add_argument("-m", dest="module", default=None, help="run a module (like python -m) instead of a script")
    p.add_argument("command", nargs=argparse.REMAINDER, help="script.py and its arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (also what ``tinygrad-llm launch`` calls with its arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":          # "tinygrad-llm launch -- --nproc 2 ..." passes its separator on
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.module:
        command = ["-m", args.module, *command]
    if not command:
        build_parser().error("give the script to run: launch --nproc 2 train.py [args] (or -m module [args])")
    return launch(args.nproc, command, args.master_addr, args.master_port, prefix_output=not args.no_prefix)


if __name__ == "__main__":
    sys.exit(main())
