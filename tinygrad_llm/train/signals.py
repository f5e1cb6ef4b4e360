"""Stopping a run cleanly: Ctrl-C (SIGINT), SIGTERM (``kill``, ``timeout``, ``docker stop``, Slurm preemption) and
SIGHUP (a closed terminal or ssh session) all ask the loop to stop at the end of the current step; the trainer then
saves a checkpoint and returns. A second signal raises KeyboardInterrupt inside the step, which the loop rolls back
to the last completed step before saving.

With several ranks only some of them may get the signal (a launcher passes it on, a scheduler may not), so the
ranks agree after every step: ``agree(comm)`` all-reduces the flag, and all stop after the same step.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable

__all__ = ["StopSignals", "STOP_SIGNALS"]

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

_HOW = {"SIGINT": "Ctrl-C", "SIGTERM": "SIGTERM", "SIGHUP": "SIGHUP (the terminal closed)"}


class StopSignals:
    """A context manager that turns the stop signals into a request: ``requested`` (bool) and ``name`` (the first
    signal's name, e.g. "SIGTERM"). Handlers are installed only in the main thread and restored on exit."""

    def __init__(self, log: Callable[[str], None] = print):
        self.requested = False
        self.name: str | None = None
        self._log = log
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop now (the step is rolled back)
            raise KeyboardInterrupt
        self.requested = True
        self.name = signal.Signals(signum).name
        self._log(f"{_HOW.get(self.name, self.name)}: finishing this step, then saving a checkpoint "
                  "(signal again to stop at once)")

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except (ValueError, OSError):  # not allowed here (an embedding interpreter)
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def request(self, name: str) -> None:
        """Ask for a stop without a signal (another rank asked, or a caller)."""
        if not self.requested:
            self.requested, self.name = True, name

    def agree(self, comm) -> bool:
        """True when any rank was asked to stop (a collective: every rank calls it after every step)."""
        if comm is not None and comm.world_size > 1:
            # 0: carry on; 1: a stop without a signal; 1 + signum: that signal
            names = signal.Signals.__members__
            mine = 0 if not self.requested else (1 + int(names[self.name]) if self.name in names else 1)
            top = int(comm.all_reduce_scalars([float(mine)], op="max")[0])
            if top and not self.requested:  # another rank was told: stop with it, under its signal's name
                self.request(signal.Signals(top - 1).name if top > 1 else "stop")
            return top > 0
        return self.requested
