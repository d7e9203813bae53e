"""What the `pspnet` command shows: errors as one line on stderr, and none of TensorFlow's native log lines."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import threading


def one_line(error: BaseException) -> str:
    """The error as one line: its message's first line, with the type where the message alone says too little
    (a KeyError's message is just the key; a MemoryError has none)."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    if isinstance(error, (ValueError, OSError, ImportError)) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def report(message: str) -> None:
    """One error line on stderr, its control characters escaped (a file's name or content may hold terminal codes),
    above any progress bar rather than inside it."""
    from tqdm import tqdm

    from keras_pspnet.files import printable

    tqdm.write(f"pspnet: error: {printable(message, 2000)}", file=sys.stderr)


def _flush_all() -> None:
    """Python's and C's buffered output, so that it goes where it was meant to before descriptors change."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        ctypes.CDLL(None).fflush(None)  # libc's buffers (Linux, macOS)
    except (OSError, TypeError, AttributeError):  # no C library handle (Windows): nothing to flush
        pass


@contextlib.contextmanager
def native_output_hidden(descriptors: tuple[int, ...] = (1, 2)):
    """Points file descriptors (1: stdout, 2: stderr) at /dev/null while the block runs: for what TensorFlow's C++
    writes there directly, past Python and TF_CPP_MIN_LOG_LEVEL. For the command line only: descriptors are the
    process's, so other threads' output is hidden too."""
    _flush_all()
    null, saved = None, []
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        for descriptor in descriptors:
            saved.append((descriptor, os.dup(descriptor)))
            os.dup2(null, descriptor)
        yield
    finally:
        _flush_all()  # C's buffered output of the block goes to /dev/null, not to the terminal at exit
        for descriptor, copy in saved:
            os.dup2(copy, descriptor)
            os.close(copy)
        if null is not None:
            os.close(null)


# What native libraries write to stderr past Python: absl/TensorFlow log records of levels I, W and E ("E0000
# 00:00:... file.cc:12] ..." with their continuation lines: an error that matters reaches Python as an exception,
# which the command reports; F, fatal, records stay), absl's pre-init notice, libjpeg's warnings on recoverable
# JPEGs, LiteRT's delegate notice and the CPU-feature note.
NATIVE_NOISE = re.compile(rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\]|WARNING: All log messages before "
                          rb"absl|Corrupt JPEG data|Premature end of JPEG|INFO: Created TensorFlow Lite|To enable the "
                          rb"following instructions)")


@contextlib.contextmanager
def native_logs_filtered():
    """While the block runs, what native code writes to stderr (file descriptor 2) passes through a thread that drops
    NATIVE_NOISE records (a record's continuation lines with it: one write is one record) and forwards the rest;
    Python's own `sys.stderr` writes straight to the terminal. For the command line: descriptors are the process's.
    """
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced (a test's capture): native output is not ours to sort
        real = False
    if not real:
        yield
        return
    _flush_all()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    python_stderr = sys.stderr
    sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=getattr(python_stderr, "encoding", None) or "utf-8",
                      errors="backslashreplace")

    def forward():
        while chunk := os.read(read_end, 1 << 16):
            dropping = False
            for line in chunk.splitlines(keepends=True):
                dropping = dropping or bool(NATIVE_NOISE.match(line))
                if not dropping:
                    os.write(terminal, line)

    thread = threading.Thread(target=forward, name="keras-pspnet stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        _flush_all()
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(terminal, 2)  # the pipe's last writer here: the thread sees its end (unless a child still holds it)
        thread.join(timeout=2)
        os.close(terminal)
        if not thread.is_alive():
            os.close(read_end)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its logs hidden: TF_CPP_MIN_LOG_LEVEL=3 hides C++ INFO, WARNING and ERROR records
    (oneDNN's "supports DT_UINT8 only on platforms with AVX-512" is an ERROR record; errors that matter reach
    Python as exceptions, which the command reports), but the CPU-feature lines are written before absl logging
    starts and ignore it: they are dropped here, and native_logs_filtered drops any record that still gets out."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_output_hidden((2,)):
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            pass  # reported with its message where a command needs it
    for name in ("absl", "tensorflow", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


def is_terminal(stream=None) -> bool:
    """Whether `stream` (default: stderr) is a terminal, where bars redraw themselves; a pipe or a log file gets
    plain lines instead (no carriage returns, no escape codes)."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # replaced or closed
        return False


class Progress:
    """One progress display for every command: on a terminal a tqdm bar; elsewhere (a pipe, a log file) a plain
    line each `percent` % of `total` or each `seconds`, whichever comes first, and one at the end.

    `update(done, **values)` sets the count done (values, e.g. loss=0.5, show beside it); `write(text)` prints a
    line above the bar; `close()` ends it (also as a context manager).
    """

    def __init__(self, total: int | None, description: str, unit: str = "it", *, enabled: bool = True,
                 leave: bool = True, stream=None, percent: float = 10, seconds: float = 30):
        import time

        self.total, self.description, self.unit, self.enabled = total, description, unit, enabled
        self.stream = sys.stderr if stream is None else stream
        self.percent, self.seconds, self.done, self.values = percent, seconds, 0, {}
        self._clock, self._shown, self._closed = time.monotonic, 0, False
        self._started = self._last = self._clock()
        self.bar = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit=unit, leave=leave, file=self.stream)

    def update(self, done: int, **values) -> None:
        self.values.update(values)
        if self.bar is not None:
            self.bar.update(done - self.done)
            if values:
                self.bar.set_postfix({k: _short(v) for k, v in self.values.items()}, refresh=False)
        self.done = done
        if self.bar is None and self.enabled:
            now, step = self._clock(), self.total * self.percent / 100 if self.total else None
            if (step and done >= self._shown + step) or now - self._last >= self.seconds:
                self._line(now)

    def _line(self, now: float) -> None:
        self._last, self._shown = now, self.done
        of = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        values = "".join(f", {k} {_short(v)}" for k, v in self.values.items())
        unit = self.unit if self.unit[-1:].isupper() else self.unit + "s"  # "images", "steps"; "MiB" as it is
        print(f"{self.description}: {self.done}{of} {unit}{share}{values}, {now - self._started:.0f} s",
              file=self.stream, flush=True)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done != self._shown:
            self._line(self._clock())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress(items, total: int | None = None, description: str = "", unit: str = "it", **options):
    """`items` as they come, shown with `Progress` (`options`: enabled, leave, stream, percent, seconds)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(total, description, unit, **options) as shown:
        for count, item in enumerate(items, 1):
            yield item
            shown.update(count)
