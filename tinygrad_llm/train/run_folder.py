"""The run folder (``out_dir``): one run per folder, held by one process at a time.

    folder = RunFolder("out")
    folder.lock()                  # exclusive: a second process gets a RunFolderError naming the first
    folder.claim(resuming=False, overwrite=False)   # refuses a folder that holds another run
    path, note = folder.resume_point()              # the checkpoint to resume from (None: nothing to resume)
    folder.unlock()

The rules, as in Hugging Face's Trainer (``overwrite_output_dir``): a fresh run never writes into a folder that
holds another run (a ``latest`` file, ``step_*`` checkpoints or a ``metrics.jsonl``); ``--resume`` continues that
run, ``--overwrite`` deletes it first (only the run's own files: checkpoints, ``latest``, ``metrics.jsonl``), or
the user picks another ``--out-dir``.

The lock is ``fcntl.flock`` on ``out_dir/.lock``; the file records the holder's pid, host, command and start time
so the refusal can name it. The operating system drops the lock when the process dies (also on kill -9), so a
crashed run never leaves the folder locked. Platforms without ``fcntl`` run unlocked.

Left-overs of a crash are removed when the lock is taken: partial checkpoint folders (``.step_*.tmp``), the
previous copy of a re-saved checkpoint (``.step_*.old``) and half-written ``latest`` files (``.latest.*.tmp``).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from .checkpoint import LATEST, META_FILE, STEP_RE, list_checkpoints

__all__ = ["RunFolder", "RunFolderError", "LOCK_FILE", "METRICS_FILE"]

LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"


class RunFolderError(ValueError):
    """The run folder holds another run, or another process is using it (the message says which)."""


def _is_stale_temporary(p: Path) -> bool:
    name = p.name
    return (name.startswith(".step_") and name.endswith((".tmp", ".old"))) or \
        (name.startswith(f".{LATEST}.") and name.endswith(".tmp")) or name == f"{METRICS_FILE}.tmp"


class RunFolder:
    """``out_dir`` of a training run: its lock, its contents, where a resume starts."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    # ------------------------------------------------------------------------------------------ lock
    def lock(self) -> None:
        """Take the folder's exclusive lock (creating the folder); RunFolderError when another process holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        if self._fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._describe_holder(fd)
            os.close(fd)
            raise RunFolderError(f"{self.path} is in use by another run ({holder}); wait for it to finish, stop it, "
                                 "or choose another --out-dir") from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    @staticmethod
    def _describe_holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
            return (f"pid {info['pid']} on {info['host']}, started {info['started']}, command: "
                    f"{info['command']}")
        except (ValueError, KeyError, OSError, UnicodeDecodeError):
            return "a process that did not say who it is"

    def unlock(self) -> None:
        """Release the lock (the lock file stays; an unlocked file means a free folder)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)  # closing the descriptor drops the flock
            except (OSError, TypeError, AttributeError):  # at interpreter exit (from __del__)
                pass

    @property
    def locked(self) -> bool:
        return self._fd is not None

    # ------------------------------------------------------------------------------------------ contents
    def run_files(self) -> list[str]:
        """Names of the files and folders of a run already in the folder (checkpoints, latest, metrics log)."""
        if not self.path.is_dir():
            return []
        found = [p.name for p in list_checkpoints(self.path)]
        found += [n for n in (LATEST, METRICS_FILE) if (self.path / n).exists()]
        return found

    def claim(self, resuming: bool, overwrite: bool, resumable: bool = True) -> list[str]:
        """Make the folder this run's: refuse another run's folder unless ``resuming`` it or ``overwrite``
        (which deletes that run first). ``resumable``: whether the refusal may suggest ``--resume`` (a command
        without it, such as fine-tuning, says False). Returns the names deleted."""
        found = self.run_files()
        if not found or resuming:
            return []
        if not overwrite:
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            hint = "continue it with --resume, replace it" if resumable else "replace it"
            raise RunFolderError(f"{self.path} already holds a run ({shown}); {hint} with --overwrite, or choose "
                                 "another --out-dir")
        for name in found:
            p = self.path / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return found

    def clean_stale(self) -> list[str]:
        """Remove the temporaries a crash left (see the module doc); returns their names."""
        if not self.path.is_dir():
            return []
        gone = []
        for p in sorted(self.path.iterdir()):
            if _is_stale_temporary(p):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                gone.append(p.name)
        return gone

    # ------------------------------------------------------------------------------------------ resume
    def resume_point(self) -> tuple[Path | None, str | None]:
        """(checkpoint folder to resume from, or None when there is none; a note when ``latest`` was not used).

        ``latest`` names the newest complete checkpoint; when it is missing, unreadable or points at a folder that
        is gone (a deleted damaged checkpoint), the newest ``step_*`` folder with its ``checkpoint.json`` is used.
        """
        ckpts = list_checkpoints(self.path)
        latest = self.path / LATEST
        problem = None
        if latest.is_file():
            try:
                name = latest.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                name, problem = None, f"{latest} cannot be read ({e})"
            if name is not None:
                target = self.path / name
                if STEP_RE.match(name) and (target / META_FILE).is_file():
                    return target, None
                problem = f"{latest} points at {name!r}, which is not a complete checkpoint"
        if not ckpts:
            return None, problem
        newest = ckpts[-1]
        note = (f"{problem}; resuming from the newest complete checkpoint, {newest.name}" if problem else
                f"no '{LATEST}' file in {self.path}; resuming from the newest checkpoint, {newest.name}")
        return newest, note


def resume_source(resume: str, out_dir: str | os.PathLike) -> tuple[Path | None, str | None]:
    """Where ``resume`` (``"auto"``, an output folder, or a checkpoint folder / checkpoint.json) resumes from:
    (checkpoint folder or None when an output folder holds none yet, a note to show the user or None)."""
    p = Path(out_dir) if resume == "auto" else Path(resume)
    if resume == "auto" and not p.exists():
        return None, None
    if p.is_dir() and not (p / META_FILE).exists():
        return RunFolder(p).resume_point()
    return p, None
