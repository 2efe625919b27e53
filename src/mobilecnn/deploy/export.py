"""Export a model to a device file, verified before it is put in place.

:func:`export_model` runs the same four units for every format of the table (:mod:`mobilecnn.deploy.formats`):

1. **deploy form** (:func:`mobilecnn.deploy.fold.deploy_form`: BN folded, export-friendly head) plus the
   format's own transforms; the channel shuffle traced the way the format runs it fastest;
2. **write** with the format's writer (:mod:`mobilecnn.deploy.writers`) into a staging folder beside the
   destination (:mod:`mobilecnn.deploy.staging`);
3. **verify and settle the precision**: the written file is loaded in its own runtime and compared with
   PyTorch on real images (:mod:`mobilecnn.deploy.verify`); bf16/int8 are judged by their top-1 drop on a
   labelled check set, int8 with its calibration / float-layer fallback (:mod:`mobilecnn.deploy.precision`);
   a segmentation model (output N, K, H, W) must also give PyTorch's class on 99.9% of the verification
   pixels in fp32, and its bf16/int8 files are judged by their mIoU drop on (image, mask) pairs
   (:mod:`mobilecnn.deploy.dense`); a detector (raw outputs N, A, 4 + C, decoded by
   :func:`mobilecnn.models.ssd_boxes.detect` after any runtime) must also give PyTorch's detections in fp32,
   and its bf16/int8 files are judged by their COCO mAP drop (:mod:`mobilecnn.deploy.boxes`); its sidecar
   gets a ``detection`` block (anchors, feature sizes, post-processing, classes);
4. **commit**: only then are the file(s) and the sidecar moved into place (``os.replace``, fsynced). A file
   that fails is deleted and :class:`ExportVerificationError` or :class:`Int8AccuracyError` is raised
   with the numbers; an existing file at the destination is left untouched.

:func:`mobilecnn.deploy.run_export.export_run` does the same for a trained run directory. Batch dimension:
dynamic, except for formats whose files fix it
(:attr:`Format.static_batch`: ExecuTorch plans memory for one shape), where it is the example's unless
``max_batch`` is given; the runtime splits and pads other batch sizes, and the report says which it is.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..layers.shuffle import shuffle_traced_as_gather
from ..validators import check_int, check_number, check_threads
from .boxes import BoxJudge, BoxTruth, box_check_set, check_box_truth, detection_facts, facts_anchors, is_detection
from .dense import check_masks, is_dense
from .fold import DeployClassifier, deploy_form
from .formats import SIDECAR_SUFFIX, Format, format_named
from .precision import DEFAULT_MAX_DROP, Check, PrecisionJob, check_set, settle_precision
from .quantize import check_calibration
from .runtimes import Runtime
from .staging import commit, staging_folder
from .verify import BF16_RTOL, SEG_MIN_AGREEMENT, ExportReport, logits_of, verify_file
from .writers import WriteJob

__all__ = ["ExportConfig", "ExportImages", "ExportReport", "export_model"]


@dataclass(frozen=True)
class ExportConfig:
    """How to export: ``format`` (a :data:`FORMATS` name) at ``precision``; fp32 must match PyTorch to
    ``rtol``, bf16/int8 may lose at most ``max_drop`` top-1 points (mIoU points for a segmentation model);
    (mAP points for a detector); ``threads`` for verification;
    ``max_batch``: a dynamic batch 1..max_batch for a static-batch format; ``check_accuracy=False``
    (latency benchmarks only) skips the labelled check; ``int8_fallback=False``: the default
    calibration only."""

    format: str
    precision: str = "fp32"
    max_drop: float = DEFAULT_MAX_DROP
    threads: int = 1
    rtol: float = 1e-4
    max_batch: int | None = None
    opset: int | None = None
    check_accuracy: bool = True
    int8_fallback: bool = True


@dataclass
class ExportImages:
    """Real preprocessed images (float N, C, H, W): ``example`` fixes C, H, W (and a static batch);
    ``verify``: compared with PyTorch; ``calibration``: int8 calibration (256-512 training images);
    ``check``/``check_labels``: the labelled check set of bf16/int8: labels (N,), or for a segmentation model
    masks (N, H, W) of class indices at the check images' size, 255 = ignore; for a detector a
    :class:`~mobilecnn.deploy.boxes.BoxTruth` (COCO annotations, the check images' ids and original sizes).
    A segmentation output is ``K x H x W`` floats per image: keep ``verify`` to a few images (e.g. 8-16)."""

    example: torch.Tensor
    verify: torch.Tensor
    calibration: torch.Tensor | None = None
    check: torch.Tensor | None = None
    check_labels: torch.Tensor | BoxTruth | None = None


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy with standard strides: a size-1 dim can carry stride 0 (e.g. ``np_array[:, None]``),
    which ExecuTorch refuses to serialise ("0 in strides is not supported")."""
    return t.detach().float().cpu().clone(memory_format=torch.contiguous_format)


def _images(name: str, images: Any, example: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point() or len(images) == 0:
        raise ValueError(f"{name} must be a non-empty float tensor (N, C, H, W) of preprocessed images, got "
                         f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    if tuple(images.shape[1:]) != tuple(example.shape[1:]):
        raise ValueError(f"{name} has images of shape {tuple(images.shape[1:])}, the example input "
                         f"{tuple(example.shape[1:])}")
    return _fresh(images)


def _check_config(config: ExportConfig, fmt: Format) -> None:
    why = fmt.why_not(config.precision)
    if why:
        raise UsageError(why)
    check_threads(config.threads)
    check_number(config.rtol, "rtol", above=0)
    check_number(config.max_drop, "max_drop", minimum=0, accepted="a number >= 0 (top-1 points)")
    if config.max_batch is not None:
        if not fmt.static_batch:
            raise ValueError(f"max_batch applies to static-batch formats only ({fmt.name} files always have a "
                             "dynamic batch)")
        check_int(config.max_batch, "max_batch", minimum=2, accepted="an integer >= 2 (or None for a static batch)")


def _checked_images(images: ExportImages, config: ExportConfig, reference: nn.Module) -> ExportImages:
    """Validated float32 copies; calibration only for int8, the labelled set only where it is judged (masks
    for a segmentation ``reference``, kept as uint8; a :class:`BoxTruth` for a detector)."""
    ex = images.example
    if not isinstance(ex, torch.Tensor) or ex.dim() != 4 or not ex.is_floating_point():
        raise ValueError(f"example must be a float tensor (N, C, H, W), got {type(ex).__name__} "
                         f"{tuple(getattr(ex, 'shape', ()))}")
    ex = _fresh(ex)
    out = ExportImages(ex, _images("verify_images", images.verify, ex))
    if config.precision == "int8":
        out.calibration = check_calibration(images.calibration, ex)
    elif images.calibration is not None:
        raise ValueError("calibration images were given but the precision is not int8")
    if config.precision != "fp32" and config.check_accuracy:
        if images.check is None or images.check_labels is None:
            raise ValueError(f"{config.precision} export needs a labelled check set (check_images=, check_labels=) "
                             f"to refuse a model that loses more than max_drop={config.max_drop} top-1 points "
                             "(mIoU points, with masks, for a segmentation model; mAP points, with a BoxTruth, "
                             "for a detector)")
        out.check = _images("check_images", images.check, ex)
        with torch.no_grad():
            shape = tuple(reference(ex[:1]).shape)
        if is_detection(shape):
            out.check_labels = check_box_truth(images.check_labels, out.check, int(shape[2]) - 4)
            return out
        if isinstance(images.check_labels, BoxTruth):
            raise ValueError(f"check_labels is a detector's BoxTruth but the model returns {shape}, not raw "
                             "detections (N, A, 4 + C)")
        if is_dense(shape):
            if shape[2:] != tuple(ex.shape[2:]):
                raise ValueError(f"the model returns {shape[2]}x{shape[3]} class maps for {ex.shape[2]}x{ex.shape[3]} "
                                 "images; the mIoU check needs them at the input size")
            out.check_labels = check_masks(images.check_labels, out.check, shape[1])
            return out
        out.check_labels = torch.as_tensor(images.check_labels).long().reshape(-1)
        if len(out.check_labels) != len(out.check):
            raise ValueError(f"check_labels has {len(out.check_labels)} entries for {len(out.check)} check images")
    return out


def _deploy_net(model: nn.Module, fmt: Format, example: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """The deploy form with the format's transforms, and what was done to it."""
    net = deploy_form(model)
    notes = ["BatchNorm folded into the convolutions"]
    if isinstance(net, DeployClassifier):
        notes.append("head exported as global pool -> 1x1 conv -> flatten (same arithmetic as the Linear)")
    for transform in fmt.transforms:
        notes.extend(transform(net, example))
    return net, notes


@dataclass
class _StagedFile:
    """The file being exported, written and verified inside the staging folder (one attempt per call)."""

    fmt: Format
    net: nn.Module
    target: Path
    images: ExportImages
    config: ExportConfig
    reference: Any
    report: ExportReport
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    boxes: BoxJudge | None = None

    def attempt(self, method: str | None, exclude: tuple[str, ...]) -> tuple[Runtime, ExportReport]:
        stage = self.target.parent
        for p in stage.iterdir():
            if p.is_file():
                p.unlink()
        job = WriteJob(work=Path(tempfile.mkdtemp(prefix="work-", dir=stage)), precision=self.config.precision,
                       calibration=self.images.calibration, method=method, exclude=exclude,
                       max_batch=self.config.max_batch, opset=self.config.opset, metadata=self.metadata)
        gather = shuffle_traced_as_gather() if self.fmt.shuffle == "gather" else contextlib.nullcontext()
        with gather:
            written = self.fmt.writer(self.net, self.images.example, self.target, job)
        shutil.rmtree(job.work)
        report = copy.copy(self.report)
        report.notes = self.notes + [n for n in written if n not in self.notes]
        report.file_bytes = sum(p.stat().st_size for p in stage.iterdir() if p.is_file())
        gated = self.config.precision == "fp32" or (self.config.precision == "bf16" and not self.config.check_accuracy)
        tolerance = (BF16_RTOL if self.config.precision == "bf16" else self.config.rtol) if gated else None
        fp32 = self.config.precision == "fp32"
        boxes = None if self.boxes is None else dataclasses.replace(self.boxes, gated=fp32)
        runtime = verify_file(self.target, report, self.reference, self.images.verify, threads=self.config.threads,
                              tolerance=tolerance, min_pixel_agreement=SEG_MIN_AGREEMENT if fp32 else None,
                              boxes=boxes)
        return runtime, report


def _base_report(out_path: Path, fmt: Format, config: ExportConfig, example: torch.Tensor) -> ExportReport:
    dynamic = not fmt.static_batch or config.max_batch is not None
    static_batch = None if dynamic else int(example.shape[0])
    notes = []
    if fmt.static_batch:
        notes.append(f"dynamic batch 1..{config.max_batch} (memory planned for {config.max_batch})" if dynamic else
                     f"static batch {static_batch} (the example's); the runtime splits/pads other batch sizes")
    scheme = (fmt.int8_scheme or "int8") if config.precision == "int8" else config.precision
    return ExportReport(path=out_path, format=fmt.name, precision=config.precision, max_abs_diff=float("nan"),
                        rel_diff=float("nan"), top1_agreement=0.0, file_bytes=0, notes=notes, dynamic_batch=dynamic,
                        static_batch=static_batch, scheme=scheme)


def _detector(reference: nn.Module, example: torch.Tensor, sidecar: dict[str, Any] | None
              ) -> tuple[BoxJudge | None, dict[str, Any] | None]:
    """A detector's verification judge and its sidecar with the ``detection`` block (None and the sidecar as
    given for any other model)."""
    with torch.no_grad():
        shape = tuple(reference(example[:1]).shape)
    if not is_detection(shape):
        return None, sidecar
    h, w = int(example.shape[2]), int(example.shape[3])
    facts = detection_facts(reference, h, w, (sidecar or {}).get("data"))
    anchors = facts_anchors(facts, "the detection block")  # the sidecar's own recipe, as predict rebuilds them
    own = getattr(reference, "anchors", None)
    if anchors.shape[0] != shape[1] or (callable(own) and not torch.equal(own(h, w).cpu(), anchors)):
        raise ValueError(f"the detector returns {shape[1]} rows for {h}x{w} images but the anchors its spec and "
                         f"feature sizes make ({anchors.shape[0]}) are not its own")
    return BoxJudge(anchors), None if sidecar is None else {**sidecar, "detection": facts}


def _check_set(reference: nn.Module, images: ExportImages, ref: Any, boxes: BoxJudge | None) -> Check | None:
    if images.check is None or images.check_labels is None:
        return None
    if isinstance(images.check_labels, BoxTruth):
        assert boxes is not None
        return box_check_set(reference, images.check, images.check_labels, boxes.anchors)
    return check_set(reference, images.check, images.check_labels, int(ref.shape[1]) if ref.ndim == 4 else None)


def export_model(model: nn.Module, out_path: str | Path, images: ExportImages, config: ExportConfig,
                 sidecar: dict[str, Any] | None = None) -> ExportReport:
    """Export ``model`` as ``config.format`` to ``out_path`` and verify the written file (module docstring).

    ``sidecar``: written as ``<out_path>.mobilecnn.json`` with the report added, committed together with
    the model file (the previous pair stays until both new files are complete).
    """
    fmt = format_named(config.format)
    out_path = Path(out_path)
    if out_path.suffix.lower() not in fmt.suffixes:
        raise UsageError(f"{out_path}: a {fmt.name} file must end in {' or '.join(fmt.suffixes)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_model expects an nn.Module, got {type(model).__name__}")
    _check_config(config, fmt)
    reference = copy.deepcopy(model).eval()
    images = _checked_images(images, config, reference)
    boxes, sidecar = _detector(reference, images.example, sidecar)
    net, notes = _deploy_net(model, fmt, images.example)
    try:
        with staging_folder(out_path, "export") as stage:
            ref = logits_of(reference, images.verify)
            check = _check_set(reference, images, ref, boxes)
            base = _base_report(out_path, fmt, config, images.example)
            staged = _StagedFile(fmt, net, stage / out_path.name, images, config, ref, base, base.notes + notes,
                                 None if sidecar is None else {**sidecar, "precision": config.precision}, boxes)
            job = PrecisionJob(fmt, config.precision, config.max_drop, config.int8_fallback, net, images.calibration)
            runtime, report = settle_precision(job, staged.attempt, check)
            del runtime
            report.path = out_path
            if sidecar is not None:
                text = json.dumps({**sidecar, "precision": config.precision, "report": report.to_dict()}, indent=2,
                                  default=str) + "\n"
                (stage / (out_path.name + SIDECAR_SUFFIX)).write_text(text)
            commit(stage, out_path.parent, out_path.name)
            return report
    except OSError as exc:  # disk full, read-only...: say which file could not be written
        if exc.filename or not exc.errno:
            raise
        raise OSError(exc.errno, f"{exc.strerror}: could not write {out_path}") from None
