import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from keras_pspnet.data import CONTEXT_INFO, AugmentConfig, load_source, train_pipeline
from keras_pspnet.data.context import context_scene
from keras_pspnet.data.info import default_colors

MEAN = (123.675, 116.28, 103.53)


def test_context_scenes_need_their_surroundings():
    for index in range(20):
        scene = {k: v.numpy() for k, v in context_scene(index, 192).items()}
        assert scene["image"].shape == (192, 192, 3) and scene["image"].dtype == np.uint8
        np.testing.assert_array_equal(scene["mask"], context_scene(index, 192)["mask"].numpy())  # deterministic
        classes = set(np.unique(scene["mask"]).tolist())
        assert classes in ({0, 2}, {1, 3})  # boats only on water, cars only on road
        rows, cols = np.nonzero(scene["mask"] >= 2)
        for extent in (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1):
            assert 0.70 * 192 - 1 <= extent <= 0.92 * 192 + 1


def test_boats_and_cars_look_the_same_inside():
    for index in range(10):
        boat = {k: v.numpy() for k, v in context_scene(index, surroundings="water").items()}
        car = {k: v.numpy() for k, v in context_scene(index, surroundings="road").items()}
        inside = boat["mask"] == 2
        np.testing.assert_array_equal(car["mask"] == 3, inside)
        np.testing.assert_array_equal(boat["image"][inside], car["image"][inside])  # pixel for pixel
        assert not np.array_equal(boat["image"][~inside], car["image"][~inside])


def test_train_pipeline_batches():
    source, info = load_source("context", "train", context_scenes=12, context_size=192)
    images, masks = next(iter(train_pipeline(source, info.name, (96, 128), 4, AugmentConfig(), MEAN)))
    assert images.shape == (4, 96, 128, 3) and images.dtype == tf.float32
    assert masks.shape == (4, 96, 128) and masks.dtype == tf.uint8


def mock_examples(examples):
    def as_dataset(self, split, **kwargs):
        return tf.data.Dataset.from_tensor_slices({k: tf.constant(np.stack([e[k] for e in examples]))
                                                   for k in examples[0]})
    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def test_ade20k_ignores_other_and_shifts_classes():
    annotation = np.zeros((4, 5, 3), np.uint8)
    annotation[..., 0] = [[0, 1, 2, 150, 7]] * 4
    annotation[..., 1] = 99  # instance channels must not leak into the class
    with mock_examples([{"image": np.zeros((4, 5, 3), np.uint8), "annotation": annotation}]):
        source, info = load_source("scene_parse150", "train")
        mask = next(iter(source))["mask"].numpy()
    assert info.num_classes == 150
    np.testing.assert_array_equal(mask[0], [255, 0, 1, 149, 6])


def test_cityscapes_maps_label_ids_to_train_ids():
    labels = np.array([[[0], [7], [8], [26], [33], [34]]], np.uint8).repeat(2, axis=0)
    with mock_examples([{"image_left": np.zeros((2, 6, 3), np.uint8), "segmentation_label": labels}]):
        source, info = load_source("cityscapes/semantic_segmentation", "validation")
        mask = next(iter(source))["mask"].numpy()
    assert info.num_classes == 19 and info.class_names[13] == "car"
    np.testing.assert_array_equal(mask[0], [255, 0, 1, 13, 18, 255])


def test_pet_trimap():
    trimap = np.array([[[1], [2], [3]]], np.uint8)
    with mock_examples([{"image": np.zeros((1, 3, 3), np.uint8), "segmentation_mask": trimap}]):
        source, _ = load_source("oxford_iiit_pet", "train")
        np.testing.assert_array_equal(next(iter(source))["mask"].numpy()[0], [1, 0, 255])


def test_missing_tfds_dataset_explains_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="scene_parse150: not prepared .* `tfds build scene_parse150"):
        load_source("scene_parse150", "train", data_dir=str(tmp_path))


def write_folder(root, split="train", count=3, size=(40, 30), palette=True, classes=None):
    images, masks = root / split / "images", root / split / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(images / f"img{i}.jpg")
        mask = rng.integers(0, 3, size[::-1]).astype(np.uint8)
        mask[0, 0] = 255
        if palette:  # PASCAL VOC style: the file holds indices, a viewer shows colours
            png = Image.fromarray(mask, mode="P")
            png.putpalette([c for color in default_colors(256) for c in color])
        else:
            png = Image.fromarray(mask, mode="L")
        png.save(masks / f"img{i}.png")
    if classes:
        (root / "classes.json").write_text(json.dumps({"classes": classes}))
    return root


