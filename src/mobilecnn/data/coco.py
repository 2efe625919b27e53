"""COCO detection files: which layout a folder is, its instances JSON read and checked, one sample per image.

Two layouts are read (docs/detection.md):

* **COCO 2017**: ``ROOT/annotations/instances_{train,val}2017.json`` with the images in ``ROOT/train2017/`` and
  ``ROOT/val2017/`` (2014's names are found too);
* **plain** (what ``mobilecnn data scenes --task detection`` writes): ``ROOT/annotations/instances_{train,val}.json``
  with ``ROOT/train/`` and ``ROOT/val/``.

Class labels are 1..K, the categories in ascending id order (0 = background); :attr:`CocoSplit.category_ids`
maps a label back to its category id (COCO results name category ids). Crowd annotations (``iscrowd: 1``) are
not training targets: COCO's evaluation reads them from the ground-truth file itself. Every problem is a
one-line :class:`DataError` naming the file and the entry (``images[3] (id 17)``), except the box repairs of
:data:`BOX_COUNTS`, which are counted. Every image file's header is checked (PIL's ``Image.open``, nothing
decoded): it must exist, be an image and have the JSON's ``width`` x ``height``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError
from ..validators import is_int, is_number
from .folder import _reason, _shown
from .images import RASTER_FORMATS

__all__ = ["CocoSample", "CocoSplit", "find_coco", "read_coco", "read_json", "check_images", "exif_undo",
           "MAX_JSON_BYTES", "MIN_IMAGE_SIDE", "BOX_COUNTS", "SPLITS", "max_pixels"]

SPLITS = ("train", "val")
#: Suffixes of the split names tried in turn: ``instances_train2017.json`` + ``train2017/``, ..., ``train/``.
_YEARS = ("2017", "2014", "")
#: The largest instances file read: COCO 2017's train file is 448 MB; this refuses endless input (/dev/zero).
MAX_JSON_BYTES = 2 << 30
#: Images with a side below this are refused: a 1x1 file is a failed download, not a photograph.
MIN_IMAGE_SIDE = 8
#: What happens to the boxes that are not used as given, counted per split.
BOX_COUNTS = ("crowd", "degenerate", "clipped", "outside")
_EXIF_ORIENTATION = 0x0112
#: PIL's transpose that undoes each EXIF orientation's rotation (open_image applies the rotation).
_UNDO = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_270}
_LAYOUTS = ("annotations/instances_train2017.json with train2017/ and annotations/instances_val2017.json with "
            "val2017/, or annotations/instances_train.json with train/ and annotations/instances_val.json with val/")


def max_pixels() -> int:
    """PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, read now: a caller may raise it)."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else 1 << 62


@dataclass(frozen=True)
class CocoSample:
    """One image: its file, COCO id, JSON size and its training boxes (pixels, clipped to the image)."""

    image: str
    image_id: int
    size: tuple[int, int]  # (width, height) from the JSON
    boxes: np.ndarray = field(repr=False)  # float32 (n, 4) x1, y1, x2, y2
    labels: np.ndarray = field(repr=False)  # int64 (n,) 1..K
    undo_exif: int = 1  # EXIF orientation whose rotation load undoes (1: none), see exif_undo


@dataclass
class CocoSplit:
    """One instances file: its samples in image-id order, categories and what happened to its boxes."""

    annotations: Path
    images_dir: Path
    samples: list[CocoSample]
    categories: list[tuple[int, str]]  # (id, name), ascending id: label k is categories[k - 1]
    counts: dict[str, int]

    @property
    def category_ids(self) -> list[int]:
        return [c for c, _ in self.categories]


