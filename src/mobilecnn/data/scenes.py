"""Fashion-MNIST scenes: the embedded default dataset of the dense tasks (segmentation, detection).

Each scene is a crop of a real photograph or texture from scikit-image's sample images (brick, grass,
gravel, coffee, the astronaut...) with 1 to ``max_items`` real Fashion-MNIST items composited on it at random
sizes, places and tints. Train scenes take their items from Fashion-MNIST's train split and val scenes from
t10k, so no item is in both. Every pixel's class is known exactly: an item's mask is its own pixels above
:data:`MASK_THRESHOLD`, class = Fashion-MNIST class + 1, background 0 (11 classes). The precedent is
Multi-MNIST (Sabour, Frosst & Hinton 2017, "Dynamic Routing Between Capsules"), which overlaps MNIST digits.

:func:`generate_scenes` writes the Pascal VOC layout (segmentation) or the COCO layout (detection) plus a
``scenes.json`` manifest naming every item's source (split, index into the Fashion-MNIST file, class). It
writes into a staging folder beside ``out`` and renames it at the end, so an interrupted run never leaves a
half-written dataset that looks complete. :func:`scenes_cache` is the dataset a segmenter or detector
trained without ``--data`` uses: generated once into the cache, reused afterwards. docs/scenes.md has
the choices and the measured speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import DataError, UsageError
from ..fields import cli, positive_int
from ..validators import check_choice, check_int, check_positive_int, refuse
from .fashion_mnist import FASHION_MNIST_CLASSES, read_fashion_mnist
from .scenes_compose import (
    IGNORE_INDEX,
    MASK_THRESHOLD,
    MIN_VISIBLE,
    TEXTURES,
    compose,
    encode_jpeg,
    encode_label_png,
    item_box,
    load_textures,
    mask_to_rle,
    rle_to_mask,
    voc_palette,
)

__all__ = ["ScenesConfig", "generate_scenes", "scenes_cache", "scenes_home", "SCENE_TASKS", "SCENE_CLASSES",
           "SCENES_VERSION", "TEXTURES", "IGNORE_INDEX", "MASK_THRESHOLD", "MIN_VISIBLE", "HOME_ENV",
           "COMPLETE_MARKER", "MANIFEST", "voc_palette", "mask_to_rle", "rle_to_mask"]

SCENE_TASKS = ("segmentation", "detection")
#: Class names, background first (index = label value in the masks; COCO category id for 1..10).
SCENE_CLASSES = ["background", *FASHION_MNIST_CLASSES]
#: Bumped whenever the same config would give different scenes; a cached dataset of another version is remade.
SCENES_VERSION = 1
SIZE_RANGE = (64, 1024)
MAX_COUNT = 1_000_000
MAX_ITEMS = 12
HOME_ENV = "MOBILECNN_HOME"
COMPLETE_MARKER = "COMPLETE"
MANIFEST = "scenes.json"
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.scenes$")


@dataclass(frozen=True)
class ScenesConfig:
    """A Fashion-MNIST scenes dataset: what :func:`generate_scenes` writes (``mobilecnn data scenes``)."""

    task: str = field(metadata=cli("dataset layout: segmentation (Pascal VOC) or detection (COCO)",
                                   choices=list(SCENE_TASKS), required=True))
    out: str = field(metadata=cli("folder to create (refused when it exists and is not empty)", required=True))
    train_count: int = field(default=2000, metadata=cli("train scenes (items from Fashion-MNIST train)",
                                                        type=positive_int))
    val_count: int = field(default=500, metadata=cli("val scenes (items from Fashion-MNIST t10k)", type=positive_int))
    size: int = field(default=128, metadata=cli(f"scene side in pixels, {SIZE_RANGE[0]} to {SIZE_RANGE[1]}",
                                                type=positive_int))
    seed: int = field(default=0, metadata=cli("random seed: the same seed gives the same dataset"))
    max_items: int = field(default=6, metadata=cli(f"most items per scene (1 to {MAX_ITEMS})", type=positive_int))
    data_dir: str | None = field(default=None, metadata=cli(
        "where Fashion-MNIST lives (default: $MOBILECNN_DATA_DIR or /usr/share/datasets/fashion-mnist)"))

    def validate(self) -> ScenesConfig:
        """This config, when every field is accepted; else :class:`UsageError` naming the option."""
        check_choice(self.task, "--task", SCENE_TASKS)
        if not isinstance(self.out, (str, os.PathLike)) or not str(self.out).strip():
            raise refuse("--out", self.out, "a folder path")
        check_positive_int(self.train_count, "--train-count", maximum=MAX_COUNT)
        check_positive_int(self.val_count, "--val-count", maximum=MAX_COUNT)
        check_int(self.size, "--size", minimum=SIZE_RANGE[0], maximum=SIZE_RANGE[1])
        check_int(self.seed, "--seed", minimum=0, maximum=2**63 - 1)
        check_int(self.max_items, "--max-items", minimum=1, maximum=MAX_ITEMS)
        if self.data_dir is not None and (not isinstance(self.data_dir, (str, os.PathLike)) or not str(self.data_dir)):
            raise refuse("--data-dir", self.data_dir, "a folder path")
        return self


# ------------------------------------------------------------------------------------------------
# writing


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class _JsonArray:
    """A JSON array streamed to a file one element at a time (memory stays bounded)."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh, self.count = fh, 0
        fh.write("[")

    def add(self, obj: Any) -> None:
        self.fh.write(("," if self.count else "") + "\n" + _dumps(obj))
        self.count += 1

    def close(self) -> None:
        self.fh.write("\n]")


