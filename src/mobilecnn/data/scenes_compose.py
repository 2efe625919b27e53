"""How one Fashion-MNIST scene is drawn, and the file formats it is written in (see :mod:`.scenes`).

:func:`compose` paints the items of one scene onto a background crop and returns the image, which item owns
each pixel, and the VOC ignore band; :func:`voc_palette`, :func:`mask_to_rle` and the encoders turn them into
Pascal VOC and COCO files. Everything random comes from the ``Generator`` the caller passes, so a scene is a
pure function of its seed. docs/scenes.md explains each choice.
"""

from __future__ import annotations

import colorsys
import functools
import io
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError

__all__ = ["TEXTURES", "IGNORE_INDEX", "MASK_THRESHOLD", "IGNORE_ALPHA", "MIN_VISIBLE", "PLACEMENT_TRIES",
           "ITEM_SCALE", "MIN_ITEM_PX", "MIN_BACKGROUND_STD", "JPEG_QUALITY", "voc_palette", "mask_to_rle",
           "rle_to_mask", "load_textures", "compose", "item_box", "encode_jpeg", "encode_label_png"]

#: scikit-image sample images used as backgrounds (those that load without the network; see load_textures()).
TEXTURES = ("brick", "grass", "gravel", "moon", "camera", "coins", "coffee", "rocket", "astronaut", "chelsea",
            "immunohistochemistry")
#: The mask value that marks a pixel as not labelled (Pascal VOC's object borders; our items' soft edges).
IGNORE_INDEX = 255
#: An item pixel belongs to its mask when its intensity (0..1 after scaling; see _normalised) is above this.
MASK_THRESHOLD = 0.2
#: Unlabelled pixels where an item covers at least this much of the background (opacity) are marked 255.
IGNORE_ALPHA = 0.2
#: An earlier item keeps at least this fraction of its mask visible; a placement that would hide more is redrawn.
MIN_VISIBLE = 0.5
PLACEMENT_TRIES = 20
ITEM_SCALE = (0.15, 0.45)  # item side as a fraction of the scene side
MIN_ITEM_PX = 12
MIN_BACKGROUND_STD = 12.0  # a background crop flatter than this (grey levels, 0..255) is redrawn
JPEG_QUALITY = 95

# ------------------------------------------------------------------------------------------------
# formats


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (256 RGB triples, flattened): class 0 black, 1 (128,0,0)..., 255 (224,224,192)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a boolean ``H, W`` mask: column-major run lengths, starting with a 0-run."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """The boolean mask of an uncompressed RLE (the inverse of :func:`mask_to_rle`)."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    flat = np.repeat(values, rle["counts"])
    if flat.size != h * w:
        raise DataError(f"RLE covers {flat.size} pixels, its size {h}x{w} has {h * w}")
    return flat.reshape((h, w), order="F")


# ------------------------------------------------------------------------------------------------
# scene composition


@functools.lru_cache(maxsize=1)
def load_textures() -> tuple[tuple[str, np.ndarray], ...]:
    """The background images that load here (RGB uint8), in :data:`TEXTURES` order."""
    try:
        import skimage.data as skdata
    except ImportError:
        raise DataError("Fashion-MNIST scenes take their backgrounds from scikit-image's sample images: "
                        "pip install scikit-image") from None
    loaded = []
    for name in TEXTURES:
        try:
            img = np.asarray(getattr(skdata, name)())
        except Exception:  # an image that needs pooch/the network in this install: skip it
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = np.ascontiguousarray(img[:, :, :3].astype(np.uint8))
        img.setflags(write=False)
        loaded.append((name, img))
    if not loaded:
        raise DataError(f"none of scikit-image's sample images {', '.join(TEXTURES)} loads in this install; "
                        "reinstall scikit-image (its wheel ships them)")
    return tuple(loaded)


