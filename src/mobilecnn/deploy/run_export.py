"""``mobilecnn export RUN``: a trained run directory to a verified device file, with its own data.

:func:`export_run` reads the run (model, weights, dataset, preprocessing), samples real images of the
dataset it was trained on -- training images for int8 calibration, held-out images for verification and
the bf16/int8 accuracy check -- and calls :func:`mobilecnn.deploy.export.export_model` (one format) or
:func:`mobilecnn.deploy.auto.auto_export` (``--format auto``). Beside the file it writes the
``<file>.mobilecnn.json`` sidecar (model, labels, preprocessing, verification numbers) that ``predict``
and ``bench`` read.

A run trained on a segmentation dataset (its data description a ``SegDataInfo``: ``"task":
"segmentation"``) is exported on its own data: images and masks of its folder at the run's resolution (the
training crop), the images resized bilinearly and the masks nearest-neighbour
(:func:`mobilecnn.data.segmentation_samples.segmentation_samples`); its bf16/int8 files are judged by their
mIoU drop. Its outputs are ``K x H x W`` per image, so the verification set is :data:`SEG_VERIFY_COUNT`
images at most and the check and calibration sets are bounded by input pixels (:data:`SEG_CHECK_PIXELS`,
:data:`SEG_CALIBRATION_PIXELS`); the result's notes say when they cut the counts asked for.

A run trained on a detection dataset (a ``DetDataInfo``: ``"task": "detection"``, ``"name": "coco:/folder"``) is
exported on its own COCO folder the same way (``--data-dir`` overrides it): val images warped to the run's
square input as its evaluation does (:func:`mobilecnn.data.detection.load_detection`), with their COCO ids,
original sizes and the val annotations as the mAP check's ground truth
(:class:`~mobilecnn.deploy.boxes.BoxTruth`); int8 calibration on un-augmented training images. The same
bounds apply (the images are held in memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import Preprocessing, load_data, locate_dataset
from ..data.detection import DetOptions, load_detection
from ..data.names import FASHION_MNIST, segmentation_folder
from ..data.segmentation_samples import segmentation_samples
from ..errors import DataError, UsageError
from ..fields import cli, positive_int
from ..runs.rundir import load_trained
from ..validators import check_int, check_number, check_positive_int
from .auto import DEFAULT_SECONDS, AutoConfig, auto_candidates, auto_export
from .boxes import BoxTruth
from .export import ExportConfig, ExportImages, export_model
from .formats import FORMATS, PRECISIONS, SIDECAR_SUFFIX
from .imported_images import imported_images, is_imported
from .precision import DEFAULT_MAX_DROP

__all__ = ["RunExportConfig", "export_run", "sample_images", "MAX_CALIBRATION", "SEG_VERIFY_COUNT",
           "SEG_CHECK_PIXELS", "SEG_CALIBRATION_PIXELS"]

#: The largest batch --format auto times its candidates at (its input is held in memory by every runtime).
MAX_AUTO_BATCH = 1024
MAX_CALIBRATION = 2048  # int8 calibration holds activations of every image: 60,000 tiny images took 21 GB
#: Segmentation runs: at most this many verification images (their logits are K x H x W each) ...
SEG_VERIFY_COUNT = 16
#: ... and at most this many input pixels in those, in the mIoU check set and in the int8 calibration set
#: (513 x 513 crops: 7 verification, 63 check and 15 calibration images; 128 x 128: 16, 1024 and 256).
SEG_VERIFY_PIXELS = 1 << 21
SEG_CHECK_PIXELS = 1 << 24
SEG_CALIBRATION_PIXELS = 1 << 22


def sample_images(data: str, *, data_dir: str | None, resolution: int, split: str, count: int, seed: int = 0,
                  preprocessing: Preprocessing | dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``count`` preprocessed real images and their labels from a dataset split ("train" or "val");
    ``preprocessing``: a fine-tuned run's own (see :func:`mobilecnn.data.load_data`)."""
    # batch 1 for the training split: any dataset with at least one image can be sampled
    train_loader, val_loader, _ = load_data(data, data_dir=data_dir, resolution=resolution, batch_size=1,
                                            eval_batch_size=256, seed=seed,
                                            val_subset=count if split == "val" else None,
                                            workers=0, preprocessing=preprocessing)
    loader = val_loader if split == "val" else train_loader
    xs, ys, n = [], [], 0
    for x, y in loader.batches(0):
        xs.append(x)
        ys.append(y)
        n += len(y)
        if n >= count:
            break
    return torch.cat(xs)[:count], torch.cat(ys)[:count]


