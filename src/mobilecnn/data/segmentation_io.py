"""Segmentation files: which layout a folder is, its (image, mask) pairs, and the checks of every file.

Two layouts are read (docs/segmentation.md):

* **Pascal VOC**: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` and
  ``ImageSets/Segmentation/{train,val}.txt`` (ids, one a line); class names from ``labels.txt`` beside them,
  else the 21 VOC classes. ``ROOT``, ``ROOT/VOC2012`` or ``ROOT/VOCdevkit/VOC2012`` may hold it.
* **folder pairs**: ``ROOT/{train,val}/images/<stem>.<image extension>`` with ``ROOT/{train,val}/masks/<stem>.png``;
  class names from ``ROOT/labels.txt`` (required: one name a line, background first).

A mask is an 8-bit index PNG (mode "P" palette or "L" grey; "1" bilevel reads as 0/1): pixel value = class,
255 = ignore. An RGB(A) mask is accepted when it is grey (R = G = B: the index saved as RGB) or when every
colour is an entry of the Pascal VOC colour map (the classes in use and 255's (224, 224, 192)); it is then
mapped to indices. Such masks are decoded in full when the dataset is built, so a wrong colour fails before
training. 16/32-bit, float, CMYK and alpha-grey masks are refused. Images of any mode
:func:`~mobilecnn.data.images.open_image` reads are accepted (CMYK is converted to RGB there).

:func:`check_pairs` reads only the headers of every file (PIL's ``Image.open``): format, mode and size, the
JPEG EXIF orientation included; :func:`read_mask` checks the values when a mask is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .folder import _reason, _shown
from .images import IMAGE_EXTENSIONS, RASTER_FORMATS, is_image_name
from .scenes_compose import IGNORE_INDEX, voc_palette

__all__ = ["VOC_CLASSES", "IGNORE_INDEX", "LAYOUTS", "SPLITS", "MAX_CLASSES", "SegSample", "SegSource",
           "find_layout", "read_labels", "scan_segmentation", "check_pairs", "read_mask"]

#: The 21 classes of Pascal VOC 2012 segmentation, background first (index = mask value).
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
LAYOUTS = ("voc", "folders")
SPLITS = ("train", "val")
#: Mask values 0..254 are classes, 255 is ignore.
MAX_CLASSES = 255
_INDEX_MODES = ("P", "L", "1")
_COLOUR_MODES = ("RGB", "RGBA")
_MASK_ACCEPTED = "8-bit index or palette PNGs (pixel value = class, 255 = ignore)"
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class SegSample:
    """One image and its mask. ``colour``: an RGB mask, mapped to indices on load (see the module docstring)."""

    image: str
    mask: str
    colour: bool = False
    size: tuple[int, int] = (0, 0)  # (width, height) as decoded (EXIF orientation applied)


@dataclass(frozen=True)
class SegSource:
    """A segmentation folder: its layout, class names (and the file they came from) and unchecked pairs."""

    root: Path
    layout: str
    class_names: tuple[str, ...]
    labels_from: str
    pairs: dict[str, list[tuple[str, str]]]


def find_layout(root: str | os.PathLike) -> tuple[Path, str]:
    """``(dataset folder, "voc" | "folders")`` of ``root``; :class:`DataError` when it is neither layout."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"segmentation dataset folder {_shown(str(root))} does not exist; pass a Pascal VOC folder "
                        "(JPEGImages/, SegmentationClass/, ImageSets/Segmentation/) or one with "
                        "train/images, train/masks, val/images, val/masks")
    for base in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (base / "ImageSets" / "Segmentation").is_dir() or (base / "SegmentationClass").is_dir():
            return base, "voc"
    if any((root / s / "images").is_dir() or (root / s / "masks").is_dir() for s in SPLITS):
        return root, "folders"
    raise DataError(f"{_shown(str(root))} is not a segmentation dataset: expected the Pascal VOC layout "
                    "(JPEGImages/, SegmentationClass/, ImageSets/Segmentation/train.txt and val.txt) or "
                    "train/images/ + train/masks/ and val/images/ + val/masks/ (docs/segmentation.md)")


