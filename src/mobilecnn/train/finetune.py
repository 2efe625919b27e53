"""Fine-tuning from existing weights: ``train --init W`` with ``--freeze-backbone``, ``--backbone-lr-scale``
and ``--freeze-bn``.

Decisions (docs/pretrained.md):

* The weights file decides the architecture: the model name must be ``--model``; class count, stem and
  the architecture options (``padding``, ``bn_eps``, ``act``) come from its metadata. The classifier is
  replaced by a fresh one (normal(0, 0.01), zero bias, seeded by ``--seed``) when the dataset has another
  number of classes, or when the file has none (a headless Keras file).
* The weights decide the normalisation: when their metadata carries a preprocessing (imported weights,
  or a run that was itself fine-tuned), training, evaluation, ``predict`` and ``export`` of the new run use
  that same preprocessing (mean, std, scale, channel order, crop fraction); otherwise (weights trained by
  mobilecnn on a folder) their dataset statistics. Only the resolution may be changed (``--resolution``).
  Pretrained features were learnt on inputs normalised that way; the new folder's statistics would shift
  every first-layer activation.
* ``--init`` (path and sha256 of the file) is part of the run identity: ``--resume`` refuses another file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch import nn

from ..data.images import Preprocessing
from ..errors import TrainError
from ..models import ClassifierNet, create_model
from ..models.weights_file import described_model, load_weights, read_metadata, written_by_mobilecnn
from .optim import param_groups

__all__ = ["InitWeights", "read_init", "build_initialized", "finetune_param_groups", "freeze_backbone_",
           "freeze_batchnorm_"]


@dataclass
class InitWeights:
    path: Path
    model: str
    num_classes: int
    in_chans: int
    small_input: bool
    model_kwargs: dict[str, Any]
    data: dict[str, Any]
    headless: bool

    @property
    def preprocessing(self) -> Preprocessing | None:
        """The normalisation the weights expect (None: weights with no dataset description)."""
        if isinstance(self.data.get("preprocessing"), dict) or self.data.get("mean") is not None:
            return Preprocessing.for_dataset(self.data, f"{self.path} metadata")
        return None


def read_init(path: str | Path) -> InitWeights:
    """The description of an ``--init`` file (only safetensors written by mobilecnn)."""
    path = Path(path)
    meta = read_metadata(path)
    if not written_by_mobilecnn(meta):
        raise TrainError(f"--init {path} was not written by mobilecnn (no model description in its metadata); "
                         "convert published weights first with `mobilecnn weights import`")
    desc = described_model(path)
    try:
        data = json.loads(meta.get("data") or "{}")
    except ValueError:
        data = {}
    return InitWeights(path, desc["model"], desc.get("num_classes", 1000), desc.get("in_chans", 3),
                       desc.get("small_input", False), desc.get("model_kwargs", {}),
                       data if isinstance(data, dict) else {}, meta.get("headless") == "True")


def build_initialized(init: InitWeights, model_name: str, *, num_classes: int, in_chans: int,
                      small_input: bool | None, model_kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``init`` with its weights, its classifier replaced when ``num_classes`` differs.

    Returns the model and the model kwargs it was built with (the file's options + ``model_kwargs``).
    """
    if model_name != init.model:
        raise TrainError(f"--init {init.path} holds {init.model} weights but --model is {model_name}")
    if in_chans != init.in_chans:
        raise TrainError(f"--init {init.path} expects {init.in_chans}-channel images; the dataset has {in_chans}")
    if small_input is not None and small_input != init.small_input:
        raise TrainError(f"--init {init.path} was made with small_input={init.small_input}; drop --small-input/"
                         "--no-small-input or use matching weights")
    kwargs = {**init.model_kwargs, **model_kwargs}
    model = create_model(model_name, num_classes=init.num_classes, in_chans=in_chans, small_input=init.small_input,
                         **kwargs)
    if init.headless:
        state = load_weights(init.path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise TrainError(f"--init {init.path} does not fit {model_name}: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    else:
        load_weights(init.path, model)
    if init.headless or num_classes != init.num_classes:
        net = cast(ClassifierNet, model)  # every registered model is one
        net.reset_classifier(num_classes)
        linear = cast(nn.Linear, net.classifier[-1] if isinstance(net.classifier, nn.Sequential) else net.classifier)
        nn.init.normal_(linear.weight, 0, 0.01)
        nn.init.zeros_(linear.bias)
    return model, kwargs


def _head_ids(model: nn.Module) -> set[int]:
    head = getattr(model, "classifier", None)
    if head is None:
        raise TrainError(f"{type(model).__name__} has no classifier to keep training")
    return {id(p) for p in head.parameters()}


def freeze_backbone_(model: nn.Module) -> None:
    """``requires_grad=False`` on every parameter outside the classifier."""
    head = _head_ids(model)
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(False)


def finetune_param_groups(model: nn.Module, weight_decay: float, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """:func:`param_groups` (weight decay on conv/linear weights only), split into classifier groups (first,
    ``lr_scale`` 1) and backbone groups (``lr_scale`` = ``backbone_lr_scale``); the loop multiplies each
    group's scheduled learning rate by its ``lr_scale``."""
    head = _head_ids(model)
    groups = []
    for is_head in (True, False):
        for g in param_groups(model, weight_decay):
            params = [p for p in g["params"] if (id(p) in head) == is_head]
            if params:
                groups.append({**g, "params": params, "lr_scale": 1.0 if is_head else float(backbone_lr_scale)})
    return groups


def freeze_batchnorm_(model: nn.Module) -> None:
    """BN layers to eval mode: they normalise with (and keep) their running statistics while training."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
