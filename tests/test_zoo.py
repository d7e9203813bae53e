"""The zoo: download from a mirror on 127.0.0.1, verify, convert once, then offline; every bad download a one-liner."""

import dataclasses
import http.server
import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from keras_pspnet import TestProtocol, model_metadata, predict_scores, zoo
from keras_pspnet.backbones.common import stride_plan
from keras_pspnet.backbones.mobilenet_v2 import MOBILENET_V2_STAGES
from keras_pspnet.cli import main
from keras_pspnet.data.classes import CLASS_SETS
from keras_pspnet.protocol import mmseg_protocol
from tests.checkpoints import (
    BLOCK_TORCH,
    CONFIG_0X_R18,
    CONFIG_2020_R18_769,
    DATA,
    config_text,
    reference_logits,
    serve,
    sha256,
    zoo_entry,
)
from tests.conftest import relative_error

NAME = "test_pspnet_r18-d8_4xb2-80k_cityscapes-512x1024"


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A download host folder with one tiny checkpoint, registered in the zoo; a fresh cache folder."""
    root = tmp_path / "host"
    reference, entry = zoo_entry(root, NAME, depth=18)
    monkeypatch.setitem(zoo.ZOO, NAME, entry)
    return reference, entry, root, str(tmp_path / "cache")


def test_downloads_verifies_converts_once_then_works_offline(host, monkeypatch, rng):
    reference, entry, root, cache = host
    pixels = rng.uniform(0, 255, (1, 65, 97, 3)).astype("float32")
    expected = reference_logits(reference, pixels)
    with serve(root) as url:
        monkeypatch.setenv(zoo.MIRROR_ENV, url)
        model = zoo.from_pretrained(NAME, cache_dir=cache)
    assert relative_error(model.predict(pixels, verbose=0), expected[0]) < 1e-4  # one output: no auxiliary head
    kept = sorted(os.listdir(os.path.join(cache, "keras_pspnet")))
    converted = os.path.basename(zoo.converted_path(NAME, cache))
    assert kept == ["checkpoints", converted, converted + ".lock", converted + ".sha256"]  # its digest, its lock
    assert sorted(os.listdir(os.path.join(cache, "keras_pspnet", "checkpoints"))) == [entry.file_name,
                                                                                      entry.file_name + ".sha256"]
    metadata = model_metadata(model)
    assert metadata["protocol"] == entry.protocol.to_dict()
    assert metadata["source"]["name"] == NAME and metadata["source"]["published_miou"] == 78.55
    assert metadata["source"]["url"] == zoo.BASE_URL + entry.path  # the original, not the mirror
    assert [c["name"] for c in metadata["classes"]] == list(CLASS_SETS["cityscapes"].class_names)
    image = pixels[0, :48, :80]  # its protocol, keep-ratio resize to 96x64, runs it at 58x96
    np.testing.assert_array_equal(predict_scores(model, image), predict_scores(model, image, entry.protocol))
    assert not np.allclose(predict_scores(model, image), predict_scores(model, image, TestProtocol()))
    monkeypatch.setenv(zoo.MIRROR_ENV, "http://127.0.0.1:9/")  # nothing listens there: offline from now on
    again = zoo.from_pretrained(NAME, aux_head=True, cache_dir=cache)
    outputs = again.predict(pixels, verbose=0)
    assert relative_error(outputs["logits"], expected[0]) < 1e-4 and relative_error(outputs["aux"], expected[1]) < 1e-4


def test_the_checkpoints_own_config_wins_over_the_registry(tmp_path, monkeypatch, capsys):
    text = config_text(CONFIG_0X_R18)  # stored by mmsegmentation: keep-ratio resize to 2048x1024, whole image
    _, entry = zoo_entry(tmp_path / "host", NAME, depth=18, meta={"config": text})  # registry: 96x64
    monkeypatch.setitem(zoo.ZOO, NAME, entry)
    monkeypatch.setenv(zoo.MIRROR_ENV, str(tmp_path / "host"))
    model = zoo.from_pretrained(NAME, cache_dir=str(tmp_path / "cache"))
    assert model_metadata(model)["protocol"]["resize"] == [2048, 1024]
    assert "the registry says mmseg: keep-ratio resize to 96x64, whole image; using the checkpoint's" in \
        capsys.readouterr().err
    kept = os.listdir(os.path.join(tmp_path, "cache", "keras_pspnet")) + os.listdir(
        os.path.join(tmp_path, "cache", "keras_pspnet", "checkpoints"))
    assert not [name for name in kept if ".partial-" in name]  # only finished, checked files take their names


def test_2020_checkpoints_agree_with_the_registry(tmp_path, monkeypatch, capsys):
    """The 769x769 Cityscapes checkpoints of 2020 keep test_cfg at the top level: read, it is the registry's slide
    protocol, and nothing is said."""
    name = "pspnet_r18-d8_4xb2-80k_cityscapes-769x769"
    _, entry = zoo_entry(tmp_path / "host", name, depth=18, align_corners=True, protocol=zoo.ZOO[name].protocol,
                         options=zoo.ZOO[name].options, meta={"config": config_text(CONFIG_2020_R18_769)})
    monkeypatch.setitem(zoo.ZOO, name, entry)
    monkeypatch.setenv(zoo.MIRROR_ENV, str(tmp_path / "host"))
    model = zoo.from_pretrained(name, cache_dir=str(tmp_path / "cache"))
    assert model_metadata(model)["protocol"] == zoo.CITYSCAPES_769.to_dict()
    assert zoo.CITYSCAPES_769.mode == "slide" and "registry" not in capsys.readouterr().err


def test_a_local_folder_serves_as_mirror(host, monkeypatch):
    _, _, root, cache = host
    monkeypatch.setenv(zoo.MIRROR_ENV, str(root))  # air-gapped: the files copied to a folder
    assert zoo.ZOO[NAME].url.startswith("file:///")
    assert zoo.from_pretrained(NAME, cache_dir=cache).output.shape[-1] == 19


def test_hash_mismatch_removes_the_file(host, monkeypatch):
    _, entry, root, cache = host
    altered = os.path.join(str(root), entry.path)
    with open(altered, "r+b") as f:  # one flipped byte in the middle of the file
        f.seek(os.path.getsize(altered) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    with serve(root) as url:
        monkeypatch.setenv(zoo.MIRROR_ENV, url)
        with pytest.raises(ValueError) as error:
            zoo.from_pretrained(NAME, cache_dir=cache)
    cached = os.path.join(cache, "keras_pspnet", "checkpoints", entry.file_name)
    message = str(error.value)
    assert message.startswith(f"{cached}: SHA-256 ") and f"does not match {entry.sha256_prefix}" in message
    assert "the file was removed" in message and not os.path.exists(cached)
    assert not os.path.exists(zoo.converted_path(NAME, cache))


def test_truncated_download_is_reported_and_not_kept(host, monkeypatch):
    _, entry, root, cache = host
    content = open(os.path.join(str(root), entry.path), "rb").read()

    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content[: len(content) // 3])  # then the connection drops

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(zoo.MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        with pytest.raises(OSError) as error:
            zoo.from_pretrained(NAME, cache_dir=cache)
    finally:
        server.shutdown()
        server.server_close()
    message = str(error.value)
    assert message.startswith(f"{NAME}: downloading http://127.0.0.1:") and "retrieval incomplete" in message
    assert "\n" not in message and os.listdir(os.path.join(cache, "keras_pspnet", "checkpoints")) == []


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown pretrained PSPNet 'pspnet_r50'; valid names: \[.*"
                                         r"'pspnet_r50-d8_4xb4-160k_ade20k-512x512'"):
        zoo.from_pretrained("pspnet_r50")


def test_registry_equals_mmsegmentation(monkeypatch):
    """Every entry against mmsegmentation 1.2.2 itself: its metafiles (file, hash, mIoU) and its configs resolved
    by mmengine (test scale and mode, corner alignment, strides and dilations), kept in tests/data."""
    with open(os.path.join(DATA, "mmseg_1.2.2_pspnet_zoo.json")) as f:
        source = json.load(f)
    monkeypatch.delenv(zoo.MIRROR_ENV, raising=False)
    assert len(zoo.ZOO) == len(source["configs"]) == len(source["metafile"]) == 16
    for name, entry in zoo.ZOO.items():
        published, config = source["metafile"][entry.path], source["configs"][name]
        # the metafile names the r50-d32 file "pspnet_r50b-d32..." (twice); its file, log and config are r50-d32
        assert published["metafile_name"] == name or "r50-d32" in name
        assert (entry.miou, entry.miou_ms) == (published["mIoU"], published["mIoU_ms_flip"])
        assert entry.url == zoo.BASE_URL + entry.path and re.fullmatch(r"[0-9a-f]{8}", entry.sha256_prefix)
        test_cfg = config["test_cfg"]
        assert entry.protocol == mmseg_protocol(config["test_scale"], test_cfg.get("crop_size"), test_cfg.get("stride"))
        assert entry.options.get("align_corners", False) == config["align_corners"]
        assert entry.options.get("output_stride", 8) == (2 if "mobilenet" in name else 4) * np.prod(config["strides"])
        if "mobilenet" in name:  # the dilated network our MobileNetV2 builds for output stride 8
            assert [d for _, d in stride_plan([s[3] for s in MOBILENET_V2_STAGES], 8, 2)] == config["dilations"]
        else:
            assert entry.options.get("dilations", (1, 1, 2, 4)) == tuple(config["dilations"])
        assert ("V1c" in entry.backbone) == (config["backbone_type"] == "ResNetV1c")
        assert len(CLASS_SETS[entry.dataset].class_names) == config["num_classes"]


def test_commands_list_and_get(host, monkeypatch, capsys, tmp_path):
    _, _, root, cache = host
    assert main(["pretrained", "list", "--cache-dir", cache]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("pspnet_r101-d8_4xb4-160k_ade20k-512x512"))
    assert row.split()[1:5] == ["ade20k", "R-101", "V1c", "D8"] and "44.39" in row and "45.35" in row
    assert "mmseg: keep-ratio resize to 2048x512, whole image" in row and row.rstrip().endswith("no")
    out = str(tmp_path / "zoo.keras")
    with serve(root) as url:
        monkeypatch.setenv(zoo.MIRROR_ENV, url)
        assert main(["pretrained", "get", NAME, "--out", out, "--cache-dir", cache]) == 0
    assert f"{NAME} -> {out}: " in capsys.readouterr().out and os.path.exists(out)
    assert main(["pretrained", "get", NAME, "--out", out, "--cache-dir", cache]) == 2
    assert "already exists (use --force" in capsys.readouterr().err
    assert main(["pretrained", "list", "--cache-dir", cache]) == 0
    assert next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME)).endswith("yes")
    assert main(["pretrained", "get", "nope"]) == 2
    assert "Unknown pretrained PSPNet 'nope'" in capsys.readouterr().err


def test_published_miou_is_quoted_only_for_its_protocol():
    from keras_pspnet.cli import _published
    from keras_pspnet.protocol import MULTI_SCALES

    own = TestProtocol("mmseg", (2048, 512))
    metadata = {"protocol": own.to_dict(), "source": {"name": "m", "published_miou": 42.48,
                                                       "published_miou_ms_flip": 43.44}}
    assert _published(metadata, own) == "published mIoU 42.48 (m, single scale)"
    ms_flip = TestProtocol("mmseg", (2048, 512), scales=MULTI_SCALES, flip=True)
    assert _published(metadata, ms_flip) == "published mIoU 43.44 (m, multi-scale + flip)"
    assert "was measured with mmseg: keep-ratio resize to 2048x512, whole image, not this protocol" in \
        _published(metadata, TestProtocol())
    assert _published({}, own) is None


def test_from_pretrained_needs_no_torch(host, tmp_path, rng):
    """The user's path without torch: a process where `import torch` fails downloads, converts and predicts."""
    reference, entry, root, _ = host
    pixels = rng.uniform(0, 255, (1, 49, 57, 3)).astype("float32")
    np.save(tmp_path / "pixels.npy", pixels)
    fields = {"name": entry.name, "dataset": entry.dataset, "backbone": entry.backbone, "path": entry.path,
              "miou": entry.miou, "miou_ms": entry.miou_ms}
    script = BLOCK_TORCH + (
        "import json, numpy as np\n"
        "from keras_pspnet import zoo\n"
        "from keras_pspnet.protocol import TestProtocol\n"
        f"fields = json.loads({json.dumps(json.dumps(fields))})\n"
        f"zoo.ZOO[fields['name']] = zoo.PretrainedPSPNet(**fields, protocol=TestProtocol('mmseg', (96, 64)))\n"
        "model = zoo.from_pretrained(fields['name'])\n"
        f"pixels = np.load({str(tmp_path / 'pixels.npy')!r})\n"
        f"np.save({str(tmp_path / 'logits.npy')!r}, model.predict(pixels, verbose=0))\n"
        "assert 'torch' not in sys.modules\n")
    with serve(root) as url:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", zoo.MIRROR_ENV: url,
               "KERAS_HOME": str(tmp_path / "home")}
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert relative_error(np.load(tmp_path / "logits.npy"), reference_logits(reference, pixels)[0]) < 1e-4
    assert os.path.exists(os.path.join(tmp_path, "home", "keras_pspnet", "checkpoints", entry.file_name))