def _scene_rng(seed: int, split: str, i: int) -> np.random.Generator:
    """Each scene has its own stream, so scene ``i`` does not depend on how many scenes came before."""
    return np.random.default_rng(np.random.SeedSequence([seed, 0 if split == "train" else 1, i]))


def _write_split(config: ScenesConfig, root: Path, split: str, count: int, backgrounds, manifest: _JsonArray
                 ) -> dict[str, Any]:
    fm_split = "train" if split == "train" else "val"  # read_fashion_mnist's "val" is the t10k files
    images_t, labels_t = read_fashion_mnist(fm_split, config.data_dir)
    images = images_t.numpy()[:, 0]
    labels = labels_t.numpy()
    source = "train" if split == "train" else "t10k"
    palette = voc_palette()
    seg = config.task == "segmentation"
    stats = {"scenes": count, "items": 0, **({"ignored_pixels": 0} if seg else {})}
    if seg:
        (root / "JPEGImages").mkdir(exist_ok=True)
        (root / "SegmentationClass").mkdir(exist_ok=True)
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        ids_fh = open(root / "ImageSets" / "Segmentation" / f"{split}.txt", "w", encoding="utf-8")
    else:
        (root / split).mkdir(exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        img_part = open(root / "annotations" / f".images_{split}.part", "w", encoding="utf-8")
        ann_part = open(root / "annotations" / f".annotations_{split}.part", "w", encoding="utf-8")
        img_arr, ann_arr = _JsonArray(img_part), _JsonArray(ann_part)
    ann_id = 0
    try:
        for i in range(count):
            rng = _scene_rng(config.seed, split, i)
            rgb, owner, ignore, items, background = compose(rng, config.size, config.max_items, images, labels,
                                                            source, backgrounds)
            stats["items"] += len(items)
            for it in items:
                it["name"] = FASHION_MNIST_CLASSES[it["class"]]
            if seg:
                scene_id = f"{split}_{i:06d}"
                file = f"JPEGImages/{scene_id}.jpg"
                lut = np.array([0] + [it["class"] + 1 for it in items], dtype=np.uint8)
                label = lut[owner.astype(np.int64) + 1]
                label[ignore] = IGNORE_INDEX
                stats["ignored_pixels"] += int(ignore.sum())
                (root / file).write_bytes(encode_jpeg(rgb))
                (root / "SegmentationClass" / f"{scene_id}.png").write_bytes(encode_label_png(label, palette))
                ids_fh.write(scene_id + "\n")
                for k in range(len(items)):
                    m = owner == k
                    items[k]["bbox"], items[k]["area"] = item_box(m), int(m.sum())
            else:
                image_id = i + 1
                scene_id = f"{image_id:06d}"
                file = f"{split}/{scene_id}.jpg"
                (root / file).write_bytes(encode_jpeg(rgb))
                img_arr.add({"id": image_id, "file_name": f"{scene_id}.jpg", "width": config.size,
                             "height": config.size})
                for k in range(len(items)):
                    m = owner == k
                    ann_id += 1
                    bbox, area = item_box(m), int(m.sum())
                    items[k]["bbox"], items[k]["area"], items[k]["annotation_id"] = bbox, area, ann_id
                    ann_arr.add({"id": ann_id, "image_id": image_id, "category_id": items[k]["class"] + 1,
                                 "bbox": bbox, "area": area, "iscrowd": 0, "segmentation": mask_to_rle(m)})
            manifest.add({"id": scene_id, "file": file, "background": background, "items": items})
    finally:
        if seg:
            ids_fh.close()
        else:
            img_arr.close()
            ann_arr.close()
            img_part.close()
            ann_part.close()
    if not seg:
        _assemble_coco(root, split, config)
    return stats


def _assemble_coco(root: Path, split: str, config: ScenesConfig) -> None:
    """``annotations/instances_<split>.json`` from the streamed image and annotation arrays."""
    ann_dir = root / "annotations"
    parts = [ann_dir / f".images_{split}.part", ann_dir / f".annotations_{split}.part"]
    header = {
        "info": {"description": f"Fashion-MNIST scenes ({split}): Fashion-MNIST items composited on scikit-image "
                               "sample images by mobilecnn", "version": str(SCENES_VERSION),
                 "seed": config.seed, "size": config.size},
        "licenses": [],
        "categories": [{"id": c + 1, "name": name, "supercategory": "fashion"}
                       for c, name in enumerate(FASHION_MNIST_CLASSES)],
    }
    with open(ann_dir / f"instances_{split}.json", "w", encoding="utf-8") as out:
        out.write(_dumps(header)[:-1] + ',\n"images":')
        with open(parts[0], encoding="utf-8") as fh:
            shutil.copyfileobj(fh, out)
        out.write(',\n"annotations":')
        with open(parts[1], encoding="utf-8") as fh:
            shutil.copyfileobj(fh, out)
        out.write("}\n")
    for p in parts:
        p.unlink()


def _flush_to_disk(root: Path) -> None:
    """Flush the staged dataset to disk before it is renamed into place: one ``syncfs`` of its filesystem
    (an ``fsync`` per file took 17 s for the 5,000 files of the default dataset), else ``sync``."""
    try:
        import ctypes

        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _remove_stale_staging(parent: Path, name: str) -> None:
    """Remove ``.<name>.<pid>.scenes`` folders left by runs whose process is gone (killed mid-way)."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        m = _STAGING.match(entry.name)
        if not m or m["name"] != name or int(m["pid"]) == os.getpid() or not entry.is_dir():
            continue
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass  # alive under another user, or unknowable: leave it


def _refuse_existing(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is not a folder" if not out.is_dir() else "is not empty"
        raise UsageError(f"--out {out} {what}: name a new or empty folder (scenes are never written over data)")


def generate_scenes(config: ScenesConfig) -> dict[str, Any]:
    """Write the dataset ``config`` describes into ``config.out``; returns a summary (counts, paths, classes).

    Refuses (:class:`UsageError`) an ``out`` that exists and is not an empty folder. Everything is written into
    ``.<name>.<pid>.scenes`` beside ``out`` and renamed to ``out`` at the end (the marker file
    :data:`COMPLETE_MARKER` written last), so ``out`` is either absent or complete. Scenes are streamed to
    disk one at a time; memory holds the Fashion-MNIST split and the background images only.
    """
    config.validate()
    out = Path(config.out).expanduser().absolute()
    _refuse_existing(out)
    backgrounds = load_textures()
    read_fashion_mnist("train", config.data_dir)  # a missing dataset fails before anything is written
    read_fashion_mnist("val", config.data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out.parent, out.name)
    staging = out.parent / f".{out.name}.{os.getpid()}.scenes"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        stats: dict[str, Any] = {}
        with open(staging / MANIFEST, "w", encoding="utf-8") as mf:
            head = {"format": "mobilecnn-scenes", "version": SCENES_VERSION, "config": _identity(config),
                    "classes": SCENE_CLASSES, "ignore_index": IGNORE_INDEX,
                    "backgrounds": [name for name, _ in backgrounds], "mask_threshold": MASK_THRESHOLD,
                    "sources": {"train": "Fashion-MNIST train", "val": "Fashion-MNIST t10k"}}
            mf.write(_dumps(head)[:-1] + ',\n"scenes":{"train":')
            for split, count in (("train", config.train_count), ("val", config.val_count)):
                if split == "val":
                    mf.write(',\n"val":')
                arr = _JsonArray(mf)
                stats[split] = _write_split(config, staging, split, count, backgrounds, arr)
                arr.close()
            mf.write("}}\n")
        if config.task == "segmentation":
            (staging / "labels.txt").write_text("".join(n + "\n" for n in SCENE_CLASSES), encoding="utf-8")
        _flush_to_disk(staging)
        with open(staging / COMPLETE_MARKER, "w", encoding="utf-8") as fh:
            fh.write(_dumps({"version": SCENES_VERSION, "config": _identity(config)}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        _refuse_existing(out)  # another process may have filled it meanwhile
        try:
            os.replace(staging, out)  # onto a missing or empty folder
        except OSError as e:
            raise UsageError(f"--out {out} could not be created ({e.strerror}); name a new or empty folder") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return _summary(config, out, stats)


def _identity(config: ScenesConfig) -> dict[str, Any]:
    """What determines the scenes (not where they are written, nor where Fashion-MNIST was read from)."""
    d = asdict(config)
    d.pop("out")
    d.pop("data_dir")
    return d


def _summary(config: ScenesConfig, out: Path, stats: dict[str, Any]) -> dict[str, Any]:
    if config.task == "segmentation":
        paths = {"images": str(out / "JPEGImages"), "masks": str(out / "SegmentationClass"),
                 "train": str(out / "ImageSets" / "Segmentation" / "train.txt"),
                 "val": str(out / "ImageSets" / "Segmentation" / "val.txt"), "labels": str(out / "labels.txt")}
    else:
        paths = {"train_images": str(out / "train"), "val_images": str(out / "val"),
                 "train": str(out / "annotations" / "instances_train.json"),
                 "val": str(out / "annotations" / "instances_val.json")}
    paths["manifest"] = str(out / MANIFEST)
    return {"task": config.task, "out": str(out), "train": stats.get("train", {}), "val": stats.get("val", {}),
            "size": config.size, "seed": config.seed, "classes": SCENE_CLASSES, "num_classes": len(SCENE_CLASSES),
            "ignore_index": IGNORE_INDEX, "paths": paths}


# ------------------------------------------------------------------------------------------------
# the default dataset of the dense tasks


def scenes_home(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$MOBILECNN_HOME``, else ``$XDG_CACHE_HOME/mobilecnn``, else ``~/.cache/mobilecnn``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mobilecnn"


def _is_complete(path: Path, config: ScenesConfig) -> bool:
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("version") == SCENES_VERSION \
        and marker.get("config") == _identity(config)


def scenes_cache(task: str, root: str | os.PathLike | None = None, *, size: int = 128, seed: int = 0,
                 train_count: int = 2000, val_count: int = 500, max_items: int = 6,
                 data_dir: str | os.PathLike | None = None) -> Path:
    """The default scenes dataset of ``task``: ``<home>/scenes/<task>-<size>-<seed>-<train>-<val>``.

    ``<home>`` is :func:`scenes_home` of ``root``. Generated on first use (a few seconds) and reused while
    complete (its :data:`COMPLETE_MARKER` names this version and config); an incomplete or outdated folder there
    is removed and generated again.
    """
    key = f"{task}-{size}-{seed}-{train_count}-{val_count}" + (f"-{max_items}items" if max_items != 6 else "")
    path = scenes_home(root) / "scenes" / key
    config = ScenesConfig(task=task, out=str(path), train_count=train_count, val_count=val_count, size=size,
                          seed=seed, max_items=max_items, data_dir=None if data_dir is None else str(data_dir))
    config.validate()
    if _is_complete(path, config):
        return path
    if path.is_symlink() or path.is_file():
        raise DataError(f"{path} is in the way of the scenes cache (not a folder); remove it")
    if path.exists():
        shutil.rmtree(path)  # incomplete or another version: only this generator writes there
    try:
        generate_scenes(config)
    except UsageError:
        if _is_complete(path, config):  # another process generated it meanwhile
            return path
        raise
    return path
