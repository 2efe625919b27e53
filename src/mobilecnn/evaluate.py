"""``mobilecnn eval``: a trained run on its validation split.

Classifiers: top-1, top-5, per-class accuracy and the confusion matrix (``confusion.png``). Segmenters: mIoU
over the whole set (DeepLab's evaluation, :mod:`mobilecnn.train.segment_eval`), per-class IoU
(``per_class_iou.png``), pixel accuracy; ``--multi-scale`` adds Table 7's MF (six scales, each flipped).
Detectors: COCO box mAP@[.5:.95], AP50, AP75, AP small / medium / large and per-class AP (faster-coco-eval,
:mod:`mobilecnn.train.detect_eval`; ``per_class_ap.png``), with the detections in COCO results format in
``detections.json``. All write ``eval.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import FASHION_MNIST, load_data, locate_dataset
from .data.detection import DetOptions, load_detection
from .data.names import detection_folder, segmentation_folder
from .data.segmentation import SegOptions, load_segmentation
from .device import resolve_device
from .errors import CheckpointError, UsageError
from .fields import cli, positive_int
from .files import atomic_write_text
from .models import get_model_entry
from .plots import plot_confusion, plot_per_class_iou
from .runs.layout import EVAL_DIR
from .runs.rundir import LoadedModel, load_trained
from .train.detect_eval import evaluate_detection
from .train.loop import evaluate
from .train.segment_eval import SegEvalOptions, evaluate_segmentation
from .validators import check_bool, check_int, check_positive_int

__all__ = ["EvalConfig", "run_eval", "evaluate_run"]


@dataclass
class EvalConfig:
    """``mobilecnn eval``: which weights, on which data, written where."""

    path: str | Path = field(metadata=cli("run directory, checkpoint directory or .safetensors weights file",
                                          positional=True, metavar="RUN_DIR_OR_CHECKPOINT"))
    data: str | None = field(default=None, metadata=cli("dataset (default: the one it was trained on)"))
    data_dir: str | None = field(default=None, metadata=cli(
        "where the dataset lives now: the Fashion-MNIST/CIFAR folder, or a folder run's moved image folder"))
    batch_size: int = field(default=256, metadata=cli("images per evaluation batch", type=positive_int))
    subset: int | None = field(default=None, metadata=cli("evaluate on N validation images", type=positive_int))
    out_dir: str | Path | None = field(default=None, metadata=cli("output directory (default RUN_DIR/eval)",
                                                                   flag="--out"))
    prefer_ema: bool = field(default=True, metadata=cli("use the raw weights even when EMA weights exist",
                                                        flag="--no-ema", action="store_false"))
    workers: int = field(default=2, metadata=cli("DataLoader workers for image folders"))
    device: str | None = field(default="auto", metadata=cli("auto, cpu, cuda, cuda:N or mps"))
    multi_scale: bool = field(default=False, metadata=cli(
        "segmenters: average the softmax over DeepLab's scales 0.5-1.75, each also flipped (the paper's MF)"))

    def __post_init__(self) -> None:
        check_positive_int(self.batch_size, "--batch-size")
        if self.subset is not None:
            check_positive_int(self.subset, "--subset")
        check_int(self.workers, "--workers", minimum=0)
        check_bool(self.multi_scale, "--multi-scale")


def evaluate_run(path: str | Path, *, return_logits: bool = False, **options: Any) -> dict[str, Any]:
    """:func:`run_eval` of ``EvalConfig(path, **options)``."""
    return run_eval(EvalConfig(path, **options), return_logits=return_logits)


def run_eval(config: EvalConfig, return_logits: bool = False) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy and confusion matrix on the validation split; writes JSON + PNG.

    ``return_logits`` adds the per-image ``logits`` and ``labels`` tensors (and ``files`` for image
    folders) to the returned dict; they are not written to the JSON. ``config.device``: auto, cpu, cuda,
    cuda:N, mps.
    """
    c = config
    dev = resolve_device(c.device)
    loaded = load_trained(c.path, c.prefer_ema)
    task = get_model_entry(loaded.model_name).task
    if task == "segmentation":
        return _eval_segmenter(c, loaded, dev)
    if c.multi_scale:
        raise UsageError(f"--multi-scale applies to segmentation models; {loaded.model_name} is a {task} model")
    if task == "detection":
        return _eval_detector(c, loaded, dev)
    data_dir = c.data_dir
    if c.data:
        dataset = c.data
    else:
        dataset, data_dir = locate_dataset(loaded.data.get("name") or FASHION_MNIST, data_dir)
    # a fine-tuned run normalises with the preprocessing it was trained with (its init weights')
    pre = loaded.data.get("preprocessing") if not c.data else None
    _, val_loader, info = load_data(dataset, data_dir=data_dir, resolution=loaded.data.get("resolution"),
                                    batch_size=1, eval_batch_size=c.batch_size, val_subset=c.subset,
                                    workers=c.workers, preprocessing=pre, device=dev if dev.type != "cpu" else None)
    if info.num_classes != loaded.model.num_classes:
        raise CheckpointError(
            f"{loaded.weights_file} was trained for {loaded.model.num_classes} classes but {info.name} has "
            f"{info.num_classes}: evaluate on the dataset it was trained on"
        )
    if info.in_chans != loaded.model.in_chans:
        raise CheckpointError(f"{loaded.weights_file} expects {loaded.model.in_chans}-channel images but {info.name} "
                              f"has {info.in_chans}")
    result = evaluate(loaded.model.to(dev), val_loader, num_classes=info.num_classes, keep_logits=return_logits)
    per_image: dict[str, Any] = {k: result.pop(k) for k in ("logits", "labels") if k in result}
    result.update({"model": loaded.model_name, "weights": loaded.weights, "weights_file": str(loaded.weights_file),
                   "data": info.name, "class_names": info.class_names, "device": str(dev)})
    out = Path(c.out_dir) if c.out_dir else (loaded.run_dir / EVAL_DIR if loaded.run_dir else Path(EVAL_DIR))
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    plot_confusion(result["confusion"], info.class_names, out / "confusion.png",
                   title=f"{loaded.model_name} on {info.name}: top-1 {result['top1']:.2f}%")
    result["outputs"] = {"json": str(out / "eval.json"), "confusion_png": str(out / "confusion.png")}
    if return_logits:
        result.update(per_image)
        if hasattr(val_loader, "samples"):
            result["files"] = [path for path, _ in val_loader.samples]
    return result


