"""A few (image, mask) pairs of a segmentation dataset at one square resolution: the images an export of a
segmentation model is verified, calibrated and checked on.

:func:`segmentation_samples` takes a seeded subset of a split (the same subset rule as the loaders,
:func:`~mobilecnn.data.batches.subset_indices`), decodes each pair with the loaders' checks, and brings it to
``resolution x resolution`` the way a segmenter's :class:`~mobilecnn.data.images.Preprocessing` does in
``predict``: the image resized bilinearly (antialiased when shrinking, ``resize="square"``) then normalised;
its mask resized nearest-neighbour, so every value stays a class index or 255 (ignore).
"""

from __future__ import annotations

import dataclasses
import os

import torch

from ..errors import DataError
from ..validators import check_choice, check_int
from .batches import subset_indices
from .folder import _reason, _shown
from .images import MAX_RESOLUTION, Preprocessing, load_image
from .segmentation import IMAGENET_MEAN, IMAGENET_STD
from .segmentation_io import SPLITS, check_pairs, read_mask, scan_segmentation

__all__ = ["segmentation_samples"]


def _preprocessing(preprocessing: Preprocessing | dict | None, resolution: int) -> Preprocessing:
    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    if preprocessing is None:
        return Preprocessing(resolution, 3, IMAGENET_MEAN, IMAGENET_STD)
    if preprocessing.in_chans != 3:
        raise DataError(f"preprocessing in_chans {preprocessing.in_chans} is not accepted: segmentation reads RGB "
                        "images (3)")
    return dataclasses.replace(preprocessing, resolution=resolution, resize="square")


def segmentation_samples(folder: str | os.PathLike, resolution: int, split: str, count: int, seed: int = 0,
                         preprocessing: Preprocessing | dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``count`` pairs of ``split`` ("train" or "val") of the segmentation dataset in ``folder`` (Pascal
    VOC or folder pairs), as ``(images float32 N,3,R,R normalised, masks int64 N,R,R)`` with R =
    ``resolution``. ``preprocessing``: the run's normalisation (default ImageNet mean/std); its resize is
    taken as ``square`` at R. Any problem with the data raises a one-line :class:`DataError`."""
    check_int(resolution, "resolution", minimum=1, maximum=MAX_RESOLUTION, error=DataError)
    check_choice(split, "split", SPLITS, DataError)
    check_int(count, "count", minimum=1, error=DataError)
    pre = _preprocessing(preprocessing, resolution)
    source = scan_segmentation(folder)
    n = len(source.class_names)
    pairs = source.pairs[split]
    if not pairs:
        raise DataError(f"the {split} split of {_shown(str(source.root))} holds no image/mask pairs")
    index = subset_indices(len(pairs), count, seed, f"{split} export samples")
    chosen = pairs if index is None else [pairs[i] for i in index.tolist()]
    samples = check_pairs(chosen, n, source.labels_from)
    from torchvision.transforms import v2  # torchvision loads torch._dynamo (1.5 s): imported when used

    images = torch.empty(len(samples), 3, resolution, resolution)
    masks = torch.empty(len(samples), resolution, resolution, dtype=torch.int64)
    for i, s in enumerate(samples):
        try:
            image = load_image(s.image, 3)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
            raise DataError(f"image {_shown(s.image)} cannot be decoded ({_reason(e, s.image)}); replace it") from None
        mask = torch.from_numpy(read_mask(s, n, source.labels_from).copy())
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            raise DataError(f"mask {_shown(s.mask)} is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{_shown(s.image)} decodes to {image.shape[2]}x{image.shape[1]}; a mask must have "
                            "its image's size")
        images[i] = pre(image)
        masks[i] = v2.functional.resize(mask[None], [resolution, resolution],
                                        interpolation=v2.InterpolationMode.NEAREST)[0].to(torch.int64)
    return images, masks
