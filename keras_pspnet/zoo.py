"""Published PSPNets in one line: mmsegmentation's checkpoints, downloaded once, verified, converted once.

`from_pretrained(name)` downloads the checkpoint into the Keras cache (`~/.keras/keras_pspnet/`, or
$KERAS_HOME) with `keras.utils.get_file`, verifies it, converts it with `from_mmseg` (no torch needed) and keeps
the converted model there with its SHA-256: later calls check and load it and need no network.
$KERAS_PSPNET_MIRROR replaces the download base URL (an https URL, or a local folder laid out like the original
host) for air-gapped machines and the tests.

What is verified: mmsegmentation publishes the first 8 hex digits of each file's SHA-256 in its name (32 bits:
enough against a damaged download, not against a forger with a GPU), so those are checked; where the registry
records the full digest (`PretrainedPSPNet.sha256`), all of it is. The first verified download's full digest is
kept beside it and checked on every later use, as the converted model's is. Plain-HTTP mirrors are refused
(loopback aside): on the way, anyone could swap the file for one with the same 8 digits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import sys
import urllib.parse

import keras

from keras_pspnet import __version__
from keras_pspnet.convert.mmseg import from_mmseg
from keras_pspnet.files import atomic_output, locked, partial_name, remove_stale_partials, write_text
from keras_pspnet.model import inference_model, load_model, model_metadata, set_model_metadata
from keras_pspnet.protocol import MMSEG_PROTOCOLS, TestProtocol, mmseg_protocol

BASE_URL = "https://download.openmmlab.com/mmsegmentation/v0.5/"
MIRROR_ENV = "KERAS_PSPNET_MIRROR"
CACHE_SUBDIR = "keras_pspnet"
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # plain HTTP never leaves the machine: a local mirror may use it
CONVERTER_VERSION = __version__  # in converted file names: each release converts anew (about 10 s for R101)

# mmsegmentation's test protocols of the published numbers (configs/_base_/datasets/*.py, test_cfg).
CITYSCAPES, ADE20K_VOC = MMSEG_PROTOCOLS["cityscapes"], MMSEG_PROTOCOLS["ade20k"]
CITYSCAPES_769 = mmseg_protocol((2049, 1025), crop=(769, 769), stride=(513, 513))
D32 = {"output_stride": 32, "dilations": (1, 1, 2, 4)}  # "-d32" configs keep their dilations


@dataclasses.dataclass(frozen=True)
class PretrainedPSPNet:
    """A published checkpoint: where it is, what it is, what it scored and how that was measured."""

    name: str  # mmsegmentation 1.x config name
    dataset: str  # a class set of keras_pspnet.data.classes.CLASS_SETS
    backbone: str  # for people: "R-50 V1c D8"
    path: str  # under BASE_URL; the 8 hex digits after the last "-" start the file's SHA-256
    miou: float  # published mIoU (%), val, single scale
    miou_ms: float | None  # with multi-scale (0.5-1.75) and flip
    protocol: TestProtocol  # the test protocol of those numbers (single scale)
    options: dict = dataclasses.field(default_factory=dict)  # from_mmseg arguments of its config
    sha256: str | None = None  # the file's full SHA-256 where known (mmsegmentation publishes only the prefix)

    @property
    def sha256_prefix(self) -> str:
        return self.path.rsplit("-", 1)[1].split(".")[0]

    @property
    def file_name(self) -> str:
        return self.path.rsplit("/", 1)[1]

    @property
    def url(self) -> str:
        """The download URL; $KERAS_PSPNET_MIRROR (an https URL or a folder) replaces the base."""
        base = os.environ.get(MIRROR_ENV) or BASE_URL
        if "://" not in base:
            base = pathlib.Path(base).absolute().as_uri()
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("https", "file") and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
            raise ValueError(f"{MIRROR_ENV}={base}: only https:// mirrors or local folders are used (plain HTTP can "
                             "be altered on the way, and the published 8-digit hash prefix does not stop a forgery)")
        return base.rstrip("/") + "/" + self.path


def _entry(name, dataset, backbone, path, miou, miou_ms, protocol, **options) -> PretrainedPSPNet:
    return PretrainedPSPNet(name, dataset, backbone, path, miou, miou_ms, protocol, options)


ZOO = {entry.name: entry for entry in (
    _entry("pspnet_r18-d8_4xb2-80k_cityscapes-512x1024", "cityscapes", "R-18 V1c D8",
           "pspnet/pspnet_r18-d8_512x1024_80k_cityscapes/pspnet_r18-d8_512x1024_80k_cityscapes_20201225_021458-09ffa746.pth",
           74.87, 76.04, CITYSCAPES),
    _entry("pspnet_r50-d8_4xb2-80k_cityscapes-512x1024", "cityscapes", "R-50 V1c D8",
           "pspnet/pspnet_r50-d8_512x1024_80k_cityscapes/pspnet_r50-d8_512x1024_80k_cityscapes_20200606_112131-2376f12b.pth",
           78.55, 79.79, CITYSCAPES),
    _entry("pspnet_r101-d8_4xb2-80k_cityscapes-512x1024", "cityscapes", "R-101 V1c D8",
           "pspnet/pspnet_r101-d8_512x1024_80k_cityscapes/pspnet_r101-d8_512x1024_80k_cityscapes_20200606_112211-e1e1100f.pth",
           79.76, 81.01, CITYSCAPES),
    _entry("pspnet_r18-d8_4xb2-80k_cityscapes-769x769", "cityscapes", "R-18 V1c D8",
           "pspnet/pspnet_r18-d8_769x769_80k_cityscapes/pspnet_r18-d8_769x769_80k_cityscapes_20201225_021458-3deefc62.pth",
           75.90, 77.86, CITYSCAPES_769, align_corners=True),
    _entry("pspnet_r50-d8_4xb2-80k_cityscapes-769x769", "cityscapes", "R-50 V1c D8",
           "pspnet/pspnet_r50-d8_769x769_80k_cityscapes/pspnet_r50-d8_769x769_80k_cityscapes_20200606_210121-5ccf03dd.pth",
           79.59, 80.69, CITYSCAPES_769, align_corners=True),
    _entry("pspnet_r101-d8_4xb2-80k_cityscapes-769x769", "cityscapes", "R-101 V1c D8",
           "pspnet/pspnet_r101-d8_769x769_80k_cityscapes/pspnet_r101-d8_769x769_80k_cityscapes_20200606_225055-dba412fa.pth",
           79.77, 81.06, CITYSCAPES_769, align_corners=True),
    _entry("pspnet_r50b-d8_4xb2-80k_cityscapes-512x1024", "cityscapes", "R-50 V1b D8",
           "pspnet/pspnet_r50b-d8_512x1024_80k_cityscapes/pspnet_r50b-d8_512x1024_80k_cityscapes_20201225_094315-6344287a.pth",
           78.22, 79.46, CITYSCAPES),
    _entry("pspnet_r101b-d8_4xb2-80k_cityscapes-512x1024", "cityscapes", "R-101 V1b D8",
           "pspnet/pspnet_r101b-d8_512x1024_80k_cityscapes/pspnet_r101b-d8_512x1024_80k_cityscapes_20201226_170012-3a4d38ab.pth",
           79.69, 80.79, CITYSCAPES),
    # mmsegmentation's metafile names this one "pspnet_r50b-d32..." twice; its file and log are r50-d32 (V1c).
    _entry("pspnet_r50-d32_4xb2-80k_cityscapes-512x1024", "cityscapes", "R-50 V1c D32",
           "pspnet/pspnet_r50-d32_512x1024_80k_cityscapes/pspnet_r50-d32_512x1024_80k_cityscapes_20220316_224840-9092b254.pth",
           73.88, 76.85, CITYSCAPES, **D32),
    _entry("pspnet_r50b-d32_4xb2-80k_cityscapes-512x1024", "cityscapes", "R-50 V1b D32",
           "pspnet/pspnet_r50b-d32_512x1024_80k_cityscapes/pspnet_r50b-d32_512x1024_80k_cityscapes_20220311_152152-23bcaf8c.pth",
           72.61, 75.51, CITYSCAPES, **D32),
    _entry("pspnet_r50-d8_4xb4-160k_ade20k-512x512", "ade20k", "R-50 V1c D8",
           "pspnet/pspnet_r50-d8_512x512_160k_ade20k/pspnet_r50-d8_512x512_160k_ade20k_20200615_184358-1890b0bd.pth",
           42.48, 43.44, ADE20K_VOC),
    _entry("pspnet_r101-d8_4xb4-160k_ade20k-512x512", "ade20k", "R-101 V1c D8",
           "pspnet/pspnet_r101-d8_512x512_160k_ade20k/pspnet_r101-d8_512x512_160k_ade20k_20200615_100650-967c316f.pth",
           44.39, 45.35, ADE20K_VOC),
    _entry("pspnet_r50-d8_4xb4-40k_voc12aug-512x512", "voc", "R-50 V1c D8",
           "pspnet/pspnet_r50-d8_512x512_40k_voc12aug/pspnet_r50-d8_512x512_40k_voc12aug_20200613_161222-ae9c1b8c.pth",
           77.29, 78.48, ADE20K_VOC),
    _entry("pspnet_r101-d8_4xb4-40k_voc12aug-512x512", "voc", "R-101 V1c D8",
           "pspnet/pspnet_r101-d8_512x512_40k_voc12aug/pspnet_r101-d8_512x512_40k_voc12aug_20200613_161222-bc933b18.pth",
           78.52, 79.57, ADE20K_VOC),
    _entry("mobilenet-v2-d8_pspnet_4xb2-80k_cityscapes-512x1024", "cityscapes", "MobileNetV2 D8",
           "mobilenet_v2/pspnet_m-v2-d8_512x1024_80k_cityscapes/pspnet_m-v2-d8_512x1024_80k_cityscapes_20200825_124817-19e81d51.pth",
           70.23, None, CITYSCAPES),
    _entry("mobilenet-v2-d8_pspnet_4xb4-160k_ade20k-512x512", "ade20k", "MobileNetV2 D8",
           "mobilenet_v2/pspnet_m-v2-d8_512x512_160k_ade20k/pspnet_m-v2-d8_512x512_160k_ade20k_20200825_214953-f5942f7a.pth",
           29.68, None, ADE20K_VOC),
)}  # fmt: skip


def list_pretrained() -> list[str]:
    """Names accepted by `from_pretrained`."""
    return sorted(ZOO)


def get_entry(name: str) -> PretrainedPSPNet:
    if name not in ZOO:
        raise ValueError(f"Unknown pretrained PSPNet {name!r}; valid names: {list_pretrained()}.")
    return ZOO[name]


def cache_folder(cache_dir: str | None = None) -> str:
    """Our folder in the cache: under `cache_dir`, else $KERAS_HOME, else ~/.keras (as keras.utils.get_file)."""
    home = cache_dir or os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return os.path.join(os.path.expanduser(home), CACHE_SUBDIR)


def converted_path(name: str, cache_dir: str | None = None) -> str:
    """Where the converted model of `name` is kept (it exists once `from_pretrained(name)` ran)."""
    entry = get_entry(name)
    return os.path.join(cache_folder(cache_dir), f"{entry.name}-{entry.sha256_prefix}-v{CONVERTER_VERSION}.keras")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(path: str) -> str | None:
    """The SHA-256 recorded beside a cached file when it was verified or written (None: not recorded)."""
    try:
        with open(path + ".sha256") as f:
            return f.read(64)
    except OSError:
        return None


def _record(path: str, digest: str) -> None:
    write_text(path + ".sha256", digest)


def download(name: str, cache_dir: str | None = None) -> str:
    """The checkpoint of `name` in the cache, downloaded if missing and verified (see the module's docstring).

    A file that fails the check is removed (and named in the error): running again downloads it anew.
    """
    entry = get_entry(name)
    url = entry.url  # a refused mirror is refused before anything is written
    final = os.path.join(cache_folder(cache_dir), "checkpoints", entry.file_name)
    os.makedirs(os.path.dirname(final), exist_ok=True)  # get_file falls back to /tmp for a folder it cannot write
    remove_stale_partials(os.path.dirname(final))  # downloads of killed processes
    path = final
    if not os.path.exists(final):
        try:
            path = keras.utils.get_file(fname=os.path.basename(partial_name(final)), origin=url,
                                        cache_dir=os.path.dirname(final), cache_subdir="")
        except Exception as error:  # keras wraps HTTP, URL and truncation errors in a bare Exception
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise OSError(f"{name}: downloading {url} failed ({reason}); nothing was kept, run again to "
                          f"retry{'' if os.environ.get(MIRROR_ENV) else f' or set {MIRROR_ENV} to a mirror'}") from None
    digest = _sha256(path)
    expected = entry.sha256 or (_recorded(final) if path == final else None)
    if not digest.startswith(entry.sha256_prefix) or (expected and digest != expected):
        os.remove(path)
        what = f"the full SHA-256 {expected[:16]}..." if expected and digest.startswith(entry.sha256_prefix) else \
            f"{entry.sha256_prefix} published for {name}"
        raise ValueError(f"{final}: SHA-256 {digest[:16]}... does not match {what} (a truncated or altered file); "
                         "the file was removed, run again to download it anew")
    if path != final:
        os.replace(path, final)
    if _recorded(final) != digest:
        _record(final, digest)
    return final


def from_pretrained(name: str, *, aux_head: bool = False, cache_dir: str | None = None) -> keras.Model:
    """A published PSPNet (see `list_pretrained()`), converted from its mmsegmentation checkpoint.

    The first call downloads, verifies and converts (keeping the converted model in the cache with its SHA-256);
    later calls verify and load the converted model, offline (a damaged one is converted again). The model's
    metadata holds its class names and colours, the source checkpoint with its published mIoU, and the test
    protocol of that mIoU, which `predict_scores`, `evaluate`, `pspnet evaluate` and `pspnet predict` use by
    default.

    Args:
        name: an mmsegmentation config name, e.g. "pspnet_r50-d8_4xb4-160k_ade20k-512x512".
        aux_head: keep the auxiliary head (to fine-tune); default: the model with one output.
        cache_dir: instead of the Keras cache (~/.keras or $KERAS_HOME).
    """
    entry = get_entry(name)
    target = converted_path(name, cache_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with locked(target):  # processes of this machine (the workers of a run) check and convert one at a time
        _converted(entry, target, cache_dir)
    model = load_model(target)
    return model if aux_head else inference_model(model)


def _converted(entry: PretrainedPSPNet, target: str, cache_dir: str | None) -> None:
    """Makes sure `target` holds the converted checkpoint of `entry` and matches its recorded digest."""
    name = entry.name
    remove_stale_partials(os.path.dirname(target))
    if os.path.exists(target) and _recorded(target) != _sha256(target):
        print(f"{target}: does not match the SHA-256 recorded when it was written (damaged or altered); converting "
              "the checkpoint again", file=sys.stderr)
        os.remove(target)
    if not os.path.exists(target):
        checkpoint = download(name, cache_dir)
        print(f"converting {entry.file_name} (once; kept as {target})", file=sys.stderr)
        model = from_mmseg(checkpoint, classes=entry.dataset, **entry.options)
        stored = model_metadata(model).get("protocol")  # the checkpoint's own config, when it holds one
        if stored and TestProtocol.from_dict(stored) != entry.protocol:
            print(f"{name}: the checkpoint's stored config tests with {TestProtocol.from_dict(stored).describe()}, "
                  f"the registry says {entry.protocol.describe()}; using the checkpoint's (pass a protocol to "
                  "evaluate to choose)", file=sys.stderr)
        set_model_metadata(model, protocol=stored or entry.protocol.to_dict(), source={
            "name": entry.name, "format": "mmsegmentation", "url": BASE_URL + entry.path,
            "sha256_prefix": entry.sha256_prefix, "published_miou": entry.miou,
            "published_miou_ms_flip": entry.miou_ms})
        with atomic_output(target) as partial:  # never a half-written model under the final name
            model.save(partial)
            _record(target, _sha256(partial))  # before the model takes its name: a model is never unrecorded


def pretrained_table(cache_dir: str | None = None) -> str:
    """The registry as a text table: name, data, backbone, published mIoU, test protocol, cached or not."""
    rows = [("name", "data", "backbone", "mIoU", "ms+flip", "test protocol", "cached")]
    for name in list_pretrained():
        entry = ZOO[name]
        rows.append((name, entry.dataset, entry.backbone, f"{entry.miou:.2f}",
                     "-" if entry.miou_ms is None else f"{entry.miou_ms:.2f}", entry.protocol.describe(),
                     "yes" if os.path.exists(converted_path(name, cache_dir)) else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