def test_plain_http_mirrors_are_refused_unless_on_this_machine(host, monkeypatch):
    _, entry, _, cache = host
    monkeypatch.setenv(zoo.MIRROR_ENV, "http://mirror.example.com/openmmlab/")
    with pytest.raises(ValueError, match=r"KERAS_PSPNET_MIRROR=http://mirror.example.com/openmmlab/: only https:// "
                                         "mirrors or local folders are used"):
        zoo.from_pretrained(NAME, cache_dir=cache)
    assert not os.path.exists(os.path.join(cache, "keras_pspnet", "checkpoints", entry.file_name))
    monkeypatch.setenv(zoo.MIRROR_ENV, "https://mirror.example.com/openmmlab")
    assert entry.url == "https://mirror.example.com/openmmlab/" + entry.path
    monkeypatch.setenv(zoo.MIRROR_ENV, "http://localhost:8000")
    assert entry.url.startswith("http://localhost:8000/pspnet/")


def test_partial_files_of_killed_processes_are_cleared(host, monkeypatch):
    """A download or conversion killed midway leaves its .partial- file; the next run removes those of dead
    processes of this host and any untouched for a day, never a live writer's."""
    import socket
    import time

    _, _, root, cache = host
    folder = os.path.join(cache, "keras_pspnet", "checkpoints")
    os.makedirs(folder)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, this_host = int(finished.stdout), socket.gethostname().replace("-", "_")[:32]
    names = {"dead": f".a.partial-{this_host}-{dead_pid}-0123abcd.pth",
             "live": f".b.partial-{this_host}-{os.getpid()}-0123abcd.pth",
             "old": ".c.partial-otherhost-1-0123abcd.pth", "recent": ".d.partial-otherhost-1-4567abcd.pth"}
    for name in names.values():
        open(os.path.join(folder, name), "wb").close()
    day_ago = time.time() - 25 * 3600
    os.utime(os.path.join(folder, names["old"]), (day_ago, day_ago))
    monkeypatch.setenv(zoo.MIRROR_ENV, str(root))
    zoo.from_pretrained(NAME, cache_dir=cache)
    assert not [n for n in os.listdir(folder) if n in (names["dead"], names["old"])]
    assert {names["live"], names["recent"]} <= set(os.listdir(folder))


