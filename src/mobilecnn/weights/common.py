"""What every converter returns (:class:`Converted`) and the facts shared by the sources."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch

from ..data.images import Preprocessing

__all__ = ["Converted", "SOURCES", "IMAGENET_MEAN", "IMAGENET_STD", "BN_KEYS", "LICENSES", "imagenet_preprocessing",
           "imagenet_class_names", "IMAGENET_CLASSES"]

#: ``--from`` choices.
SOURCES = ("torchvision", "timm", "keras", "megvii")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

_IMAGENET_TERMS = ("the weights were trained on ImageNet, whose terms of access allow non-commercial research "
                   "and educational use only: check that your use is allowed")
#: Recorded in every imported file; not legal advice.
LICENSES = {
    "torchvision": "torchvision (BSD-3-Clause code); " + _IMAGENET_TERMS,
    "timm": "timm / pytorch-image-models (Apache-2.0; timm's pretrained configs list apache-2.0 for these "
            "weights); " + _IMAGENET_TERMS,
    "keras": "keras.applications (Apache-2.0; MobileNet/MobileNetV2 weights from the TensorFlow models "
             "repository, Apache-2.0); " + _IMAGENET_TERMS,
    "megvii": "megvii-model/ShuffleNet-Series (MIT, Copyright (c) 2019 Megvii Technology); " + _IMAGENET_TERMS,
}


#: ImageNet's (ILSVRC-2012) 1000 class names in the order of its class indices, one per line: the order every
#: source's classifier uses (the names torchvision carries in its weights' metadata).
IMAGENET_CLASSES = "imagenet_classes.txt"


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, index order."""
    text = resources.files(__package__).joinpath(IMAGENET_CLASSES).read_text(encoding="utf-8")
    names = text.splitlines()
    assert len(names) == 1000, f"{IMAGENET_CLASSES} holds {len(names)} names"  # shipped with the package
    return names


def imagenet_preprocessing(resolution: int = 224, mean: tuple[float, ...] = IMAGENET_MEAN,
                           std: tuple[float, ...] = IMAGENET_STD) -> Preprocessing:
    """RGB in [0, 1], normalised; shorter side to R / 0.875, centre crop R (the torchvision/timm evaluation)."""
    return Preprocessing(resolution, 3, mean, std, resize="center_crop", crop_fraction=0.875)


@dataclass
class Converted:
    """A converted checkpoint: our state_dict (in the model's key order), the registered model whose
    shapes it matches, the architecture options exactness needs (``create_model`` keyword arguments),
    the preprocessing the weights expect, and notes for the user."""

    state_dict: OrderedDict[str, torch.Tensor]
    model_name: str
    source: str
    model_kwargs: dict[str, Any]
    preprocessing: Preprocessing
    notes: list[str] = field(default_factory=list)
    headless: bool = False  # no classifier in the file (Keras include_top=False)
    variant: str | None = None  # the source's own model name, when known

    @property
    def num_classes(self) -> int:
        w = self.state_dict.get("classifier.1.weight", self.state_dict.get("classifier.weight"))
        return int(w.shape[0]) if w is not None else 1000
