"""Export images for imported weights (``weights import``: data name ``imported:SOURCE``), which come without
their dataset.

* **Verification** (every precision): real photographs, scikit-image's sample images (the same that the
  scenes' backgrounds come from), through the weights' own preprocessing; with ``--calibration-data DIR``,
  that folder's images instead.
* **bf16 / int8** need ``--calibration-data DIR``: any folder of images like those the model will see (searched
  recursively, sorted, shuffled with seed 0). The first half (up to ``--calibration-count``) calibrates int8;
  the other half (up to ``--check-count``) is the accuracy check, labelled by the fp32 model's own top-1: with
  no labels for the weights' classes at hand, the drop is the share of images whose top-1 changes (agreement
  with fp32, in points).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import Preprocessing
from ..data.scenes_compose import load_textures
from ..errors import DataError, UsageError
from .export import ExportImages
from .predict import expand_inputs

__all__ = ["IMPORTED_PREFIX", "is_imported", "imported_images", "MIN_FOLDER_IMAGES"]

IMPORTED_PREFIX = "imported:"
#: The fewest images a --calibration-data folder must hold: 32 to calibrate, the rest to check.
MIN_FOLDER_IMAGES = 64


def is_imported(info: dict) -> bool:
    return str(info.get("name") or "").startswith(IMPORTED_PREFIX)


def _photos(preprocessing: Preprocessing) -> torch.Tensor:
    """scikit-image's sample photographs as model inputs."""
    images = []
    for _, rgb in load_textures():
        chw = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)  # a copy: the textures are read-only
        if preprocessing.in_chans == 1:
            chw = chw.float().mean(0, keepdim=True).round().to(torch.uint8)
        images.append(preprocessing(chw))
    return torch.stack(images)


def _folder_files(folder: str, total: int) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--calibration-data {folder}: not a folder; for imported weights it is a folder of images "
                         "like those the model will see")
    files = expand_inputs([root])  # predict's reading of a folder: its images, recursively, sorted
    if len(files) < MIN_FOLDER_IMAGES:
        raise UsageError(f"--calibration-data {folder} holds {len(files)} images; at least {MIN_FOLDER_IMAGES} are "
                         "needed (half calibrate int8, half check it)")
    order = np.random.default_rng(0).permutation(len(files))[:total]
    return [files[i] for i in order]


def _load(files: list[Path], preprocessing: Preprocessing) -> torch.Tensor:
    try:
        return torch.stack([preprocessing.load(f) for f in files])
    except (OSError, ValueError) as exc:
        raise DataError(f"--calibration-data: an image does not load ({exc})") from None


def imported_images(model: nn.Module, preprocessing: Preprocessing, folder: str | None, counts: tuple[int, int],
                    checked: bool) -> tuple[ExportImages, list[str]]:
    """The export images of imported weights (module docstring); ``counts``: (calibration, check) asked for."""
    if folder is None:
        if checked:
            raise UsageError("bf16 and int8 (and --format auto) of imported weights need --calibration-data DIR: a "
                             "folder of images like those the model will see (no dataset comes with the weights)")
        photos = _photos(preprocessing)
        return (ExportImages(photos[:1], photos, None, None, None),
                [f"imported weights: verified on {len(photos)} scikit-image sample photographs"])
    files = _folder_files(folder, 2 * max(counts))
    half = len(files) // 2
    calibration = _load(files[:min(half, counts[0])], preprocessing)
    check = _load(files[half:half + counts[1]], preprocessing)
    with torch.no_grad():
        labels = torch.cat([model.eval()(check[i:i + 64]).argmax(1) for i in range(0, len(check), 64)])
    notes = [f"imported weights: int8 calibrated on {len(calibration)} images of {folder}; the accuracy check is "
             f"agreement with the fp32 model's top-1 on {len(check)} others (no labels come with the weights)"]
    return ExportImages(check[:1], check[:256], calibration, check if checked else None,
                        labels if checked else None), notes
