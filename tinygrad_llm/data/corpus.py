"""Text corpora: the embedded default corpus and loading .txt files or folders.

The default corpus is Python's own help text (``pydoc_data.topics``, about 465 kB of English that ships with
CPython), so ``tinygrad-llm train`` works on a fresh machine with no download.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_corpus", "load_text", "text_files"]


def default_corpus() -> str:
    """The embedded default corpus: every ``pydoc_data.topics`` help text, in sorted-key order, blank-line separated.

    Deterministic for a given Python version (the topics are regenerated with each CPython release).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some minimal Python builds strip pydoc_data
        raise RuntimeError(
            "the default corpus needs Python's pydoc_data package, which this Python installation lacks; "
            "pass a text file or folder of .txt files instead (--data PATH)"
        ) from e
    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics))


def _read_utf8(path: Path) -> str:
    """Read one file as UTF-8, with an error naming the file and the byte offset of the first bad byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.end].hex(" ")
        raise ValueError(
            f"{path}: invalid UTF-8 at byte offset {e.start} (bytes {bad}): {e.reason}; "
            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _existing(p: Path) -> Path:
    if not p.exists():
        raise FileNotFoundError(f"corpus path {str(p)!r} does not exist")
    return p


def text_files(path: str | os.PathLike) -> list[Path]:
    """The files a corpus path stands for: the file itself, or every ``*.txt`` file under a folder (subfolders
    included, hidden ones skipped), sorted by relative path. ValueError for a folder without any."""
    p = _existing(Path(path))
    if not p.is_dir():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() == ".txt"
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise ValueError(f"corpus folder {str(p)!r} contains no .txt files (searched its subfolders too)")
    return files


def load_text(path: str | os.PathLike) -> str:
    """Load a corpus from a .txt file, or from every ``*.txt`` file under a folder (``text_files``; joined by "\\n\\n").

    Raises FileNotFoundError for a missing path, ValueError for a folder with no .txt files, an empty corpus, or a
    file that is not valid UTF-8 (naming the file and the byte offset).
    """
    p = Path(path)
    text = "\n\n".join(_read_utf8(f) for f in text_files(p)) if p.is_dir() else _read_utf8(_existing(p))
    if not text.strip():
        raise ValueError(f"corpus {str(p)!r} is empty (no non-whitespace text)")
    return text
