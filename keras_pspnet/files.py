"""Files in and out: bounded reads of regular files, bounded nesting of what they decode to, atomic writes.

Every file a user hands us may be hostile or simply wrong: a named pipe or /dev/zero where an image was
expected, a 663-byte YAML whose aliases expand to billions of values, a symbolic link where an output goes.
Reads here accept regular files only, up to a size stated per kind of file; writes go to a temporary file
beside the target, renamed over it once complete, so a kill never leaves a half-written model under the
target's name, and never write through a symbolic link.
"""

from __future__ import annotations

import contextlib
import os
import reprlib
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Iterator

MiB = 2**20
# Size limits of the small files we read whole: far above any real one, far below a machine's memory.
MAX_TEXT_BYTES = 16 * MiB  # YAML configs, classes.json, metadata JSON
MAX_NODES = 1_000_000  # containers and values a decoded YAML/JSON/pickle may expand to (aliases counted each time)
PARTIAL = ".partial-"  # in the names of files being written; `remove_stale_partials` clears those of dead writers
STALE_SECONDS = 24 * 3600  # a partial file untouched this long belongs to no live writer, on any host

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlevel = 60, 60, 3


def short_repr(value) -> str:
    """`repr(value)` cut to a line: error messages quote user values, which may be huge or deeply nested."""
    return _short.repr(value)


def printable(text: str, limit: int = 500) -> str:
    """`text` with control characters escaped (a hostile name cannot move the cursor or recolour the terminal)
    and cut to `limit` characters."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def regular_file(path: str, what: str = "input") -> os.stat_result:
    """The file's stat, which must be a regular file (a link to one is fine): never a pipe, device or folder,
    whose reads block or never end."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except OSError as error:
        raise OSError(f"{path}: cannot read the {what} ({error.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a pipe, device or socket"
        raise ValueError(f"{path}: {kind} (expected a regular {what} file)")
    return info


def read_bytes(path: str, limit: int, what: str = "input") -> bytes:
    """The content of a regular file of at most `limit` bytes; a one-line error naming the file otherwise."""
    size = regular_file(path, what).st_size
    if size > limit:
        raise ValueError(f"{path}: {size / MiB:.1f} MiB, more than a {what} file may have ({limit / MiB:.0f} MiB)")
    with open(path, "rb") as f:
        data = f.read(limit + 1)  # a file that grew since: still no more than the limit is read
    if len(data) > limit:
        raise ValueError(f"{path}: more than a {what} file may have ({limit / MiB:.0f} MiB)")
    return data


def read_text(path: str, what: str = "input", limit: int = MAX_TEXT_BYTES) -> str:
    try:
        return read_bytes(path, limit, what).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def zip_member(archive, name: str, limit: int, path: str) -> bytes:
    """A member of an open zipfile.ZipFile, of at most `limit` bytes once inflated: its declared size is checked
    before it is read (a few kB of deflated zeros inflate to gigabytes), and zipfile stops reading at that size."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise ValueError(f"{path}: {printable(name, 80)} inflates to {info.file_size:,} bytes, more than "
                         f"{limit:,}")
    return archive.read(info)


def check_nodes(value, where: str, limit: int = MAX_NODES) -> None:
    """Raises ValueError when `value` (containers of containers, as YAML, JSON or a pickle decode) has more than
    `limit` nodes counting shared ones each time they occur, or refers to itself: what anything that walks it
    (a repr, a copy, JSON) would face. Shared nodes are counted without walking them again, so a billion-laughs
    document is judged in microseconds."""
    sizes: dict[int, int] = {}
    walking: set[int] = set()

    def count(node) -> int:
        if isinstance(node, dict):
            children = [*node.keys(), *node.values()]
        elif isinstance(node, (list, tuple, set, frozenset)):
            children = list(node)
        else:
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in walking:
            raise ValueError(f"{where}: refers to itself")
        walking.add(key)
        total = 1
        for child in children:
            total += count(child)
            if total > limit:
                raise ValueError(f"{where}: expands to more than {limit:,} values (aliases or shared references "
                                 "repeated); not a configuration we read")
        walking.discard(key)
        sizes[key] = total
        return total

    try:
        count(value)
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply") from None


def partial_name(path: str) -> str:
    """A name beside `path` for its content while written: unique, and telling which host and process write it."""
    folder, name = os.path.split(path)
    stem, extension = os.path.splitext(name)  # the extension stays last: Keras saves only to ".keras" names
    host = socket.gethostname().replace("-", "_")[:32] or "host"
    return os.path.join(folder, f".{stem}{PARTIAL}{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}{extension}")


def refuse_link(path: str) -> None:
    """Outputs are never written through a symbolic link (it may point anywhere, or nowhere yet)."""
    if os.path.islink(path):
        raise ValueError(f"{path}: is a symbolic link; outputs are not written through links (remove it or choose "
                         "another name)")


def check_new_output(path: str, overwrite: bool, option: str | None = None) -> None:
    """An output path may be written: not a symbolic link, and not an existing file unless `overwrite`. `option`:
    the command-line option that named it, offered in the error as the other way out (e.g. "--out")."""
    refuse_link(path)
    if not overwrite and os.path.lexists(path):
        other = f", or a new {option}" if option else ""
        raise FileExistsError(f"{path}: already exists (use --force to replace it{other})")


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """An exclusive lock on `path`.lock while the block runs, for processes of this machine sharing a cache (POSIX
    flock; without it, no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_output(path: str, *, overwrite: bool = True) -> Iterator[str]:
    """Yields a temporary path beside `path` to write to; when the block ends without an error it is renamed to
    `path` (an atomic replace on POSIX), else removed. An interrupted write never leaves a damaged `path`.

    Refuses a `path` that is a symbolic link, and an existing one unless `overwrite`.
    """
    check_new_output(path, overwrite)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder for {os.path.basename(path)}")
    partial = partial_name(path)
    try:
        yield partial
        refuse_link(path)  # made while we wrote: still not written through
        os.replace(partial, path)
    finally:
        if os.path.isdir(partial) and not os.path.islink(partial):
            shutil.rmtree(partial, ignore_errors=True)
        elif os.path.lexists(partial):
            os.remove(partial)


def write_text(path: str, text: str, *, overwrite: bool = True) -> None:
    """Writes `text` atomically (see `atomic_output`)."""
    with atomic_output(path, overwrite=overwrite) as partial:
        with open(partial, "x", encoding="utf-8") as f:
            f.write(text)


def write_bytes(path: str, data: bytes, *, overwrite: bool = True) -> None:
    with atomic_output(path, overwrite=overwrite) as partial:
        with open(partial, "xb") as f:
            f.write(data)


def remove_stale_partials(folder: str) -> list[str]:
    """Removes the partial files (`atomic_output`, downloads) in `folder` left by a killed writer: those of a
    process of this host that no longer runs, and any untouched for STALE_SECONDS. Returns what was removed."""
    if not os.path.isdir(folder):
        return []
    removed, host, now = [], socket.gethostname().replace("-", "_")[:32] or "host", time.time()
    for name in os.listdir(folder):
        if PARTIAL not in name:
            continue
        path = os.path.join(folder, name)
        writer = name.split(PARTIAL, 1)[1].split("-")
        try:
            dead = len(writer) >= 3 and writer[0] == host and not _running(int(writer[1]))
            if dead or now - os.lstat(path).st_mtime > STALE_SECONDS:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
                removed.append(path)
        except (ValueError, OSError):  # a name we did not write, or removed meanwhile by another process
            continue
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