def _background(rng: np.random.Generator, size: int, textures) -> tuple[np.ndarray, dict[str, Any]]:
    """A random crop of a random texture, resized to ``size`` (float32 RGB 0..255), and what it was."""
    for _attempt in range(10):
        t = int(rng.integers(len(textures)))
        name, tex = textures[t]
        h, w = tex.shape[:2]
        side = max(16, int(round(rng.uniform(0.35, 1.0) * min(h, w))))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        flip = bool(rng.integers(2))
        crop = Image.fromarray(tex[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BILINEAR,
                                                                   reducing_gap=3.0)
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        bg = np.asarray(crop, dtype=np.float32)
        if float(bg.mean(axis=2).std()) >= MIN_BACKGROUND_STD:
            break
    return bg.copy(), {"texture": name, "box": [x, y, side, side], "flip": flip}


def _tint(rng: np.random.Generator) -> np.ndarray:
    """A plausible garment colour: any hue, moderate saturation, mid to bright value (RGB 0..255)."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.15, 0.85), rng.uniform(0.45, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255


def _normalised(item: np.ndarray) -> np.ndarray | None:
    """A 28x28 uint8 item as float intensity 0..1, stretched so its body is opaque: divided by the 90th
    percentile of its pixels above a tenth of its maximum (a faint shirt with one bright logo pixel would
    otherwise fall mostly below :data:`MASK_THRESHOLD`). ``None`` for a blank item."""
    peak = int(item.max())
    if peak <= 0:
        return None
    body = np.sort(item[item > 0.1 * peak])
    ref = float(body[int(0.9 * (body.size - 1))])  # the 90th percentile, lower value
    item = item.astype(np.float32)
    return np.clip(item / ref, 0.0, 1.0)


def compose(rng: np.random.Generator, size: int, max_items: int, images: np.ndarray, labels: np.ndarray,
             split: str, textures) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """One scene: (RGB uint8 image, owner map int16 (-1 = none), ignore band bool, items, background).

    Items are painted in order; a later one covers earlier ones. A candidate placement is redrawn (up to
    :data:`PLACEMENT_TRIES` times, then the item is left out) when it would leave an earlier item with less
    than :data:`MIN_VISIBLE` of its mask visible, so every item keeps most of its shape. The first item
    always fits, so every scene has at least one.
    """
    img, background = _background(rng, size, textures)
    owner = np.full((size, size), -1, dtype=np.int16)
    halo = np.zeros((size, size), dtype=bool)
    full_area: list[int] = []
    visible: list[int] = []
    items: list[dict[str, Any]] = []
    lo = max(MIN_ITEM_PX, int(round(ITEM_SCALE[0] * size)))
    hi = max(lo, int(round(ITEM_SCALE[1] * size)))
    wanted = int(rng.integers(1, max_items + 1))
    drawn = 0
    while drawn < wanted or (not items and drawn < wanted + PLACEMENT_TRIES):  # never a scene without items
        drawn += 1
        index = int(rng.integers(len(images)))
        side = int(rng.integers(lo, hi + 1))
        flip = bool(rng.integers(2))
        colour = _tint(rng)
        src = _normalised(images[index])
        if src is None:
            continue
        item = Image.fromarray(src).resize((side, side), Image.Resampling.BILINEAR)
        if flip:
            item = item.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        intensity = np.clip(np.asarray(item, dtype=np.float32), 0.0, 1.0)
        mask = intensity > MASK_THRESHOLD
        area = int(mask.sum())
        if area == 0:
            continue
        placed = None
        for _try in range(PLACEMENT_TRIES):
            x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            under = owner[y:y + side, x:x + side][mask]
            hidden = np.bincount(under[under >= 0], minlength=len(items)) if len(items) else np.zeros(0, int)
            if all(visible[k] - int(hidden[k]) >= MIN_VISIBLE * full_area[k] for k in range(len(items))):
                placed = (x, y, hidden)
                break
        if placed is None:
            continue
        x, y, hidden = placed
        for k in range(len(items)):
            visible[k] -= int(hidden[k])
        alpha = np.clip(2.0 * intensity, 0.0, 1.0)[:, :, None]
        shade = (0.4 + 0.6 * intensity)[:, :, None] * colour
        region = img[y:y + side, x:x + side]
        region *= 1.0 - alpha
        region += alpha * shade
        owner[y:y + side, x:x + side][mask] = len(items)
        halo[y:y + side, x:x + side] |= alpha[:, :, 0] >= IGNORE_ALPHA
        full_area.append(area)
        visible.append(area)
        items.append({"split": split, "index": index, "class": int(labels[index]), "name": "",
                      "place": [x, y, side, side], "flip": flip, "mask_area": area,
                      "tint": [int(round(c)) for c in colour.tolist()]})
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    ignore = halo & (owner < 0)
    return rgb, owner, ignore, items, background


def item_box(mask: np.ndarray) -> list[int]:
    """Tight [x, y, w, h] of a non-empty mask."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def encode_jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def encode_label_png(label: np.ndarray, palette: list[int]) -> bytes:
    im = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