def read_labels(path: Path) -> tuple[str, ...]:
    """Class names from a ``labels.txt``: one a line, background first; trailing blank lines are ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {_shown(str(path))} ({_reason(e, str(path))}); it must be UTF-8 text "
                        "with one class name a line, background first") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = tuple(line.strip() for line in lines)
    if any(not n for n in names):
        line = names.index("") + 1
        raise DataError(f"{_shown(str(path))} line {line} is blank; it must hold one class name a line "
                        "(line k = mask value k - 1), background first")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{_shown(str(path))} names {dup[0]!r} twice; class names must be unique, one a line")
    return names


def _class_names(root: Path, layout: str) -> tuple[tuple[str, ...], str]:
    labels = root / "labels.txt"
    if labels.is_file():
        names, where = read_labels(labels), str(labels)
    elif layout == "voc":
        names, where = VOC_CLASSES, "the 21 Pascal VOC classes (no labels.txt)"
    else:
        raise DataError(f"{_shown(str(labels))} is missing; a folder-pair dataset needs it: one class name a line, "
                        "background first (line k = mask value k - 1)")
    if len(names) < 2:
        raise DataError(f"{_shown(where)} names {len(names)} class{'' if len(names) == 1 else 'es'}"
                        f"{' (' + names[0] + ')' if names else ''}: segmentation needs background and at least "
                        "one object class, one name a line")
    if len(names) > MAX_CLASSES:
        raise DataError(f"{_shown(where)} names {len(names)} classes; at most {MAX_CLASSES} fit 8-bit masks "
                        "(values 0..254, 255 = ignore)")
    return names, where


def _stems(folder: Path, what: str) -> dict[str, str]:
    """``{stem: path}`` of the image files in ``folder``; two files with one stem are refused."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and is_image_name(e.name))
    except OSError as e:
        raise DataError(f"cannot read {what} folder {_shown(str(folder))} ({e.strerror}); make it readable") from None
    found: dict[str, str] = {}
    for name in names:
        stem = os.path.splitext(name)[0]
        if stem in found:
            raise DataError(f"{_shown(str(folder / name))} and {_shown(found[stem])} have the same name; each image "
                            "needs a unique name (its mask is <name>.png)")
        found[stem] = str(folder / name)
    return found


def _voc_pairs(root: Path, split: str) -> list[tuple[str, str]]:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    try:
        ids = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{_shown(str(listing))} is missing; a Pascal VOC folder lists its {split} image ids there, "
                        "one a line") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {_shown(str(listing))} ({_reason(e, str(listing))}); it must be UTF-8 text, "
                        "one image id a line") from None
    if not ids:
        raise DataError(f"{_shown(str(listing))} lists no images; list the {split} image ids one a line "
                        "(names in JPEGImages/ without .jpg)")
    bad = next((i for i in ids if "/" in i or "\\" in i or i.startswith(".")), None)
    if bad is not None:
        raise DataError(f"{_shown(str(listing))} lists {bad!r}; ids are file names in JPEGImages/ without the "
                        "extension (no folders)")
    images = _stems(root / "JPEGImages", "image")
    pairs = []
    for i in ids:
        if i not in images:
            raise DataError(f"image {_shown(str(root / 'JPEGImages' / (i + '.jpg')))} listed in {_shown(str(listing))}"
                            f" is missing; add it ({', '.join(IMAGE_EXTENSIONS)}) or remove the id from the list")
        pairs.append((images[i], str(root / "SegmentationClass" / f"{i}.png")))
    return pairs


def _folder_pairs(root: Path, split: str) -> list[tuple[str, str]]:
    images_dir, masks_dir = root / split / "images", root / split / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"{_shown(str(folder))} is missing; a folder-pair dataset needs train/images, "
                            "train/masks, val/images and val/masks")
    images = _stems(images_dir, "image")
    if not images:
        raise DataError(f"{_shown(str(images_dir))} holds no images; add images ({', '.join(IMAGE_EXTENSIONS)}) "
                        "with their masks in masks/<same name>.png")
    return [(path, str(masks_dir / f"{stem}.png")) for stem, path in images.items()]