@dataclass(frozen=True)
class RunExportConfig:
    """``mobilecnn export RUN``: every option, its default and help (the CLI is generated from it)."""

    run: str = field(default="", metadata=cli("trained run directory (or its model.safetensors)",
                                              positional=True, metavar="RUN_DIR"))
    format: str = field(default="", metadata=cli(
        "a format, or auto: every installed runtime x precision, verified and timed; keeps the fastest",
        required=True, choices=[*FORMATS, "auto"]))
    precision: str | None = field(default=None, metadata=cli(
        "fp32 (default), bf16 (formats offering it, CPUs with bf16), int8 (calibrated on real training images); "
        "not with --format auto, which tries every precision", choices=list(PRECISIONS)))
    out: str | None = field(default=None, metadata=cli("output file (default RUN_DIR/export/MODEL[_PRECISION].EXT)"))
    calibration_data: str | None = field(default=None, metadata=cli(
        "dataset for int8 calibration (default: the run's training set); for imported weights, a folder of images "
        "that calibrates int8 and checks it by agreement with fp32"))
    calibration_count: int = field(default=512, metadata=cli(
        f"int8 calibration images, 32 to {MAX_CALIBRATION} (256-512 recommended)", type=positive_int))
    check_count: int = field(default=2000, metadata=cli("held-out images of the bf16/int8 accuracy check",
                                                        type=positive_int))
    data_dir: str | None = field(default=None, metadata=cli(
        "where the run's dataset lies (default: its recorded place)"))
    max_drop: float = field(default=DEFAULT_MAX_DROP, metadata=cli(
        "refuse bf16/int8 losing more top-1 points (mIoU points for a segmentation run, COCO mAP points for a "
        "detection run) than this (int8 first "
        "tries other calibrations and keeps the most sensitive layers in float)"))
    threads: int = field(default=1, metadata=cli("runtime threads for verification and timing", type=positive_int))
    batch: int = field(default=1, metadata=cli("auto: batch size the candidates are timed at", type=positive_int))
    seconds: float | None = field(default=None, metadata=cli(
        f"auto: seconds of timing per candidate (default {DEFAULT_SECONDS:g})"))
    candidates: list[str] | None = field(default=None, metadata=cli(
        f"auto: try only these formats ({', '.join(FORMATS)}; default: every installed one), e.g. the runtimes the "
        "target device has", nargs="+", choices=list(FORMATS), metavar="FORMAT"))


def _check(config: RunExportConfig) -> None:
    auto = config.format == "auto"
    if not auto and config.format not in FORMATS:
        raise UsageError(f"unknown export format {config.format!r}; accepted: {', '.join(FORMATS)}, auto")
    if auto and config.precision is not None:
        raise UsageError("--precision does not apply to --format auto, which tries every precision the formats offer; "
                         "pass --format FORMAT --precision P for one file")
    if not auto and (config.candidates is not None or config.seconds is not None or config.batch != 1):
        raise UsageError("--candidates, --seconds and --batch apply to --format auto only")
    if config.precision is not None and config.precision not in PRECISIONS:
        raise UsageError(f"unknown precision {config.precision!r}; accepted: {', '.join(PRECISIONS)}")
    check_int(config.batch, "--batch", minimum=1, maximum=MAX_AUTO_BATCH,
              accepted=f"an integer in [1, {MAX_AUTO_BATCH}] (a phone runs batch 1)")
    if config.seconds is not None:
        check_number(config.seconds, "--seconds", above=0)
    check_number(config.max_drop, "--max-drop", minimum=0)
    check_positive_int(config.check_count, "--check-count")
    if auto or config.precision == "int8":  # calibration keeps every activation: bounded
        check_int(config.calibration_count, "--calibration-count", minimum=32, maximum=MAX_CALIBRATION,
                  accepted=f"an integer in [32, {MAX_CALIBRATION}] (256-512 recommended)")


