"""Published PSPNets in one line: mmsegmentation's checkpoints, downloaded once, verified, converted once.

`from_pretrained(name)` downloads the checkpoint into the Keras cache (`~/.keras/keras_pspnet/`, or
$KERAS_HOME), verifies it (`keras_pspnet.download`: the published SHA-256 prefix, the full digest where known),
converts it with `from_mmseg` (no torch needed) and keeps the converted model there with its SHA-256: later calls
check and load it and need no network. $KERAS_PSPNET_MIRROR replaces the download base URL (an https URL, or a
local folder laid out like the original host) for air-gapped machines and the tests. The registry itself is
`keras_pspnet.registry` (plain data); `keras_pspnet.from_preset(name)` is the front door.
"""

from __future__ import annotations

import os
import sys

import keras

from keras_pspnet.convert.mmseg import from_mmseg
from keras_pspnet.download import MIRROR_ENV, cache_folder, fetch, file_sha256, record_sha256, recorded_sha256
from keras_pspnet.files import atomic_output, locked, remove_stale_partials
from keras_pspnet.model import inference_model, load_model, model_metadata, set_model_metadata
from keras_pspnet.protocol import TestProtocol
from keras_pspnet.registry import (
    BASE_URL,
    CITYSCAPES_769,
    ZOO,
    PretrainedPSPNet,
    converted_path,
    get_entry,
    list_pretrained,
    pretrained_table,
)

# Names kept here from before the registry and downloads had modules of their own.
__all__ = ["BASE_URL", "CITYSCAPES_769", "MIRROR_ENV", "ZOO", "PretrainedPSPNet", "cache_folder", "converted_path",
           "download", "from_pretrained", "get_entry", "list_pretrained", "pretrained_table"]


def download(name: str, cache_dir: str | None = None) -> str:
    """The checkpoint of `name` in the cache, downloaded if missing and verified (see `keras_pspnet.download`).

    A file that fails the check is removed (and named in the error): running again downloads it anew.
    """
    entry = get_entry(name)
    return fetch(name, entry.url, entry.file_name, cache_dir, entry.sha256)


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
    if os.path.exists(target) and recorded_sha256(target) != file_sha256(target):
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
            record_sha256(target, file_sha256(partial))  # before the model takes its name: a model is never unrecorded