def scan_segmentation(root: str | os.PathLike) -> SegSource:
    """Detect the layout of ``root`` and list its pairs of both splits (files not opened yet)."""
    base, layout = find_layout(root)
    names, where = _class_names(base, layout)
    read = _voc_pairs if layout == "voc" else _folder_pairs
    return SegSource(base, layout, names, where, {split: read(base, split) for split in SPLITS})


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` as :func:`open_image` decodes it (EXIF orientation 5-8 swaps the sides). Only JPEG,
    WebP and TIFF read their EXIF from the header; a PNG's eXIf chunk is counted when it precedes the pixels."""
    w, h = im.size
    try:
        if im.format in ("JPEG", "MPO", "WEBP", "TIFF") or "exif" in im.info:
            if im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                return h, w
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored by open_image too
        pass
    return w, h


def _header(path: str, what: str) -> tuple[str, str, tuple[int, int]]:
    """``(format, mode, oriented size)`` from the file's header only."""
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    try:
        with Image.open(path, formats=RASTER_FORMATS) as im:
            return str(im.format), im.mode, _oriented_size(im) if what == "image" else im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(f"{what} {_shown(path)} cannot be read ({_reason(e, path)}); accepted: "
                        + ("images PIL decodes (JPEG, PNG, BMP, WebP, TIFF, GIF)" if what == "image" else
                           _MASK_ACCEPTED)) from None


def _check_pair(pair: tuple[str, str], num_classes: int, labels_from: str) -> SegSample:
    image, mask = pair
    if not os.path.isfile(image):
        raise DataError(f"image {_shown(image)} is missing; add it or remove it from the split")
    if not os.path.isfile(mask):
        raise DataError(f"mask {_shown(mask)} is missing for image {_shown(image)}; every image needs a mask "
                        f"of its size: {_MASK_ACCEPTED}")
    _, _, size = _header(image, "image")
    fmt, mode, msize = _header(mask, "mask")
    if fmt != "PNG":
        raise DataError(f"mask {_shown(mask)} is a {fmt} file; masks must be lossless {_MASK_ACCEPTED}")
    if mode.startswith("I") or mode == "F":
        depth = "16-bit" if mode.startswith("I;16") else "32-bit"
        raise DataError(f"mask {_shown(mask)} is a {depth} image (mode {mode}); masks must be {_MASK_ACCEPTED}: "
                        "convert it to 8 bits")
    if mode not in _INDEX_MODES + _COLOUR_MODES:
        raise DataError(f"mask {_shown(mask)} has mode {mode}; masks must be {_MASK_ACCEPTED}")
    if msize != size:
        raise DataError(f"mask {_shown(mask)} is {msize[0]}x{msize[1]} but its image {_shown(image)} is "
                        f"{size[0]}x{size[1]}; a mask must have its image's size")
    sample = SegSample(image, mask, mode in _COLOUR_MODES, size)
    if sample.colour:
        read_mask(sample, num_classes, labels_from)  # colours are checked up front: decoded in full
    return sample


def check_pairs(pairs: Sequence[tuple[str, str]], num_classes: int, labels_from: str,
                threads: int = 8) -> list[SegSample]:
    """Check every pair's headers (RGB masks: their colours too); raise the first problem in list order."""
    def check(pair: tuple[str, str]) -> SegSample:
        return _check_pair(pair, num_classes, labels_from)

    if len(pairs) > 64 and threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(check, pairs, chunksize=32))  # the first failure in order is re-raised
    return [check(p) for p in pairs]


def _voc_colour_lut(num_classes: int) -> dict[int, int]:
    """``{0xRRGGBB: index}`` of the VOC colour map for the classes in use and 255."""
    pal = voc_palette()
    return {(pal[3 * i] << 16) | (pal[3 * i + 1] << 8) | pal[3 * i + 2]: i
            for i in [*range(num_classes), IGNORE_INDEX]}


def _from_colours(rgb: np.ndarray, path: str, num_classes: int) -> np.ndarray:
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])  # grey: the index saved as RGB
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(code, return_inverse=True)
    lut = _voc_colour_lut(num_classes)
    unknown = [c for c in colours.tolist() if c not in lut]
    if unknown:
        c = unknown[0]
        raise DataError(f"mask {_shown(path)} is a colour (RGB) image with colour ({c >> 16}, {(c >> 8) & 255}, "
                        f"{c & 255}), which is not a class of the Pascal VOC colour map; masks must be "
                        f"{_MASK_ACCEPTED}: convert it")
    return np.array([lut[c] for c in colours.tolist()], dtype=np.uint8)[inverse.reshape(code.shape)]


def read_mask(sample: SegSample, num_classes: int, labels_from: str) -> np.ndarray:
    """The mask of ``sample`` as uint8 ``(H, W)`` class indices (255 = ignore), its values checked."""
    path = sample.mask
    try:
        with Image.open(path, formats=("PNG",)) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im.convert("RGB") if mode in _COLOUR_MODES else im)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(f"mask {_shown(path)} cannot be decoded ({_reason(e, path)}); masks must be "
                        f"{_MASK_ACCEPTED}") from None
    if mode in _COLOUR_MODES:
        arr = _from_colours(arr, path, num_classes)
    elif mode == "1":
        arr = arr.astype(np.uint8)
    elif mode not in ("P", "L"):
        raise DataError(f"mask {_shown(path)} has mode {mode}; masks must be {_MASK_ACCEPTED}")
    bad = (arr >= num_classes) & (arr != IGNORE_INDEX)
    if bad.any():
        values = sorted(set(np.unique(arr[bad]).tolist()))
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise DataError(f"mask {_shown(path)} has label value(s) {shown} but {_shown(labels_from)} gives "
                        f"{num_classes} classes; accepted: 0..{num_classes - 1} and {IGNORE_INDEX} (ignore)")
    return arr