def _eval_segmenter(c: EvalConfig, loaded: LoadedModel, dev: torch.device) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of a segmenter on its validation split (module docstring)."""
    folder = segmentation_folder(c.data) if c.data else segmentation_folder(str(loaded.data.get("name") or ""))
    pre = loaded.data.get("preprocessing") if not c.data else None
    options = SegOptions(batch_size=1, eval_batch_size=c.batch_size, val_subset=c.subset, workers=c.workers,
                         preprocessing=pre, data_dir=c.data_dir, device=dev if dev.type != "cpu" else None)
    _, val_loader, info = load_segmentation(folder, options)
    if info.num_classes != loaded.model.num_classes:
        raise CheckpointError(f"{loaded.weights_file} was trained for {loaded.model.num_classes} classes but "
                              f"{info.name} has {info.num_classes}: evaluate on the dataset it was trained on")
    how = (SegEvalOptions.multi_scale(info.num_classes) if c.multi_scale else SegEvalOptions(info.num_classes))
    result = evaluate_segmentation(loaded.model.to(dev), val_loader, how)
    result.update({"model": loaded.model_name, "weights": loaded.weights, "weights_file": str(loaded.weights_file),
                   "data": info.name, "class_names": info.class_names, "device": str(dev), "task": "segmentation"})
    out = Path(c.out_dir) if c.out_dir else (loaded.run_dir / EVAL_DIR if loaded.run_dir else Path(EVAL_DIR))
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    mode = "multi-scale + flip" if c.multi_scale else "single scale"
    plot_per_class_iou(result["per_class_iou"], info.class_names, out / "per_class_iou.png",
                       title=f"{loaded.model_name} on {info.name}: mIoU {result['miou'] or 0:.2f}% ({mode})")
    result["outputs"] = {"json": str(out / "eval.json"), "per_class_iou_png": str(out / "per_class_iou.png")}
    return result


def _eval_detector(c: EvalConfig, loaded: LoadedModel, dev: torch.device) -> dict[str, Any]:
    """COCO box mAP of a detector on its validation split; ``eval.json``, ``detections.json``, ``per_class_ap.png``."""
    folder = detection_folder(c.data) if c.data else detection_folder(str(loaded.data.get("name") or ""))
    pre = loaded.data.get("preprocessing") if not c.data else None
    options = DetOptions(batch_size=1, eval_batch_size=c.batch_size, val_subset=c.subset, workers=c.workers,
                         resolution=int(loaded.data.get("resolution") or 320), preprocessing=pre,
                         data_dir=c.data_dir, device=dev if dev.type != "cpu" else None)
    _, val_loader, info = load_detection(folder, options)
    if info.num_classes != loaded.model.num_classes:
        raise CheckpointError(f"{loaded.weights_file} was trained for {loaded.model.num_classes} classes but "
                              f"{info.name} has {info.num_classes}: evaluate on the dataset it was trained on")
    result = evaluate_detection(loaded.model.to(dev), val_loader, info)
    detections = result.pop("results")
    result.update({"model": loaded.model_name, "weights": loaded.weights, "weights_file": str(loaded.weights_file),
                   "data": info.name, "class_names": info.class_names, "device": str(dev), "task": "detection",
                   "resolution": info.resolution})
    out = Path(c.out_dir) if c.out_dir else (loaded.run_dir / EVAL_DIR if loaded.run_dir else Path(EVAL_DIR))
    atomic_write_text(out / "detections.json", json.dumps(detections, allow_nan=False) + "\n")
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    names = info.class_names[1:]
    ap = [None if result["per_class_ap"].get(n) is None else result["per_class_ap"][n] / 100 for n in names]
    plot_per_class_iou(ap, names, out / "per_class_ap.png", xlabel="AP@[.5:.95]",
                       title=f"{loaded.model_name} on {info.name}: mAP {result['mAP']:.2f}%")
    result["outputs"] = {"json": str(out / "eval.json"), "detections_json": str(out / "detections.json"),
                         "per_class_ap_png": str(out / "per_class_ap.png")}
    return result
