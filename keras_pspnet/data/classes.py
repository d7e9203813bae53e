"""Named class sets (names and palettes) and where a model's classes come from."""

from __future__ import annotations

import os

from keras_pspnet.data.context import CONTEXT_INFO
from keras_pspnet.data.folder import read_classes
from keras_pspnet.data.info import DatasetInfo, default_colors
from keras_pspnet.data.tfds_sources import TFDS_SOURCES

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
CLASS_SETS = {
    "context": CONTEXT_INFO,
    "ade20k": TFDS_SOURCES["scene_parse150"][1],
    "cityscapes": TFDS_SOURCES["cityscapes/semantic_segmentation"][1],
    "voc": DatasetInfo("voc", VOC_CLASSES, default_colors(len(VOC_CLASSES))),  # the PASCAL VOC colour map
    "pets": TFDS_SOURCES["oxford_iiit_pet"][1],
}
CLASSES_FILE = "classes.json"  # beside models of keras-pspnet 0.1 (newer models carry their classes)


def classes_metadata(info: DatasetInfo) -> list[dict]:
    """Class names and colours as a model's metadata (and exported JSON) hold them."""
    return [{"name": name, "color": list(color)} for name, color in zip(info.class_names, info.colors)]


def resolve_classes(spec: str | None, num_classes: int, model_path: str | None = None,
                    metadata: dict | None = None) -> DatasetInfo:
    """Class names and colours for a model predicting `num_classes` classes.

    `spec`: a name of CLASS_SETS or a classes.json file; or None: the model's own classes (its `metadata`),
    else the classes.json beside `model_path` (models of keras-pspnet 0.1), else generic names with the
    PASCAL VOC colour map.
    """
    if spec is None and (metadata or {}).get("classes"):
        classes = metadata["classes"]
        return DatasetInfo("model", tuple(c["name"] for c in classes), tuple(tuple(c["color"]) for c in classes))
    if spec is None and model_path:
        folder = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
        candidate = os.path.join(folder, CLASSES_FILE)
        spec = candidate if os.path.isfile(candidate) else None
    if spec is None:
        return DatasetInfo("classes", tuple(f"class_{i}" for i in range(num_classes)), default_colors(num_classes))
    if spec in CLASS_SETS:
        info = CLASS_SETS[spec]
    elif os.path.isfile(spec):
        names, colors = read_classes(os.path.dirname(os.path.abspath(spec)), os.path.basename(spec))
        info = DatasetInfo(os.path.splitext(os.path.basename(spec))[0], names, colors)
    else:
        raise ValueError(f"classes {spec!r}: neither a file nor one of {sorted(CLASS_SETS)}.")
    if info.num_classes != num_classes:
        raise ValueError(f"classes {spec!r}: {info.num_classes} classes, the model predicts {num_classes}.")
    return info
