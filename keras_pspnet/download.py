"""Published files (checkpoints, ImageNet backbones): downloaded once into the Keras cache and verified.

A file is fetched (urllib, with our progress display) into `~/.keras/keras_pspnet/checkpoints/` (or $KERAS_HOME)
and checked against the SHA-256 prefix its publisher puts in its name (mmsegmentation, OpenMMLab and torchvision
all publish the first 8 hex digits: 32 bits, enough against a damaged download, not against a forger with a
GPU); where a full digest is known, all of it is. The first verified download's full digest is kept beside it and
checked on every later use. $KERAS_PSPNET_MIRROR replaces each file's download base (an https URL, or a local
folder laid out like the original hosts) for air-gapped machines and the tests; plain-HTTP mirrors are refused
(loopback aside): on the way, anyone could swap a file for one with the same 8 digits.

Nothing here imports Keras: `pspnet pretrained list` stays instant.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import urllib.parse

from keras_pspnet.files import partial_name, remove_stale_partials, write_text

MIRROR_ENV = "KERAS_PSPNET_MIRROR"
CACHE_SUBDIR = "keras_pspnet"
DOWNLOAD_TIMEOUT = 60  # seconds without a byte before a download is given up
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # plain HTTP never leaves the machine: a local mirror may use it


def cache_folder(cache_dir: str | None = None) -> str:
    """Our folder in the cache: under `cache_dir`, else $KERAS_HOME, else ~/.keras (as keras.utils.get_file)."""
    home = cache_dir or os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return os.path.join(os.path.expanduser(home), CACHE_SUBDIR)


def remote_url(base: str, path: str) -> str:
    """The URL of `path` under `base`, or under $KERAS_PSPNET_MIRROR (an https URL or a folder) when it is set."""
    base = os.environ.get(MIRROR_ENV) or base
    if "://" not in base:
        base = pathlib.Path(base).absolute().as_uri()
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("https", "file") and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
        raise ValueError(f"{MIRROR_ENV}={base}: only https:// mirrors or local folders are used (plain HTTP can "
                         "be altered on the way, and the published 8-digit hash prefix does not stop a forgery)")
    return base.rstrip("/") + "/" + path


def sha256_prefix(file_name: str) -> str:
    """The SHA-256 prefix a published file carries after the last "-" of its name (resnet50_v1c-2cccc1ad.pth)."""
    return file_name.rsplit("-", 1)[-1].split(".")[0]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_sha256(path: str) -> str | None:
    """The SHA-256 recorded beside a cached file when it was verified or written (None: not recorded)."""
    try:
        with open(path + ".sha256") as f:
            return f.read(64)
    except OSError:
        return None


def record_sha256(path: str, digest: str) -> None:
    write_text(path + ".sha256", digest)


def _download(url: str, path: str, file_name: str) -> None:
    """`url` into `path`, with `console.Progress` (a bar on a terminal, plain lines in a log: keras.utils.get_file's
    bar would write escape codes into logs)."""
    import urllib.request

    from keras_pspnet.console import Progress

    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(path, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        with Progress(total and -(-total // 2**20), f"downloading {file_name}", "MiB") as shown:
            while block := response.read(2**20):
                out.write(block)
                done += len(block)
                shown.update(done // 2**20)
    if total is not None and done != total:
        raise OSError(f"retrieval incomplete: got {done} of {total} bytes")


def fetch(name: str, url: str, file_name: str, cache_dir: str | None = None, sha256: str | None = None) -> str:
    """The published file `file_name` (called `name` in messages) in the cache, downloaded from `url` if missing
    and verified (see the module's docstring). A file that fails the check is removed and named in the error:
    running again downloads it anew."""
    final = os.path.join(cache_folder(cache_dir), "checkpoints", file_name)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    remove_stale_partials(os.path.dirname(final))  # downloads of killed processes
    prefix, path = sha256_prefix(file_name), final
    if not os.path.exists(final):
        path = partial_name(final)
        try:
            _download(url, path, file_name)
        except Exception as error:  # HTTP, URL, socket and truncation errors alike
            if os.path.exists(path):
                os.remove(path)
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise OSError(f"{name}: downloading {url} failed ({reason}); nothing was kept, run again to "
                          f"retry{'' if os.environ.get(MIRROR_ENV) else f' or set {MIRROR_ENV} to a mirror'}") from None
    digest = file_sha256(path)
    expected = sha256 or (recorded_sha256(final) if path == final else None)
    if not digest.startswith(prefix) or (expected and digest != expected):
        os.remove(path)
        what = f"the full SHA-256 {expected[:16]}..." if expected and digest.startswith(prefix) else \
            f"{prefix} published for {name}"
        raise ValueError(f"{final}: SHA-256 {digest[:16]}... does not match {what} (a truncated or altered file); "
                         "the file was removed, run again to download it anew")
    if path != final:
        os.replace(path, final)
    if recorded_sha256(final) != digest:
        record_sha256(final, digest)
    return final