def find_coco(root: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """``{split: (instances json, image folder)}`` of a COCO layout; :class:`DataError` when ``root`` is none."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"detection dataset folder {_shown(str(base))} does not exist; pass a COCO folder: "
                        + _LAYOUTS)
    for year in _YEARS:
        files = {s: (base / "annotations" / f"instances_{s}{year}.json", base / f"{s}{year}") for s in SPLITS}
        found = [s for s, (js, _) in files.items() if js.exists()]
        if not found:
            continue
        for split, (js, images) in files.items():
            if not js.exists():
                raise DataError(f"{_shown(str(js))} is missing beside {_shown(str(files[found[0]][0]))}; a COCO "
                                f"folder needs both instances files: {_LAYOUTS}")
            if not images.is_dir():
                raise DataError(f"image folder {_shown(str(images))} is missing; the images of {_shown(str(js))} "
                                f"go there: {_LAYOUTS}")
        return files
    raise DataError(f"{_shown(str(base))} is not a COCO detection dataset: expected {_LAYOUTS} (docs/detection.md)")


def read_json(path: Path, max_bytes: int | None = None) -> Any:
    """The JSON value in ``path``, read whole; refused when it is not a regular file or exceeds ``max_bytes``."""
    limit = MAX_JSON_BYTES if max_bytes is None else max_bytes
    shown = _shown(str(path))
    if not path.is_file():
        raise DataError(f"{shown} is not a regular file; it must be a COCO instances JSON file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)  # never more: a file growing without end stops here
    except OSError as e:
        raise DataError(f"cannot read {shown} ({e.strerror}); make it readable") from None
    if len(raw) > limit:
        raise DataError(f"{shown} is larger than {limit:,} bytes, the most read (COCO 2017's train file is "
                        "448 MB); is it an instances file?")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise DataError(f"{shown} is not UTF-8 text; it must be a COCO instances JSON file") from None
    except json.JSONDecodeError as e:
        cut = " (the file is truncated)" if e.pos >= len(e.doc.rstrip()) else ""
        raise DataError(f"{shown} is not valid JSON{cut}: {e.msg} at line {e.lineno} column {e.colno}; "
                        "it must be a COCO instances JSON file") from None
    except RecursionError:
        raise DataError(f"{shown} nests too deeply to be a COCO instances file") from None


def _entry(path: Path, key: str, i: int, item: Any) -> str:
    """How messages name an entry: ``FILE images[3] (id 17)``."""
    ident = item.get("id") if isinstance(item, dict) else None
    return f"{_shown(str(path))} {key}[{i}]" + (f" (id {ident!r})" if ident is not None else "")


_ONE = {"images": "image", "annotations": "annotation", "categories": "category"}


def _fields(path: Path, key: str, i: int, item: Any, need: dict[str, str]) -> None:
    """Refuse an entry that is not an object or lacks / mistypes a field of ``need`` (name -> int|str|box)."""
    if not isinstance(item, dict):
        raise DataError(f"{_entry(path, key, i, item)} is a JSON {type(item).__name__}, not an object")
    for name, kind in need.items():
        if name not in item:
            raise DataError(f"{_entry(path, key, i, item)} has no {name!r}; a COCO {_ONE[key]} needs "
                            + ", ".join(need))
        v = item[name]
        ok = is_int(v) if kind == "int" else isinstance(v, str) and bool(v) if kind == "str" else \
            isinstance(v, list) and len(v) == 4 and all(is_number(c) for c in v)
        if not ok:
            what = {"int": "an integer", "str": "a non-empty string",
                    "box": "[x, y, width, height] of 4 finite numbers"}[kind]
            raise DataError(f"{_entry(path, key, i, item)} has {name} {v!r}; it must be {what}")


def _unique(path: Path, key: str, items: list) -> dict[int, int]:
    """``{id: position}`` of the entries of ``key``; a repeated id is refused."""
    seen: dict[int, int] = {}
    for i, item in enumerate(items):
        j = seen.setdefault(item["id"], i)
        if j != i:
            raise DataError(f"{_entry(path, key, i, item)} repeats the id of {key}[{j}]; {_ONE[key]} ids must be "
                            "unique")
    return seen


def _categories(path: Path, doc: dict) -> list[tuple[int, str]]:
    cats = doc["categories"]
    for i, c in enumerate(cats):
        _fields(path, "categories", i, c, {"id": "int", "name": "str"})
    _unique(path, "categories", cats)
    if not cats:
        raise DataError(f"{_shown(str(path))} has no categories; list the object classes as "
                        "{\"id\": ..., \"name\": ...}")
    return sorted((c["id"], c["name"]) for c in cats)


def _image_path(path: Path, images_dir: Path, i: int, item: dict) -> str:
    name = item["file_name"]
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise DataError(f"{_entry(path, 'images', i, item)} has file_name {name!r}; it must be a path inside "
                        f"{_shown(str(images_dir))}")
    w, h = item["width"], item["height"]
    if min(w, h) < MIN_IMAGE_SIDE:
        raise DataError(f"{_entry(path, 'images', i, item)} ({_shown(name)}) is {w}x{h} px; images need both sides "
                        f">= {MIN_IMAGE_SIDE} px: remove the entry and its annotations")
    if w * h > max_pixels():
        raise DataError(f"{_entry(path, 'images', i, item)} ({_shown(name)}) is {w}x{h} px ({w * h:,} pixels), "
                        f"more than PIL's decompression-bomb limit of {max_pixels():,}: downscale it (and its boxes) "
                        "or raise PIL.Image.MAX_IMAGE_PIXELS")
    return str(images_dir / name)


def _clip(box: list, size: tuple[int, int]) -> tuple[str, tuple[float, float, float, float]]:
    """``(what happened, x1 y1 x2 y2)`` of a COCO ``[x, y, w, h]`` box clipped to the image."""
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0):
        return "degenerate", (0.0, 0.0, 0.0, 0.0)
    x1, y1 = min(max(x, 0.0), size[0]), min(max(y, 0.0), size[1])
    x2, y2 = min(max(x + w, 0.0), size[0]), min(max(y + h, 0.0), size[1])
    if not (x2 > x1 and y2 > y1):
        return "outside", (0.0, 0.0, 0.0, 0.0)
    return ("clipped" if (x1, y1, x2, y2) != (x, y, x + w, y + h) else "kept"), (x1, y1, x2, y2)


def _boxes(path: Path, doc: dict, images: dict[int, int], sizes: list[tuple[int, int]], labels: dict[int, int]
           ) -> tuple[list[list[tuple]], dict[str, int]]:
    """Per image (in ``images`` order), its ``(x1, y1, x2, y2, label)`` boxes; plus the counts of repairs."""
    anns = doc["annotations"]
    need = {"id": "int", "image_id": "int", "category_id": "int", "bbox": "box"}
    per_image: list[list[tuple]] = [[] for _ in sizes]
    counts = dict.fromkeys(BOX_COUNTS, 0)
    for i, a in enumerate(anns):
        _fields(path, "annotations", i, a, need)
        if a["image_id"] not in images:
            raise DataError(f"{_entry(path, 'annotations', i, a)} has image_id {a['image_id']}, which no entry of "
                            "'images' has")
        if a["category_id"] not in labels:
            raise DataError(f"{_entry(path, 'annotations', i, a)} has category_id {a['category_id']}, which no entry "
                            "of 'categories' has")
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise DataError(f"{_entry(path, 'annotations', i, a)} has iscrowd {crowd!r}; it must be 0 or 1")
        if crowd:
            counts["crowd"] += 1  # not a target: COCO's evaluation reads crowds from the ground-truth file
            continue
        k = images[a["image_id"]]
        what, box = _clip(a["bbox"], sizes[k])
        if what in counts:
            counts[what] += 1
        if what in ("kept", "clipped"):
            per_image[k].append((*box, labels[a["category_id"]]))
    _unique(path, "annotations", anns)
    return per_image, counts


def read_coco(annotations: Path, images_dir: Path, max_bytes: int | None = None) -> CocoSplit:
    """One instances file read and its JSON checked (the image files are not opened: :func:`check_images`)."""
    doc = read_json(annotations, max_bytes)
    shown = _shown(str(annotations))
    if not isinstance(doc, dict):
        raise DataError(f"{shown} holds a JSON {type(doc).__name__}; a COCO instances file is an object with "
                        "images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            got = "no" if key not in doc else f"a {type(doc[key]).__name__} as"
            raise DataError(f"{shown} has {got} {key!r}; a COCO instances file holds lists of images, annotations "
                            "and categories")
    categories = _categories(annotations, doc)
    entries = doc["images"]
    for i, item in enumerate(entries):
        _fields(annotations, "images", i, item, {"id": "int", "file_name": "str", "width": "int", "height": "int"})
    _unique(annotations, "images", entries)
    if not entries:
        raise DataError(f"{shown} lists no images; add the images of this split")
    order = sorted(range(len(entries)), key=lambda i: entries[i]["id"])  # id order, whatever the file's order
    paths = [_image_path(annotations, images_dir, i, entries[i]) for i in order]
    sizes = [(entries[i]["width"], entries[i]["height"]) for i in order]
    ids = [entries[i]["id"] for i in order]
    labels = {c: k + 1 for k, (c, _) in enumerate(categories)}
    per_image, counts = _boxes(annotations, doc, {d: k for k, d in enumerate(ids)}, sizes, labels)
    del doc
    samples = []
    for path, image_id, size, boxes in zip(paths, ids, sizes, per_image):
        arr = np.array(boxes, dtype=np.float64).reshape(-1, 5)
        samples.append(CocoSample(path, image_id, size, arr[:, :4].astype(np.float32), arr[:, 4].astype(np.int64)))
    return CocoSplit(annotations, images_dir, samples, categories, counts)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation ``open_image`` applies (1: none); only formats that carry EXIF in the header."""
    try:
        if im.format in ("JPEG", "MPO", "WEBP", "TIFF") or "exif" in im.info:
            o = im.getexif().get(_EXIF_ORIENTATION, 1)
            return o if o in _UNDO else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored by open_image too
        pass
    return 1


def exif_undo(orientation: int) -> Image.Transpose | None:
    """The transpose that turns ``open_image``'s upright pixels back into the stored ones (None: nothing)."""
    return _UNDO.get(orientation)


def _check_image(sample: CocoSample, where: str) -> CocoSample:
    """The sample, with the EXIF rotation to undo when the JSON's size is that of the stored pixels."""
    path, (w, h) = sample.image, sample.size
    if not os.path.isfile(path):
        raise DataError(f"{where} names {_shown(path)}, which is missing; add the file or remove the entry")
    try:
        with Image.open(path, formats=RASTER_FORMATS) as im:
            raw, orientation = im.size, _orientation(im)
    except Image.DecompressionBombError:
        raise DataError(f"image {_shown(path)} ({where}) has more than twice PIL's decompression-bomb limit of "
                        f"{max_pixels():,} pixels; downscale it or raise PIL.Image.MAX_IMAGE_PIXELS") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(f"image {_shown(path)} ({where}) cannot be read ({_reason(e, path)}); accepted: images PIL "
                        "decodes (JPEG, PNG, BMP, WebP, TIFF, GIF)") from None
    upright = raw[::-1] if orientation in (5, 6, 7, 8) else raw
    if raw == (w, h):  # the stored frame, as COCO's tools read it: undo open_image's rotation
        return sample if orientation == 1 else _with_undo(sample, orientation)
    if upright == (w, h):  # the JSON gives the rotated (displayed) size: the boxes are in that frame
        return sample
    shown = f"{raw[0]}x{raw[1]}" + (f" ({upright[0]}x{upright[1]} upright)" if upright != raw else "")
    raise DataError(f"image {_shown(path)} is {shown} but {where} says {w}x{h}; fix width/height in the JSON "
                    "(the boxes must be in the file's pixels)")


def _with_undo(sample: CocoSample, orientation: int) -> CocoSample:
    return CocoSample(sample.image, sample.image_id, sample.size, sample.boxes, sample.labels, orientation)


def check_images(samples: Sequence[CocoSample], annotations: Path, threads: int = 8) -> list[CocoSample]:
    """Every image file of ``samples`` (entries of ``annotations``) checked from its header: it exists, PIL reads
    it, it has the JSON's size. The first problem in id order is raised."""
    def check(s: CocoSample) -> CocoSample:
        return _check_image(s, f"the entry of image id {s.image_id} in {_shown(str(annotations))}")

    if len(samples) > 64 and threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(check, samples, chunksize=32))  # the first failure in order is re-raised
    return [check(s) for s in samples]
