"""Named class sets (names and palettes) and where a model's classes come from.

Plain Python, no TensorFlow: models carry these names, and load on the JAX and PyTorch backends.
"""

from __future__ import annotations

import json
import os

from keras_pspnet.data.info import AugmentConfig, DatasetInfo, default_colors, generic_classes
from keras_pspnet.files import read_text, short_repr

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip
# The ADE20K colours of the CSAIL toolkit, as hszhao/semseg and mmsegmentation draw them.
ADE20K_PALETTE = ((120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61),
    (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230),
    (220, 220, 220), (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71),
    (255, 41, 10), (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8),
    (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0),
    (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0),
    (194, 255, 0), (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255),
    (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0),
    (255, 0, 20), (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163),
    (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0),
    (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255),
    (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255),
    (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255),
    (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255),
    (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),)  # fmt: skip
CITYSCAPES_CLASSES = (
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("building", (70, 70, 70)), ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)), ("pole", (153, 153, 153)), ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)), ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)), ("person", (220, 20, 60)), ("rider", (255, 0, 0)), ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)), ("bus", (0, 60, 100)), ("train", (0, 80, 100)), ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
)  # fmt: skip
ADE20K_INFO = DatasetInfo("scene_parse150", ADE20K_CLASSES, ADE20K_PALETTE)
# The authors' recipe, rotation and blur included: hszhao/semseg tool/train.py applies one transform list to
# every dataset and config/cityscapes/*.yaml sets rotate -10..10. base_scale: mmseg's RandomResize scale for
# Cityscapes (configs/_base_/datasets/cityscapes.py), used by `recipe: mmseg`.
CITYSCAPES_INFO = DatasetInfo("cityscapes", tuple(n for n, _ in CITYSCAPES_CLASSES),
                              tuple(c for _, c in CITYSCAPES_CLASSES), AugmentConfig(base_scale=(2048.0, 1024.0)))
PETS_INFO = DatasetInfo("oxford_iiit_pet", ("background", "pet"), ((0, 0, 0), (255, 200, 0)))
CONTEXT_INFO = DatasetInfo(
    name="context",
    class_names=("water", "road", "boat", "car"),
    colors=((40, 90, 200), (128, 128, 128), (230, 160, 40), (200, 40, 40)),
    # Mirror only: zooming in would crop away the surroundings that decide the class.
    augment=AugmentConfig(scale=(1.0, 1.0), rotate=0.0, blur=False, flip=True),
)

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
CLASS_SETS = {
    "context": CONTEXT_INFO,
    "ade20k": ADE20K_INFO,
    "cityscapes": CITYSCAPES_INFO,
    "voc": DatasetInfo("voc", VOC_CLASSES, default_colors(len(VOC_CLASSES))),  # the PASCAL VOC colour map
    "pets": PETS_INFO,
}
CLASSES_FILE = "classes.json"  # beside models of keras-pspnet 0.1 (newer models carry their classes)


MAX_CLASSES = 4096
MAX_NAME_CHARS = 200


def checked_classes(names, colors, where: str) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """(names, colours) as a dataset or model holds them, from a file's values, checked: a name is a short line of
    printable text (no escape codes that would recolour a terminal), a colour 3 integers 0-255 or None (then the
    PASCAL VOC colour of its index). A one-line ValueError naming `where` otherwise."""
    if not isinstance(names, (list, tuple)) or not 0 < len(names) <= MAX_CLASSES:
        raise ValueError(f"{where}: class names {short_repr(names)}: expected a list of 1-{MAX_CLASSES} names")
    for name in names:
        if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_NAME_CHARS or not name.isprintable():
            raise ValueError(f"{where}: class name {short_repr(name)}: expected a line of printable text of at most "
                             f"{MAX_NAME_CHARS} characters")
    fallback, checked = default_colors(len(names)), []
    for index, color in enumerate(colors):
        if color is None:
            checked.append(fallback[index])
            continue
        values = list(color) if isinstance(color, (list, tuple)) or hasattr(color, "tolist") else []
        values = [v.item() if hasattr(v, "item") else v for v in values]  # numpy integers
        if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                                       for v in values):
            raise ValueError(f"{where}: colour {short_repr(color)} of {names[index]!r}: expected 3 integers 0-255")
        checked.append(tuple(values))
    return tuple(name.strip() for name in names), tuple(checked)


def read_classes(root: str, filename: str = "classes.json",
                 ) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]] | None:
    """(names, colours) from ROOT/classes.json, None when there is none; colours default to the VOC map."""
    path = os.path.join(root, filename)
    if not os.path.exists(path):
        return None
    try:
        entries = json.loads(read_text(path, "classes"))
        entries = entries["classes"] if isinstance(entries, dict) else entries
        if not isinstance(entries, list):
            raise TypeError(f"a list of classes, not {type(entries).__name__}")
        names = [e.get("name") if isinstance(e, dict) else e for e in entries]  # checked below, with the colours
        colors = [e.get("color") if isinstance(e, dict) else None for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        if isinstance(error, ValueError) and str(error).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read class names and colours ({type(error).__name__}: "
                         f"{str(error)[:200]})") from None
    return checked_classes(names, colors, path)


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
        where = f"{model_path or 'the model'} (its metadata)"
        if not isinstance(classes, list) or not all(isinstance(c, dict) and "name" in c for c in classes):
            raise ValueError(f"{where}: classes {short_repr(classes)}: expected [{{'name', 'color'}}, ...]")
        info = DatasetInfo("model", *checked_classes([c["name"] for c in classes], [c.get("color") for c in classes],
                                                     where))
        if info.num_classes != num_classes:
            raise ValueError(f"{where}: {info.num_classes} class names, the model predicts {num_classes} classes")
        return info
    if spec is None and model_path:
        folder = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
        candidate = os.path.join(folder, CLASSES_FILE)
        spec = candidate if os.path.isfile(candidate) else None
    if spec is None:
        return generic_classes(num_classes)
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
