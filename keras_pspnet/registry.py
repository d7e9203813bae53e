"""The published PSPNets: mmsegmentation's checkpoints, what they scored and how that was measured.

Plain data (no Keras): `pspnet pretrained list` and the CLI's argument checks read it without TensorFlow.
`keras_pspnet.zoo` downloads, verifies and converts them; `keras_pspnet.from_preset(name)` loads one.
"""

from __future__ import annotations

import dataclasses
import os

from keras_pspnet import __version__
from keras_pspnet.download import cache_folder, remote_url, sha256_prefix
from keras_pspnet.protocol import MMSEG_PROTOCOLS, TestProtocol, mmseg_protocol

BASE_URL = "https://download.openmmlab.com/mmsegmentation/v0.5/"
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
        return sha256_prefix(self.file_name)

    @property
    def architecture(self) -> dict:
        """`from_preset` arguments of its architecture (without weights): a preset name and this config's options."""
        if self.backbone.startswith("MobileNetV2"):
            return {"preset": "pspnet_mobilenet_v2_mmseg", **self.options}
        depth, variant = self.backbone.split()[:2]  # "R-50 V1c D8"
        return {"preset": f"pspnet_resnet{depth[2:]}_{variant.lower()}", **self.options}

    @property
    def file_name(self) -> str:
        return self.path.rsplit("/", 1)[1]

    @property
    def url(self) -> str:
        """The download URL; $KERAS_PSPNET_MIRROR (an https URL or a folder) replaces the base."""
        return remote_url(BASE_URL, self.path)


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


def converted_path(name: str, cache_dir: str | None = None) -> str:
    """Where the converted model of `name` is kept (it exists once `from_pretrained(name)` ran)."""
    entry = get_entry(name)
    return os.path.join(cache_folder(cache_dir), f"{entry.name}-{entry.sha256_prefix}-v{CONVERTER_VERSION}.keras")


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
