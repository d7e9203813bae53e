"""How the `pspnet` command reports an error: one line on stderr, never a traceback from deep inside TensorFlow."""

from __future__ import annotations

import sys


def one_line(error: BaseException) -> str:
    """The error as one line: its message's first line, with the type where the message alone says too little
    (a KeyError's message is just the key; a MemoryError has none)."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    if isinstance(error, (ValueError, OSError, ImportError)) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def report(message: str) -> None:
    print(f"pspnet: error: {message}", file=sys.stderr)