def test_cached_files_are_checked_against_their_recorded_digests(host, monkeypatch, rng, capsys):
    reference, entry, root, cache = host
    monkeypatch.setenv(zoo.MIRROR_ENV, str(root))
    zoo.from_pretrained(NAME, cache_dir=cache)
    converted = zoo.converted_path(NAME, cache)
    with open(converted, "r+b") as f:  # one flipped byte in the cached model
        f.seek(os.path.getsize(converted) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    capsys.readouterr()
    model = zoo.from_pretrained(NAME, cache_dir=cache)  # noticed, converted again from the verified checkpoint
    assert "does not match the SHA-256 recorded when it was written" in capsys.readouterr().err
    pixels = rng.uniform(0, 255, (1, 33, 41, 3)).astype("float32")
    assert relative_error(model.predict(pixels, verbose=0), reference_logits(reference, pixels)[0]) < 1e-4
    # a registry entry with the full digest: a file with the right 8-digit prefix but another digest is refused
    forged = dataclasses.replace(entry, sha256=entry.sha256_prefix + "0" * 56)
    monkeypatch.setitem(zoo.ZOO, NAME, forged)
    os.remove(converted)
    with pytest.raises(ValueError, match=r"does not match the full SHA-256 " + entry.sha256_prefix + "00000000"):
        zoo.from_pretrained(NAME, cache_dir=cache)
    monkeypatch.setitem(zoo.ZOO, NAME, dataclasses.replace(entry, sha256=sha256(os.path.join(str(root), entry.path))))
    assert zoo.from_pretrained(NAME, cache_dir=cache).output.shape[-1] == 19  # downloaded anew, full digest checked
