"""What a training pipeline needs to know about a dataset."""

from __future__ import annotations

import dataclasses

from keras_pspnet.losses import IGNORE_LABEL

RECIPE_NAMES = ("semseg", "mmseg")
PAD_MODES = ("center", "bottom_right")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The training augmentation (keras_pspnet.data.augment): plain typed fields, so YAML values convert generically.

    The defaults are the authors' recipe ("semseg", hszhao/semseg); RECIPES holds it and mmsegmentation's; a run's
    config comes from `augment_config(dataset_defaults, yaml_augment_mapping)`.
    """

    recipe: str = "semseg"
    """Resize convention and pixel type: `semseg` = `cv2.resize(fx=fy=factor)` of a float32 image (RandScale);
    `mmseg` = `mmcv.imrescale` to `base_scale * ratio` of a uint8 image (RandomResize, `keep_ratio=True`)."""
    scale: tuple[float, float] = (0.5, 2.0)
    """`semseg`: the scale factor's range; `mmseg`: RandomResize's `ratio_range`."""
    base_scale: tuple[float, float] = (2048.0, 512.0)
    """`mmseg` only: RandomResize's `scale` (long, short edge)."""
    rotate: float = 10.0
    """Degrees: the angle is uniform in [-rotate, rotate]; 0 disables rotation."""
    rotate_prob: float = 0.5
    """Probability of a rotation (RandRotate's `p`)."""
    blur: bool = True
    """`cv2.GaussianBlur((5, 5), 0)` with probability 0.5 (RandomGaussianBlur)."""
    flip: bool = True
    """Horizontal flip with probability 0.5."""
    pad: str = "center"
    """`center`: pad to the crop, then crop (semseg's Crop); `bottom_right`: crop, then pad (mmseg)."""
    cat_max_ratio: float = 1.0
    """RandomCrop: re-draw a crop whose largest class covers at least this share (up to 10 times); 1.0: off."""
    photometric: bool = False
    """mmsegmentation's PhotoMetricDistortion (brightness, contrast, saturation, hue; each with p 0.5)."""

    @property
    def rotates(self) -> bool:
        """Whether any sample can be rotated."""
        return self.rotate > 0 and self.rotate_prob > 0

    def __post_init__(self):
        def fail(field, message):
            raise ValueError(f"augment.{field}: {message}, got {getattr(self, field)!r}")

        for field in ("scale", "base_scale"):
            try:
                low, high = (float(v) for v in getattr(self, field))
            except (TypeError, ValueError):
                fail(field, "expected two numbers")
            if min(low, high) <= 0 or (field == "scale" and low > high):
                fail(field, "expected two positive numbers" + (", the first <= the second" if field == "scale" else ""))
            object.__setattr__(self, field, (low, high))
        for field in ("rotate", "rotate_prob", "cat_max_ratio"):
            object.__setattr__(self, field, float(getattr(self, field)))
        if self.recipe not in RECIPE_NAMES:
            fail("recipe", f"expected one of {list(RECIPE_NAMES)}")
        if self.pad not in PAD_MODES:
            fail("pad", f"expected one of {list(PAD_MODES)}")
        if self.rotate < 0:
            fail("rotate", "expected degrees >= 0")
        if not 0 <= self.rotate_prob <= 1:
            fail("rotate_prob", "expected a probability in [0, 1]")
        if not 0 < self.cat_max_ratio <= 1:
            fail("cat_max_ratio", "expected a share in (0, 1]")


RECIPES = {
    # hszhao/semseg tool/train.py train_transform (util/transform.py): RandScale([0.5, 2.0]),
    # RandRotate([-10, 10], p=0.5), RandomGaussianBlur(), RandomHorizontalFlip(), Crop(crop_type='rand',
    # padding=mean). The same list for ADE20K, VOC2012 and Cityscapes (config/*/*.yaml: scale 0.5-2.0,
    # rotate -10..10 in all three).
    "semseg": AugmentConfig(),
    # mmsegmentation 1.2.2 configs/_base_/datasets/{ade20k,pascal_voc12,cityscapes}.py: RandomResize(scale,
    # ratio_range=(0.5, 2.0), keep_ratio=True), RandomCrop(crop_size, cat_max_ratio=0.75), RandomFlip(prob=0.5),
    # PhotoMetricDistortion(); SegDataPreProcessor(size=crop_size) pads bottom/right (0 after normalisation = the
    # mean colour; 255 in the mask). base_scale: (2048, 512) for ADE20K and VOC, (2048, 1024) for Cityscapes.
    "mmseg": AugmentConfig(recipe="mmseg", rotate=0.0, blur=False, pad="bottom_right", cat_max_ratio=0.75,
                           photometric=True),
}


def augment_config(defaults: AugmentConfig | None, overrides: dict | None = None) -> AugmentConfig:
    """A training run's augmentation: the YAML `augment:` mapping `overrides` applied to the dataset's `defaults`
    (DatasetInfo.augment; None: AugmentConfig()).

    `recipe: semseg|mmseg` in `overrides` starts from that recipe instead of `defaults` (keeping the dataset's
    base_scale, mmseg's per-dataset RandomResize scale); the other keys override single fields.
    """
    defaults = AugmentConfig() if defaults is None else defaults
    overrides = dict(overrides or {})
    fields = {field.name for field in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"augment: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    base = defaults
    if "recipe" in overrides:
        if overrides["recipe"] not in RECIPES:
            raise ValueError(f"augment.recipe: expected one of {list(RECIPES)}, got {overrides['recipe']!r}")
        base = dataclasses.replace(RECIPES[overrides["recipe"]], base_scale=defaults.base_scale)
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Class names and colours of a dataset, and its training augmentation defaults."""

    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    augment: AugmentConfig = AugmentConfig()  # the authors' recipe (RECIPES["semseg"])
    ignore_label: int = IGNORE_LABEL

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def generic_classes(num_classes: int, name: str = "classes") -> DatasetInfo:
    """Classes known only by their count: class_0, class_1, ... in the PASCAL VOC colours."""
    return DatasetInfo(name, tuple(f"class_{i}" for i in range(num_classes)), default_colors(num_classes))


def default_colors(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map (bit-interleaved), which gives any number of distinct colours."""
    colors = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)