@pytest.mark.parametrize("palette", [True, False])
def test_folder_masks_yield_indices(tmp_path, palette):
    root = write_folder(tmp_path, palette=palette,
                        classes=[{"name": "sky", "color": [0, 0, 255]}, {"name": "road", "color": [9, 9, 9]}, "car"])
    source, info = load_source(str(root), "train")
    example = next(iter(source))
    expected = np.asarray(Image.open(root / "train" / "masks" / "img0.png"))
    np.testing.assert_array_equal(example["mask"].numpy(), expected)
    assert example["image"].shape == (30, 40, 3)
    assert info.class_names == ("sky", "road", "car") and info.colors[0] == (0, 0, 255)
    assert info.colors[2] == default_colors(3)[2]


def test_folder_errors_name_the_file(tmp_path):
    root = write_folder(tmp_path, classes=["a", "b", "c"])
    masks = root / "train" / "masks"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "img1.png")
    with pytest.raises(ValueError, match="img1.png: mask is 10x10, its image .*img1.jpg is 40x30"):
        load_source(str(root), "train")
    Image.fromarray(np.full((30, 40), 7, np.uint8)).save(masks / "img1.png")
    with pytest.raises(ValueError, match=r"img1.png: mask values \[7\] are neither a class \(0-2\) nor 255"):
        load_source(str(root), "train")
    (masks / "img1.png").write_bytes(b"")
    with pytest.raises(ValueError, match="img1.png: empty file"):
        load_source(str(root), "train")
    (masks / "img1.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="img1.png: cannot read mask"):
        load_source(str(root), "train")
    os.remove(masks / "img1.png")
    with pytest.raises(FileNotFoundError, match="img1.png: missing"):
        load_source(str(root), "train")
    (root / "val" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="val/images: empty split"):
        load_source(str(root), "val")
    with pytest.raises(ValueError, match="Unknown dataset 'nowhere'"):
        load_source("nowhere", "train")


@pytest.mark.parametrize("classes,message", [
    ([1, 2, 3], "class name 1: expected a line of printable text"),  # failed after a whole evaluation
    (["sky", "road\x1b[31m", "car"], r"class name 'road\\x1b\[31m'"),
    ([{"name": "sky", "color": [0, 0, 256]}, "road", "car"], r"colour \[0, 0, 256\] of 'sky': expected 3 integers"),
    ({"classes": "sky"}, "a list of classes, not str"),
])
def test_classes_json_is_checked_before_anything_runs(tmp_path, classes, message):
    root = write_folder(tmp_path, classes=["a", "b", "c"])
    (root / "classes.json").write_text(json.dumps(classes if isinstance(classes, dict) else {"classes": classes}))
    with pytest.raises(ValueError, match=f"{root / 'classes.json'}: .*{message}"):
        load_source(str(root), "train")


def test_folder_16_bit_masks(tmp_path):
    """A 16-bit mask PNG is read when its values fit 8 bits; one over 255 is refused, never wrapped (300 -> 44)."""
    from keras_pspnet.data.folder import read_mask

    root = write_folder(tmp_path, classes=["a", "b", "c"])
    path = root / "train" / "masks" / "img0.png"
    mask = np.asarray(Image.open(path)).astype(np.uint16)
    Image.fromarray(mask).save(path)
    assert Image.open(path).mode == "I;16"
    source, _ = load_source(str(root), "train")
    np.testing.assert_array_equal(next(iter(source))["mask"].numpy(), mask)
    mask[3, 4] = 300
    Image.fromarray(mask).save(path)
    message = f"{path}: mask values up to 300 do not fit 8 bits; class indices are 0-254, 255 = ignore"
    with pytest.raises(ValueError) as error:
        load_source(str(root), "train")
    assert str(error.value) == message
    with pytest.raises(ValueError, match="up to 300 do not fit 8 bits"):
        read_mask(str(path).encode())  # as the pipeline's tf.numpy_function calls it


def test_tfds_image_mask_size_mismatch_is_reported():
    example = {"image": np.zeros((4, 5, 3), np.uint8), "annotation": np.zeros((6, 5, 3), np.uint8)}
    with mock_examples([example]):
        source, info = load_source("scene_parse150", "train")
        with pytest.raises(tf.errors.InvalidArgumentError, match="scene_parse150: image and mask of different sizes"):
            next(iter(train_pipeline(source, info.name, (8, 8), 1, AugmentConfig(), MEAN)))


def test_context_info():
    assert CONTEXT_INFO.class_names == ("water", "road", "boat", "car")


def test_jpegs_decode_as_opencv_and_pil_decode_them(tmp_path, rng):
    """The references read images with cv2.imread: our decoder gives their pixels (TF's default IDCT does not)."""
    cv2 = pytest.importorskip("cv2")
    from keras_pspnet.data.image import decode_rgb

    path = str(tmp_path / "photo.jpg")
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = tf.io.read_file(path)
    reference = cv2.imread(path)[..., ::-1]
    np.testing.assert_array_equal(decode_rgb(data).numpy(), reference)
    np.testing.assert_array_equal(decode_rgb(data).numpy(), np.asarray(Image.open(path)))
    assert (tf.io.decode_image(data, channels=3).numpy() != reference).any()  # why decode_rgb exists
    png = str(tmp_path / "photo.png")
    Image.fromarray(reference).save(png)
    np.testing.assert_array_equal(decode_rgb(tf.io.read_file(png)).numpy(), reference)


def test_folder_images_are_read_upright_by_their_exif_orientation(tmp_path):
    """A phone JPEG stored sideways (EXIF 6) is read as viewers show it: its mask, drawn on the upright photo,
    fits; a mask drawn on the stored pixels is refused with the reason."""
    from tests.images import sample_bytes, upright_pixels

    root = write_folder(tmp_path, classes=["a", "b", "c"])
    stored = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    data = sample_bytes("jpeg_exif6", stored)
    (root / "train" / "images" / "img0.jpg").write_bytes(data)
    mask_path = root / "train" / "masks" / "img0.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(mask_path)
    with pytest.raises(ValueError, match="img0.png: mask is 40x30, its image .*img0.jpg is upright "
                                         r"\(EXIF orientation 6\) 30x40"):
        load_source(str(root), "train")
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(mask_path)
    source, _ = load_source(str(root), "train")
    example = next(iter(source))
    np.testing.assert_array_equal(example["image"].numpy(), upright_pixels(data))
    assert example["mask"].shape == (40, 30)


@pytest.mark.parametrize("damage", ["truncated", "orientation 9", "entry count too large", "no EXIF"])
def test_broken_exif_leaves_the_image_as_stored(damage):
    """Whatever the EXIF block holds, the decoder never fails on it: a nonsense orientation means upright."""
    import io

    from keras_pspnet.data.image import decode_rgb, exif_orientation
    from tests.images import exif_block

    pixels = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    exif = exif_block(9 if damage == "orientation 9" else 6, True)
    if damage == "entry count too large":
        exif = exif[:14] + b"\xff\xff" + exif[16:]  # 65535 entries: reads run past the block into the JPEG data
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=b"" if damage == "no EXIF" else exif)
    data = buffer.getvalue()
    if damage == "truncated":
        data = data[: data.index(b"Exif") + 20]  # the header survives, the IFD does not
    orientation = int(exif_orientation(tf.constant(data)))
    assert orientation == (6 if damage == "entry count too large" else 1)  # the first entries are still read
    if damage != "truncated":
        assert decode_rgb(tf.constant(data)).shape == ((12, 8, 3) if orientation == 6 else (8, 12, 3))


