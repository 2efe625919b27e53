"""What datasets are called: the in-memory datasets known by name, and image folders (``folder:<path>``).

A ``DataInfo.name`` (recorded in every run) is one of :data:`DATASETS` or :data:`FOLDER_PREFIX` + the
folder's absolute path; :func:`dataset_argument` turns it back into what ``load_data(data=...)`` takes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FASHION_MNIST", "SCENES", "DATASETS", "segmentation_folder", "detection_folder", "ACCEPTED_DATASETS",
           "FOLDER_PREFIX", "canonical_dataset", "is_folder_dataset", "dataset_argument", "locate_dataset"]

FASHION_MNIST = "fashion-mnist"
#: The datasets loaded by name (held in memory); the first is the default.
DATASETS = (FASHION_MNIST, "cifar10", "cifar100")
#: A segmenter's or detector's default data: the Fashion-MNIST scenes (:mod:`.scenes`), generated once into a cache.
SCENES = "scenes"
#: How the data argument is described in messages and help.
ACCEPTED_DATASETS = ", ".join(f"'{d}'" for d in DATASETS) + " or a folder holding train/ and val/ class folders"
#: ``DataInfo.name`` of an image-folder dataset is this prefix + the folder's absolute path.
FOLDER_PREFIX = "folder:"

_SPELLINGS = {"fashionmnist": FASHION_MNIST, "cifar-10": "cifar10", "cifar-100": "cifar100"}


def canonical_dataset(data: str) -> str:
    """The name in :data:`DATASETS` that ``data`` spells (case, ``_`` for ``-``, ``cifar-10``...), or ``""``."""
    key = str(data).strip().lower().replace("_", "-")
    key = _SPELLINGS.get(key, key)
    return key if key in DATASETS else ""


def is_folder_dataset(name: Any) -> bool:
    """Whether a ``DataInfo.name`` names an image folder (not an in-memory dataset)."""
    return str(name).startswith(FOLDER_PREFIX)


def dataset_argument(name: str) -> str:
    """A ``DataInfo.name`` (``"fashion-mnist"``, ``"folder:/abs/path"``) as a ``load_data`` argument."""
    name = str(name)
    return name[len(FOLDER_PREFIX):] if is_folder_dataset(name) else name


def locate_dataset(name: str, data_dir: str | None) -> tuple[str, str | None]:
    """``(data, data_dir)`` for ``load_data`` to reload the dataset a run was trained on.

    For an image folder that has moved since training, ``data_dir`` names its new place.
    """
    data = dataset_argument(name)
    if is_folder_dataset(name) and data_dir:
        return str(data_dir), None
    return data, data_dir


def segmentation_folder(data: str | None) -> str | None:
    """A segmenter's ``--data`` as :func:`~mobilecnn.data.segmentation.load_segmentation` takes it: ``None`` (the
    scenes cache) for ``scenes``, for the default ``fashion-mnist`` (the scenes are made of it) and for nothing;
    else the folder. A recorded ``SegDataInfo.name`` (``voc:/abs/folder``) gives its folder."""
    if data is None or str(data).strip().lower() in (SCENES, FASHION_MNIST):
        return None
    layout, sep, folder = str(data).partition(":")
    return folder if sep and layout in ("voc", "folders") and folder.startswith("/") else str(data)


def detection_folder(data: str | None) -> str | None:
    """A detector's ``--data`` as :func:`~mobilecnn.data.detection.load_detection` takes it: ``None`` (the scenes
    cache) for ``scenes``, for the default ``fashion-mnist`` and for nothing; else the folder. A recorded
    ``DetDataInfo.name`` (``coco:/abs/folder``) gives its folder."""
    if data is None or str(data).strip().lower() in (SCENES, FASHION_MNIST):
        return None
    layout, sep, folder = str(data).partition(":")
    return folder if sep and layout == "coco" and folder.startswith("/") else str(data)
