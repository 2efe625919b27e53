"""Detection prediction: image files -> each image with its boxes drawn, and the boxes in COCO's results format.

A predictor from :func:`mobilecnn.deploy.predict.load_predictor` (a run directory, a ``.safetensors`` file or an
exported file with its sidecar) is a detection predictor when its model's registry entry (or the sidecar's
dataset description) has ``task == "detection"``. Each image is

1. decoded to 8-bit RGB (:func:`mobilecnn.data.images.load_image`: EXIF orientation, any mode);
2. warped whole to the model's square input and normalised, as the detection evaluation does
   (:class:`~mobilecnn.data.images.Preprocessing`, ``resize="square"``);
3. run through the model or the exported file: raw outputs ``(N, A, 4 + C)``, images of a batch together;
4. decoded by :func:`mobilecnn.models.ssd_boxes.detect` -- the one post-processing definition of PyTorch and
   every runtime -- with the anchors rebuilt from the ``detection`` facts (the sidecar's block:
   :func:`mobilecnn.deploy.boxes.facts_anchors`) and the recorded NMS settings, at ``score_threshold``; the
   boxes, fractions of the image, scaled to its own width and height.

Written into the output folder (created if missing; every file atomically): ``<stem>_boxes.png``, the image at
its own size with each box, its class name and score drawn (Pascal VOC colours by class), and
:data:`RESULTS_FILE`, COCO's results format -- ``image_id`` (the image's position among the inputs, from 1),
``category_id`` (the dataset's COCO id of the class), ``bbox`` ``[x, y, width, height]`` in the image's own
pixels, ``score`` -- plus ``file_name`` (the input path), rewritten after every batch. Same stems get ``-2``,
``-3``...; a file that cannot be decoded gets an error naming it while the others go on (as
:mod:`.predict_masks`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.scenes_compose import voc_palette
from ..errors import CheckpointError, DataError, NonFiniteError, UsageError
from ..files import atomic_write, atomic_write_text
from ..models.ssd_boxes import Detections, PostProcess, detect, to_pixels
from ..train.detect_eval import coco_results
from ..validators import check_number, is_int
from .boxes import facts_anchors, facts_post
from .predict import Predictor, expand_inputs
from .predict_masks import OutputNames, decode, out_folder

__all__ = ["DEFAULT_SCORE", "BOXES_SUFFIX", "RESULTS_FILE", "BoxPrediction", "Detector", "detection_predictor",
           "check_score_threshold", "iter_box_predictions", "predict_boxes"]

#: The lowest score of a box drawn and listed unless the caller says otherwise.
DEFAULT_SCORE = 0.3
BOXES_SUFFIX = "_boxes.png"
#: The COCO results of every image, in the output folder.
RESULTS_FILE = "detections.json"


@dataclass
class BoxPrediction:
    """One image's result: ``detections`` as ``(class name, score, (x1, y1, x2, y2))`` in the image's pixels,
    best first; ``boxes`` the PNG written; ``image_id`` its id in :data:`RESULTS_FILE`; ``note`` says when the
    output name was changed; ``error`` is set instead for a file that could not be read."""

    path: str
    image_id: int
    detections: list[tuple[str, float, tuple[float, float, float, float]]] = field(default_factory=list)
    boxes: str | None = None
    size: tuple[int, int] | None = None  # (width, height)
    note: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        dets = [{"label": name, "score": score, "box": list(box)} for name, score, box in self.detections]
        return {"path": self.path, "image_id": self.image_id, "detections": dets, "boxes": self.boxes,
                "size": list(self.size) if self.size else None, "note": self.note, "error": self.error}


@dataclass(frozen=True)
class Detector:
    """A detection predictor with what turns its raw outputs into boxes."""

    predictor: Predictor
    anchors: torch.Tensor
    post: PostProcess
    class_names: list[str]
    category_ids: list[int]


def check_score_threshold(value: Any) -> float:
    """``value`` when it is a number in [0, 1) (a one-line :class:`UsageError` otherwise)."""
    return check_number(value, "--score-threshold", minimum=0, below=1)


def detection_predictor(predictor: Predictor, score_threshold: float = DEFAULT_SCORE) -> Detector:
    """``predictor`` checked to be a detector reading RGB, its resize made "square" (the whole image goes in, as
    in the evaluation), with its anchors and post-processing at ``score_threshold``."""
    check_score_threshold(score_threshold)
    if predictor.task != "detection":
        what = "masks (mobilecnn.deploy.predict_masks)" if predictor.task == "segmentation" else \
            "labels (mobilecnn.deploy.predict.predict_files)"
        raise UsageError(f"{predictor.source} is a {predictor.task} model, not a detector: its predictions are {what}")
    facts = predictor.detection
    if not isinstance(facts, dict):
        raise CheckpointError(f"{predictor.source}: no detection block (anchors, post-processing) in its description; "
                              "export it again with this version")
    anchors = facts_anchors(facts, predictor.source)
    pre = predictor.preprocessing
    if pre.in_chans != 3:
        raise CheckpointError(f"{predictor.source}: its preprocessing makes {pre.in_chans}-channel images; detectors "
                              "read RGB images (in_chans 3)")
    if list(facts["input_size"]) != [pre.resolution, pre.resolution]:
        raise CheckpointError(f"{predictor.source}: its anchors are for {facts['input_size']} inputs but its "
                              f"preprocessing makes {pre.resolution}x{pre.resolution}; export it again")
    if pre.resize != "square":
        predictor = dataclasses.replace(predictor, preprocessing=dataclasses.replace(pre, resize="square"))
    names = _class_names(predictor, facts)
    cats = facts.get("category_ids")
    if not (isinstance(cats, list) and len(cats) == len(names) - 1 and all(is_int(c) for c in cats)):
        cats = list(range(1, len(names)))  # no COCO ids recorded: the labels themselves
    return Detector(predictor, anchors, facts_post(facts, predictor.source, score_threshold), names, cats)


def _class_names(predictor: Predictor, facts: dict[str, Any]) -> list[str]:
    """The predictor's class names (background first), else the detection block's, else numbers."""
    names = predictor.class_names or facts.get("class_names")
    if isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names):
        return list(names)
    k = facts.get("num_classes")
    if not (isinstance(k, int) and 2 <= k <= 100_000):
        raise CheckpointError(f"{predictor.source}: its description names neither the classes nor their number")
    return [str(i) for i in range(k)]


def _checked_raw(raw: Any, detector: Detector, count: int) -> torch.Tensor:
    out = np.asarray(raw, dtype=np.float32)
    source, k = detector.predictor.source, len(detector.class_names)
    if out.ndim != 3 or out.shape[0] != count or out.shape[1] != detector.anchors.shape[0] or out.shape[2] != 4 + k:
        raise CheckpointError(f"{source}: outputs of shape {out.shape} for {count} image(s), not raw detections "
                              f"(N, {detector.anchors.shape[0]}, {4 + k}): the sidecar does not belong to this file")
    if not np.isfinite(out).all():
        raise NonFiniteError(f"{source} produced NaN/inf outputs: its weights or preprocessing are broken; no box is "
                             "written")
    return torch.from_numpy(out)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's own font at ``size`` px (legible on a large photo), its fixed bitmap font without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def _draw(image: torch.Tensor, det: Detections, names: Sequence[str], path: Path) -> Path:
    """The image (uint8 3, H, W) with the boxes of ``det`` (pixels) drawn, the best last (on top)."""
    picture = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    draw = ImageDraw.Draw(picture)
    font = _font(max(11, round(max(picture.size) / 45)))
    palette = voc_palette()
    width = max(1, round(max(picture.size) / 300))
    for i in reversed(range(len(det))):
        label = int(det.labels[i])
        colour = tuple(palette[3 * (label % 256):3 * (label % 256) + 3])
        x1, y1, x2, y2 = (float(v) for v in det.boxes[i])
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=width)
        text = f"{names[label] if label < len(names) else label} {float(det.scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        y = y1 - (bottom - top) - 2 if y1 >= (bottom - top) + 2 else y1  # above the box, inside at the top edge
        draw.rectangle([x1, y, x1 + right - left + 2, y + bottom - top + 2], fill=colour)
        ink = (0, 0, 0) if sum(colour) > 384 else (255, 255, 255)
        draw.text((x1 + 1, y + 1 - top), text, fill=ink, font=font)
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


@dataclass
class _Job:
    result: BoxPrediction
    image: torch.Tensor  # uint8 (3, H, W)
    path: Path


def _detect(jobs: list[_Job], detector: Detector) -> list[dict[str, Any]]:
    """Boxes of a batch: the PNGs written, the results filled; returns their COCO records."""
    pre = detector.predictor.preprocessing
    raw = _checked_raw(detector.predictor.logits(np.stack([pre(job.image).numpy() for job in jobs])), detector,
                       len(jobs))
    dets = detect(raw, detector.anchors, detector.post)
    records = []
    for job, det in zip(jobs, dets):
        h, w = (int(v) for v in job.image.shape[1:])
        px = to_pixels(det, w, h)
        names = detector.class_names
        job.result.size = (w, h)
        job.result.detections = [(names[int(c)] if int(c) < len(names) else str(int(c)), float(s),
                                  tuple(round(float(v), 2) for v in b))  # type: ignore[misc]
                                 for b, s, c in zip(px.boxes, px.scores, px.labels)]
        job.result.boxes = str(_draw(job.image, px, names, job.path))
        for record in coco_results([det], [job.result.image_id], [(w, h)], detector.category_ids):
            records.append({**record, "file_name": job.result.path})
    return records


def iter_box_predictions(inputs: Sequence[str | Path], predictor: Predictor, out_dir: str | Path | None = None,
                         score_threshold: float = DEFAULT_SCORE, batch_size: int = 4) -> Iterator[BoxPrediction]:
    """Boxes of every image (directories: every image in them) drawn into ``out_dir`` (default
    ``./predictions``), results in input order, ``batch_size`` images at a time; :data:`RESULTS_FILE` there holds
    the COCO results of every image done so far."""
    if not is_int(batch_size) or batch_size < 1:
        raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    detector = detection_predictor(predictor, score_threshold)
    files = expand_inputs(inputs)
    out = out_folder(out_dir, "the box images and detections.json")
    names = OutputNames(out, files, (BOXES_SUFFIX,))
    records: list[dict[str, Any]] = []
    pending: list[BoxPrediction] = []
    jobs: list[_Job] = []

    def flush() -> None:
        if jobs:
            records.extend(_detect(jobs, detector))
        lines = ",\n".join(json.dumps(r) for r in records)  # one detection a line
        atomic_write_text(out / RESULTS_FILE, f"[\n{lines}\n]\n" if records else "[]\n")

    for number, path in enumerate(files, start=1):
        result = BoxPrediction(str(path), number)
        pending.append(result)
        try:
            image = decode(path)
        except DataError as exc:
            result.error = str(exc)
        else:
            (png,), result.note = names.take(path)
            jobs.append(_Job(result, image, png))
        if len(jobs) >= batch_size:
            flush()
            yield from pending
            pending, jobs = [], []
    flush()  # also when no image could be read: an empty results file, not a stale one
    yield from pending


def predict_boxes(inputs: Sequence[str | Path], predictor: Predictor, out_dir: str | Path | None = None,
                  score_threshold: float = DEFAULT_SCORE, batch_size: int = 4) -> list[BoxPrediction]:
    """:func:`iter_box_predictions` as a list."""
    return list(iter_box_predictions(inputs, predictor, out_dir, score_threshold, batch_size))
