"""What differs between training a classifier and a segmenter: the data, the model, the loss, the metrics.

The loop (:mod:`.loop`) is one road for every task: run directory, lock, atomic checkpoints, exact resume,
torchrun, devices and AMP, ``metrics.jsonl`` and curves. It asks the :class:`Task` of the model's registry
entry for the rest:

* **classification**: :func:`mobilecnn.data.load_data`, label-smoothed cross-entropy, top-1 / top-5;
* **segmentation** (Mobile DeepLabv3): :func:`mobilecnn.data.segmentation.load_segmentation` (a VOC or
  images/masks folder, by default the Fashion-MNIST scenes), per-pixel cross-entropy with 255 ignored,
  pixel accuracy while training and mIoU on the validation set (:mod:`.segment_eval`). ``--init`` takes
  a classifier's weights (the backbone is initialised, the head is new: DeepLab starts from an ImageNet
  checkpoint) or a segmenter's (all of it; a new logits layer when the class count differs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from ..data import is_folder_dataset, load_data
from ..data.detection import DetOptions, load_detection
from ..data.names import detection_folder, segmentation_folder
from ..data.segmentation import SegOptions, load_segmentation
from ..data.segmentation_io import IGNORE_INDEX
from ..errors import TrainError
from ..models import create_model
from ..models.deeplab import load_backbone_weights
from ..models.ssd import SSD
from ..models.weights_file import load_weights
from .config import TrainConfig, TrainSettings
from .detect_eval import DetEvalOptions, evaluate_detection
from .detection_loss import MultiBoxLoss
from .evaluation import evaluate
from .finetune import InitWeights, build_initialized
from .losses import SmoothedCrossEntropy
from .segment_eval import SegEvalOptions, evaluate_segmentation

__all__ = ["Task", "Built", "ClassificationTask", "SegmentationTask", "DetectionTask", "task_of"]


@dataclass
class Built:
    """The model a run trains, the keyword arguments that rebuild it, and its stem."""

    model: nn.Module
    model_kwargs: dict[str, Any]
    small_input: bool


@dataclass(frozen=True)
class Loading:
    """What the data loaders of one process need (the per-process batch, this rank, the device)."""

    batch_size: int
    rank: int
    world_size: int
    device: torch.device


class Task(Protocol):
    name: str
    score: str  # the validation record key that ranks weights (EMA or raw)

    def load(self, cfg: TrainConfig, s: TrainSettings, how: Loading, init: InitWeights | None) -> tuple[Any, Any, Any]:
        ...

    def build(self, cfg: TrainConfig, info: Any, init: InitWeights | None) -> Built:
        ...

    def criterion(self, s: TrainSettings, cuda_deterministic: bool, model: nn.Module, info: Any) -> nn.Module:
        ...

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        ...

    def evaluate(self, model: nn.Module, val: Any, cfg: TrainConfig, info: Any) -> dict[str, Any]:
        ...


class ClassificationTask:
    name, score = "classification", "val_top1"

    @staticmethod
    def _init_preprocessing(init: InitWeights | None) -> Any:
        # fine-tuning: the weights' own normalisation (finetune.py), at their resolution unless --resolution
        if init is not None and (isinstance(init.data.get("preprocessing"), dict)
                                 or is_folder_dataset(init.data.get("name", ""))):
            return init.preprocessing
        return None

    def load(self, cfg: TrainConfig, s: TrainSettings, how: Loading, init: InitWeights | None) -> tuple[Any, Any, Any]:
        pre = self._init_preprocessing(init)
        resolution = cfg.resolution or (pre.resolution if pre else None)
        return load_data(cfg.data, data_dir=cfg.data_dir, resolution=resolution,
                         batch_size=how.batch_size, seed=cfg.seed, subset=cfg.subset, val_subset=cfg.val_subset,
                         rank=how.rank, world_size=how.world_size, workers=cfg.workers, on_corrupt=cfg.on_corrupt,
                         crop_padding=s.crop_padding, preprocessing=pre, device=how.device)

    def build(self, cfg: TrainConfig, info: Any, init: InitWeights | None) -> Built:
        if init is not None:
            model, kwargs = build_initialized(init, cfg.model, num_classes=info.num_classes, in_chans=info.in_chans,
                                              small_input=cfg.small_input, model_kwargs=cfg.model_kwargs)
            return Built(model, kwargs, init.small_input)
        small = cfg.small_input if cfg.small_input is not None else info.resolution <= 64
        model = create_model(cfg.model, num_classes=info.num_classes, in_chans=info.in_chans, small_input=small,
                             **cfg.model_kwargs)
        return Built(model, dict(cfg.model_kwargs), small)

    def criterion(self, s: TrainSettings, cuda_deterministic: bool, model: nn.Module, info: Any) -> nn.Module:
        if cuda_deterministic:
            return SmoothedCrossEntropy(s.label_smoothing)
        return nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        return float((logits.detach().argmax(1) == y).sum())

    def evaluate(self, model: nn.Module, val: Any, cfg: TrainConfig, info: Any) -> dict[str, Any]:
        ev = evaluate(model, val, cfg.channels_last, cfg.amp, info.num_classes)
        return {"val_top1": ev["top1"], "val_top5": ev["top5"], "val_loss": ev["loss"]}


def build_dense(cfg: TrainConfig, info: Any, init: InitWeights | None, kwargs: dict[str, Any]) -> Built:
    """A segmenter's or detector's model (both read RGB and sit on a classifier's backbone): with ``--init`` of its
    own weights, all of them (a new class layer when the class count differs); with a classifier's, the backbone
    (checked: the same classifier, channels, stem and options); else freshly initialised."""
    small = bool(cfg.small_input)
    if init is not None and init.model == cfg.model:
        kwargs = {**init.model_kwargs, **kwargs}
        own: Any = create_model(cfg.model, num_classes=init.num_classes, in_chans=3, small_input=init.small_input,
                                **kwargs)
        load_weights(init.path, own)
        if init.num_classes != info.num_classes:
            own.reset_classifier(info.num_classes)
        return Built(own, kwargs, init.small_input)
    model: Any = create_model(cfg.model, num_classes=info.num_classes, in_chans=3, small_input=small, **kwargs)
    if init is not None:
        if init.model != model.backbone_name:
            raise TrainError(f"--init {init.path} holds {init.model} weights; {cfg.model} starts from its own "
                             f"weights or from {model.backbone_name}'s (its backbone)")
        load_backbone_weights(model, init.path)
    return Built(model, kwargs, small)


class SegmentationTask:
    name, score = "segmentation", "val_miou"

    def load(self, cfg: TrainConfig, s: TrainSettings, how: Loading, init: InitWeights | None) -> tuple[Any, Any, Any]:
        pre = init.preprocessing if init is not None else None
        if pre is not None and pre.in_chans != 3:
            raise TrainError(f"--init {init.path if init else ''}: a segmenter reads RGB images; these weights "
                             f"expect {pre.in_chans}-channel inputs")
        options = SegOptions(batch_size=how.batch_size, crop_size=cfg.resolution or s.recipe.crop_size,
                             subset=cfg.subset, val_subset=cfg.val_subset, workers=cfg.workers, preprocessing=pre,
                             data_dir=cfg.data_dir, seed=cfg.seed, rank=how.rank, world_size=how.world_size,
                             device=how.device if how.device.type != "cpu" else None)
        return load_segmentation(segmentation_folder(cfg.data), options)

    def _kwargs(self, cfg: TrainConfig) -> dict[str, Any]:
        kwargs = dict(cfg.model_kwargs)
        for key in ("output_stride", "aspp"):
            if getattr(cfg, key) is not None:
                kwargs[key] = getattr(cfg, key)
        return kwargs

    def build(self, cfg: TrainConfig, info: Any, init: InitWeights | None) -> Built:
        return build_dense(cfg, info, init, self._kwargs(cfg))

    def criterion(self, s: TrainSettings, cuda_deterministic: bool, model: nn.Module, info: Any) -> nn.Module:
        if cuda_deterministic:
            return SmoothedCrossEntropy(s.label_smoothing, ignore_index=IGNORE_INDEX)
        return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, label_smoothing=s.label_smoothing)

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        """Pixel accuracy of the batch (labelled pixels) times its images: the loop's running "accuracy"."""
        keep = y != IGNORE_INDEX
        right = float(((logits.detach().argmax(1) == y) & keep).sum())
        return right / max(1.0, float(keep.sum())) * y.shape[0]

    def evaluate(self, model: nn.Module, val: Any, cfg: TrainConfig, info: Any) -> dict[str, Any]:
        ev = evaluate_segmentation(model, val, SegEvalOptions(info.num_classes, cfg.channels_last, cfg.amp))
        return {"val_miou": ev["miou"], "val_pixel_accuracy": ev["pixel_accuracy"], "val_loss": ev["loss"]}


class DetectionTask:
    """SSD / SSDLite: COCO-layout boxes (:func:`mobilecnn.data.detection.load_detection`, by default the scenes),
    the multibox loss (:mod:`.detection_loss`), COCO mAP on the validation set (:mod:`.detect_eval`).

    ``--init`` takes a classifier's weights (the backbone; extras and predictors are new) or a detector's (all
    of it; new class predictors when the class count differs). The running "accuracy" is the share of
    positive anchors whose best class is their label."""

    name, score = "detection", "val_mAP"

    def __init__(self) -> None:
        self._criterion: MultiBoxLoss | None = None

    def load(self, cfg: TrainConfig, s: TrainSettings, how: Loading, init: InitWeights | None) -> tuple[Any, Any, Any]:
        pre = init.preprocessing if init is not None else None
        if pre is not None and pre.in_chans != 3:
            raise TrainError(f"--init {init.path if init else ''}: a detector reads RGB images; these weights "
                             f"expect {pre.in_chans}-channel inputs")
        options = DetOptions(batch_size=how.batch_size, resolution=cfg.resolution or s.recipe.crop_size or 320,
                             subset=cfg.subset, val_subset=cfg.val_subset, workers=cfg.workers, preprocessing=pre,
                             data_dir=cfg.data_dir, seed=cfg.seed, rank=how.rank, world_size=how.world_size,
                             device=how.device if how.device.type != "cpu" else None,
                             zoom_out=s.recipe.zoom_out, iou_crop=s.recipe.iou_crop)
        return load_detection(detection_folder(cfg.data), options)

    def build(self, cfg: TrainConfig, info: Any, init: InitWeights | None) -> Built:
        return build_dense(cfg, info, init, dict(cfg.model_kwargs))

    def criterion(self, s: TrainSettings, cuda_deterministic: bool, model: nn.Module, info: Any) -> nn.Module:
        side = int(info.resolution)
        device = next(model.parameters()).device
        self._criterion = MultiBoxLoss(cast(SSD, model).anchors(side, side)).to(device)
        return self._criterion

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        c = self._criterion
        if c is None or not c.last_positives:
            return 0.0
        return c.last_correct / c.last_positives * y.shape[0]

    def evaluate(self, model: nn.Module, val: Any, cfg: TrainConfig, info: Any) -> dict[str, Any]:
        ev = evaluate_detection(model, val, info, DetEvalOptions(cfg.channels_last, cfg.amp))
        return {"val_mAP": ev["mAP"], "val_AP50": ev["AP50"], "val_loss": ev["loss"]}


_TASKS: dict[str, type] = {"classification": ClassificationTask, "segmentation": SegmentationTask,
                           "detection": DetectionTask}


def task_of(recipe_task: str) -> Task:
    """A fresh :class:`Task` for a run (a detection task keeps its run's loss)."""
    return cast(Task, _TASKS[recipe_task]())