def _default_out(config: RunExportConfig, model_name: str, run_dir: Path | None) -> Path:
    if config.out is not None:
        out = Path(config.out)
        if config.format == "auto" and out.suffix.lower() in {s for f in FORMATS.values() for s in f.suffixes}:
            out = out.with_suffix("")
        return out
    base = run_dir if run_dir is not None else Path(config.run).parent
    if config.format == "auto":
        return Path(base) / "export" / f"{model_name}_auto"
    precision = config.precision or "fp32"
    tag = "" if precision == "fp32" else f"_{precision}"
    return Path(base) / "export" / f"{model_name}{tag}{FORMATS[config.format].suffix}"


def _bounded(count: int, pixels: int, side: int, what: str, notes: list[str]) -> int:
    """``count`` images of ``side`` x ``side``, at most ``pixels`` input pixels in all (a note when cut)."""
    most = max(1, pixels // (side * side))
    if count > most:
        notes.append(f"{what}: {most} images of {side}x{side} instead of {count} (dense outputs and the images held "
                     f"in memory are large; at most {pixels} input pixels)")
    return min(count, most)


def _segmentation_images(config: RunExportConfig, info: dict[str, Any], preprocessing: Preprocessing,
                         checked: bool, calibrated: bool) -> tuple[ExportImages, list[str]]:
    """A segmentation run's export images (module docstring) and notes on the counts cut by the pixel bounds."""
    folder = config.data_dir or segmentation_folder(str(info.get("name") or ""))
    if not folder:
        raise UsageError(f"the run's dataset description names no folder ({info.get('name')!r}); pass --data-dir")
    r = preprocessing.resolution
    notes: list[str] = []

    def sample(data: str, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return segmentation_samples(data, r, split, count, preprocessing=preprocessing)

    verify_count = min(SEG_VERIFY_COUNT, max(1, SEG_VERIFY_PIXELS // (r * r)))
    if checked:
        check, masks = sample(folder, "val", _bounded(config.check_count, SEG_CHECK_PIXELS, r, "mIoU check set",
                                                      notes))
        verify = check[:verify_count]
    else:
        check, masks = None, None
        verify = sample(folder, "val", verify_count)[0]
    calibration = sample(config.calibration_data or folder, "train", _bounded(
        config.calibration_count, SEG_CALIBRATION_PIXELS, r, "int8 calibration set", notes))[0] if calibrated else None
    return ExportImages(verify[:1], verify, calibration, check, masks), notes


@dataclass
class _DetSamples:
    images: torch.Tensor
    info: Any  # the DetDataInfo of the folder read
    image_ids: list[int]
    sizes: list[tuple[int, int]]


def _detection_samples(folder: str, split: str, count: int, preprocessing: Preprocessing) -> _DetSamples:
    """Up to ``count`` images of a split of the COCO ``folder``, warped to the square input as the evaluation
    does (training images without augmentation), with the val images' ids and original sizes."""
    val = split == "val"
    options = DetOptions(batch_size=1, eval_batch_size=8, resolution=preprocessing.resolution,
                         subset=1 if val else count, val_subset=count if val else 1, workers=0,
                         preprocessing=preprocessing, photometric=False, zoom_out=False, iou_crop=False, flip=False)
    try:
        train, val_batches, info = load_detection(folder, options)
    except DataError as exc:
        raise DataError(f"{str(exc).rstrip('.')} (the detection export reads its images there; pass --data-dir or "
                        "--calibration-data a COCO-layout folder)") from None
    loader = val_batches if val else train
    xs, n = [], 0
    for x, _ in loader.batches(0):
        xs.append(x)
        n += len(x)
        if n >= count:
            break
    return _DetSamples(torch.cat(xs)[:count], info, loader.image_ids[:count], loader.image_sizes[:count])


def _detection_images(config: RunExportConfig, info: dict[str, Any], preprocessing: Preprocessing,
                      checked: bool, calibrated: bool) -> tuple[ExportImages, list[str]]:
    """A detection run's export images (module docstring): val images with their COCO ground truth."""
    layout, _, recorded = str(info.get("name") or "").partition(":")
    folder = config.data_dir or (recorded if layout == "coco" and recorded else None)
    if not folder:
        raise UsageError(f"the run's dataset description names no COCO folder ({info.get('name')!r}); pass "
                         "--data-dir FOLDER (a COCO-layout detection dataset) for the verification images and the "
                         "mAP check")
    r = preprocessing.resolution
    notes: list[str] = []
    verify_count = min(SEG_VERIFY_COUNT, max(1, SEG_VERIFY_PIXELS // (r * r)))
    cut: list[str] = []
    count = _bounded(config.check_count, SEG_CHECK_PIXELS, r, "mAP check set", cut) if checked else verify_count
    val = _detection_samples(folder, "val", count, preprocessing)
    notes += cut if len(val.images) >= count else []  # a smaller val split was not cut by the bound
    names = info.get("class_names")
    if names and list(val.info.class_names) != list(names):
        raise UsageError(f"{folder} has the classes {val.info.class_names[1:]} but the run was trained on "
                         f"{list(names)[1:]}; pass --data-dir the run's dataset")
    truth = BoxTruth(val.info.val_annotations, tuple(val.image_ids), tuple(val.sizes),
                     tuple(val.info.category_ids)) if checked else None
    calibration = None
    if calibrated:
        cut = []
        count = _bounded(config.calibration_count, SEG_CALIBRATION_PIXELS, r, "int8 calibration set", cut)
        calibration = _detection_samples(config.calibration_data or folder, "train", count, preprocessing).images
        notes += cut if len(calibration) >= count else []
    verify = val.images[:verify_count]
    return ExportImages(verify[:1], verify, calibration, val.images if checked else None, truth), notes


def _run_images(config: RunExportConfig, info: dict[str, Any], preprocessing: Preprocessing,
                checked: bool, calibrated: bool) -> tuple[ExportImages, list[str]]:
    """The export images of a classification run: real images of its dataset, and notes."""
    dataset, data_dir = locate_dataset(info.get("name") or FASHION_MNIST, config.data_dir)
    own = info.get("preprocessing")  # a fine-tuned run: its init weights' normalisation

    def sample(data: str, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_images(data, data_dir=data_dir, resolution=preprocessing.resolution, split=split, count=count,
                             preprocessing=own)

    verify, labels = sample(dataset, "val", config.check_count if checked else 256)
    calibration = sample(config.calibration_data or dataset, "train", config.calibration_count)[0] \
        if calibrated else None
    notes = []
    if calibration is not None and len(calibration) < 32:
        notes.append(f"int8 calibrated on only {len(calibration)} training images (the dataset has no more): "
                     "ranges may be poor, the accuracy check decides")
    return ExportImages(verify[:1], verify[:256], calibration, verify if checked else None,
                        labels if checked else None), notes


def export_run(run: str | Path, fmt: str, out: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Export a trained run (``options``: the other :class:`RunExportConfig` fields); returns the export
    report (or the auto table) plus the sidecar path. Raises on failure, leaving nothing behind.
    A segmentation run (module docstring) is verified per pixel and judged by its mIoU drop, a detection run by
    its detections and its COCO mAP drop."""
    config = RunExportConfig(run=str(run), format=fmt, out=None if out is None else str(out), **options)
    _check(config)
    auto = config.format == "auto"
    precision = config.precision or "fp32"
    loaded = load_trained(config.run)
    info = loaded.data
    preprocessing = Preprocessing.for_dataset(info, f"{loaded.weights_file} metadata")
    checked, calibrated = precision != "fp32" or auto, auto or precision == "int8"
    if is_imported(info):
        images, notes = imported_images(loaded.model, preprocessing, config.calibration_data,
                                        (config.calibration_count, config.check_count), checked)
    else:
        gather = {"segmentation": _segmentation_images, "detection": _detection_images}.get(str(info.get("task")),
                                                                                             _run_images)
        images, notes = gather(config, info, preprocessing, checked, calibrated)
    sidecar = {"model": loaded.model_name, "weights": loaded.weights, "source": str(loaded.weights_file),
               "format": config.format, "data": info, "preprocessing": preprocessing.to_dict()}
    out_path = _default_out(config, loaded.model_name, loaded.run_dir)
    if auto:
        result = auto_export(loaded.model, out_path, images, AutoConfig(
            max_drop=config.max_drop, threads=config.threads, batch=config.batch,
            seconds=config.seconds or DEFAULT_SECONDS,
            candidates=None if config.candidates is None else tuple(auto_candidates(config.candidates))), sidecar)
        result["notes"] = notes
        if result["kept"]:
            result["sidecar"] = result["kept"] + SIDECAR_SUFFIX
        return result
    report = export_model(loaded.model, out_path, images, ExportConfig(
        config.format, precision, max_drop=config.max_drop, threads=config.threads), sidecar)
    report.notes.extend(notes)
    return {**report.to_dict(), "sidecar": str(Path(str(report.path) + SIDECAR_SUFFIX))}