def _jpeg_with_segments(pixels, *segments: bytes) -> bytes:
    """A baseline JPEG of `pixels` with `segments` (marker and payload, length added) right after its start."""
    import io
    import struct

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    inserted = b"".join(marker + struct.pack(">H", len(payload) + 2) + payload for marker, payload in segments)
    return data[:2] + inserted + data[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("layout", ["exif first", "after XMP and ICC", "fill bytes"])
def test_every_exif_orientation_gives_what_pil_shows(orientation, little_endian, layout):
    """All 8 orientations in both byte orders, wherever the EXIF segment sits, against PIL's exif_transpose."""
    import io

    from PIL import ImageOps

    from keras_pspnet.data.image import decode_rgb
    from tests.images import exif_block

    pixels = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = (b"\xff\xe1", exif_block(orientation, little_endian))
    xmp = (b"\xff\xe1", b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>")
    icc = (b"\xff\xe2", b"ICC_PROFILE\0\x01\x01" + bytes(300))
    segments = {"exif first": [exif], "after XMP and ICC": [xmp, icc, exif],
                "fill bytes": [xmp, (b"\xff\xff\xff\xe1", exif[1])]}[layout]
    data = _jpeg_with_segments(pixels, *segments)
    reference = _jpeg_with_segments(pixels, exif)  # PIL reads the plain layout; the pixels are the same
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(reference))).convert("RGB"))
    np.testing.assert_array_equal(decode_rgb(tf.constant(data)).numpy(), expected)
    assert expected.shape[:2] == ((10, 6) if orientation >= 5 else (6, 10))


def test_a_missing_split_names_the_splits_the_folder_has(tmp_path):
    """The ADE20K config's `val_split: test` on a folder of train/ and validation/: the error says what is there."""
    write_folder(tmp_path, "train")
    write_folder(tmp_path, "validation")
    with pytest.raises(FileNotFoundError, match=r"test/images: no such folder \(.* has the splits \['train', "
                                                r"'validation'\]; expected ROOT/<split>/images"):
        load_source(str(tmp_path), "test")
