"""Detection models in export: raw outputs of shape (N, A, 4 + C), compared and judged by their detections.

A detector of the zoo (:class:`mobilecnn.models.ssd.SSD`) is exported up to its raw head outputs: per anchor four
box offsets and ``C`` class logits. Decoding and NMS are :func:`mobilecnn.models.ssd_boxes.detect`, run after
every runtime as after PyTorch: one post-processing definition, as one preprocessing definition serves every
runtime (docs/deployment.md says why). What differs from a classifier is here:

* **The sidecar's "detection" block** (:func:`detection_facts`): the input side, the anchor spec and the
  feature-map sizes (so :func:`facts_anchors` rebuilds the anchors with ``grid_anchors`` without building the
  model), the box coder's weights, the post-processing defaults, the class names and COCO category ids.
* **fp32 verification** (:class:`BoxJudge`, :func:`compare_detections`): besides the raw outputs' closeness
  (``rtol``, as a classifier's logits), the file's detections must be PyTorch's on every verification image:
  each detection scoring at least :data:`VERIFY_SCORE` on either side has a partner on the other side of the
  same class, scoring at least ``VERIFY_SCORE - SCORE_BORDER``, whose box overlaps it with IoU >=
  :data:`MIN_BOX_IOU` (one to one). The border keeps a detection scoring 0.3001 in PyTorch and 0.2999 in the
  file from counting as a difference. One more case is not a difference: NMS keeping, of two overlapping boxes
  of equal score (a confident detector's neighbouring anchors both at 0.9999...), the other one on the other
  side: a detection left unpaired counts as such an *NMS tie* when its own anchor, on the other side, gives the
  same class score (above the border) and the same box (IoU >= 0.99) -- the network agrees there, and the same
  NMS code can only differ by the order of equal scores. The ties are counted in the report.
* **bf16 / int8** (:class:`BoxCheckSet`, :class:`MapReport`): COCO box mAP of PyTorch fp32 and of the file on
  the same val images and annotations, both through :func:`mobilecnn.train.detect_eval.collect_detections`
  and ``coco_map``; ``max_drop`` counts mAP points. The float-layer fallback ranks layers by the KL divergence
  of the per-anchor class softmax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..data.images import MAX_RESOLUTION
from ..errors import CheckpointError
from ..models.ssd_boxes import BOX_WEIGHTS, AnchorSpec, Detections, PostProcess, decode_boxes, detect, grid_anchors
from ..train.detect_eval import coco_map, collect_detections
from ..validators import is_int, is_number
from .dense import dense_batch, sensitivity_plan
from .quantize import int8_sensitivity

__all__ = ["VERIFY_SCORE", "SCORE_BORDER", "MIN_BOX_IOU", "AGREEMENT_IOU", "is_detection", "detection_facts",
           "facts_anchors", "facts_post", "BoxJudge", "BoxMatch", "compare_detections", "BoxTruth",
           "check_box_truth", "MapReport", "BoxCheckSet", "box_check_set"]

#: The score from which a detection counts in the fp32 verification: ``predict``'s default threshold, the
#: detections a user sees. The post-processing default (1e-8) keeps 100 boxes per image, most of them near-ties
#: of no meaning whose cut at the 100th flips between runtimes on rounding.
VERIFY_SCORE = 0.3
#: A partner may score this much below :data:`VERIFY_SCORE` (fp32 files move scores by ~1e-6).
SCORE_BORDER = 0.02
#: The least IoU of a detection and its partner in the fp32 verification.
MIN_BOX_IOU = 0.99
#: The IoU of the bf16/int8 report's detection agreement (a looser one: int8 moves boxes a little).
AGREEMENT_IOU = 0.5

#: The most feature-map cells a sidecar's detection block may describe (539 at 320 px).
MAX_CELLS = 1 << 22

ArrayFn = Callable[[np.ndarray], np.ndarray]


def is_detection(output_shape: tuple[int, ...]) -> bool:
    """Whether a model output of this shape is a detector's raw outputs (N, A, 4 + C)."""
    return len(output_shape) == 3


def _spec_dict(spec: AnchorSpec) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def detection_facts(model: nn.Module, height: int, width: int, data: Any = None) -> dict[str, Any]:
    """The sidecar's ``detection`` block of ``model`` (an :class:`~mobilecnn.models.ssd.SSD`) at ``height`` x
    ``width``; class names and category ids from the dataset description ``data`` when it has them."""
    spec, sizes_of = getattr(model, "anchor_spec", None), getattr(model, "feature_sizes", None)
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(spec, AnchorSpec) or not callable(sizes_of) or not isinstance(num_classes, int):
        raise ValueError(f"a model returning (N, A, 4 + C) is exported as a detector and needs anchor_spec, "
                         "feature_sizes() and num_classes (mobilecnn.models.ssd.SSD); "
                         f"{type(model).__name__} lacks them")
    sizes = [(int(h), int(w)) for h, w in sizes_of(height, width)]
    data = data if isinstance(data, dict) else {}
    names, cats = data.get("class_names"), data.get("category_ids")
    return {"task": "detection", "input_size": [int(height), int(width)], "num_classes": num_classes,
            "num_anchors": int(grid_anchors(sizes, spec, (height, width)).shape[0]), "anchor_spec": _spec_dict(spec),
            "feature_sizes": [list(s) for s in sizes], "box_weights": list(BOX_WEIGHTS), "post": asdict(PostProcess()),
            "class_names": list(names) if isinstance(names, list) else None,
            "category_ids": list(cats) if isinstance(cats, list) else None,
            "outputs": "raw (N, num_anchors, 4 + num_classes): box offsets x, y, w, h (Faster R-CNN coder), then "
                       "class logits (0 = background); decoded by mobilecnn.models.ssd_boxes.detect"}


def facts_anchors(facts: Any, where: str) -> torch.Tensor:
    """The anchors ``(A, 4)`` a ``detection`` block describes (``grid_anchors``); a bad block raises
    :class:`CheckpointError` naming ``where``."""
    try:
        if not isinstance(facts, dict):
            raise TypeError("not an object")
        spec = AnchorSpec(**{k: tuple(v) if isinstance(v, list) else v  # type: ignore[arg-type]
                             for k, v in facts["anchor_spec"].items()})
        sizes = [(int(h), int(w)) for h, w in facts["feature_sizes"]]
        height, width = (int(v) for v in facts["input_size"])
        if not all(1 <= s <= MAX_RESOLUTION for s in (height, width, *(v for hw in sizes for v in hw))):
            raise ValueError(f"sizes must be 1..{MAX_RESOLUTION}")
        if sum(h * w for h, w in sizes) > MAX_CELLS or len(spec.aspect_ratios) > 16:  # a sidecar is outside input
            raise ValueError(f"more than {MAX_CELLS} feature-map cells or 16 aspect ratios")
        anchors = grid_anchors(sizes, spec, image_size=(height, width))
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{where}: its detection block does not describe the anchors "
                              f"({type(exc).__name__}: {exc}); export the model again") from None
    if facts.get("num_anchors") not in (None, anchors.shape[0]):
        raise CheckpointError(f"{where}: its detection block gives {facts['num_anchors']} anchors but its spec and "
                              f"feature sizes make {anchors.shape[0]}; export the model again")
    return anchors


def facts_post(facts: dict[str, Any], where: str, score_threshold: float | None = None) -> PostProcess:
    """The post-processing a ``detection`` block records (the defaults where it records none), at
    ``score_threshold`` when given; a bad value raises :class:`CheckpointError` naming ``where``."""
    recorded = facts.get("post")
    known = {k: recorded[k] for k in asdict(PostProcess()) if k in recorded} if isinstance(recorded, dict) else {}
    post = PostProcess(**known)
    ok = is_number(post.score_threshold) and 0 <= post.score_threshold < 1 and is_number(post.nms_iou) \
        and 0 < post.nms_iou <= 1 and all(is_int(v) and v >= 1 for v in (post.per_class, post.max_detections))
    if not ok:
        raise CheckpointError(f"{where}: its detection block's post-processing is not valid ({known}); export the "
                              "model again")
    return post if score_threshold is None else dataclasses.replace(post, score_threshold=score_threshold)


@dataclass(frozen=True)
class BoxJudge:
    """How a detector's file is compared with PyTorch (module docstring); ``gated``: refuse a file that differs
    (fp32), else only report it."""

    anchors: torch.Tensor
    score_threshold: float = VERIFY_SCORE
    border: float = SCORE_BORDER
    min_iou: float = MIN_BOX_IOU
    gated: bool = True


@dataclass
class BoxMatch:
    """The detections of a file against PyTorch's on the verification images: ``reference`` / ``file``: those
    scoring >= ``score_threshold``; ``matched``: pairs (same class, IoU >= ``iou_threshold``) with one side at or
    above it; ``unmatched_*``: detections at or above it with no partner; ``nms_ties``: detections left without a
    partner only because NMS kept an equal-scoring neighbour on the other side (their own anchor gives the same
    class score and box there); ``lowest_iou`` of the pairs."""

    images: int
    reference: int
    file: int
    matched: int
    unmatched_reference: int
    unmatched_file: int
    images_differing: int
    lowest_iou: float | None
    max_score_diff: float
    score_threshold: float
    iou_threshold: float
    nms_ties: int = 0

    @property
    def agreement(self) -> float:
        """Fraction (0-1) of the detections that are matched (1.0 when neither side detects anything)."""
        total = self.matched + self.unmatched_reference + self.unmatched_file
        return self.matched / total if total else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement}


#: Boxes whose corners all lie within this (a fraction of the input side: 0.03 px at 320) are the same box:
#: ``detect`` can keep a box clamped to zero width at the image border, whose IoU with itself is 0/0.
SAME_CORNERS = 1e-4


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``a`` (n, 4) and ``b`` (m, 4), with equal (even zero-area) boxes at 1 and no NaN."""
    from torchvision.ops import box_iou  # here, not at the top: importing torchvision costs 1.5 s

    a, b = a.double(), b.double()
    iou = box_iou(a, b).nan_to_num(0.0)
    same = (a[:, None, :] - b[None, :, :]).abs().amax(-1) <= SAME_CORNERS
    return torch.where(same, torch.ones_like(iou), iou)


def _pairs(ref: Detections, got: Detections, min_iou: float) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(i, j, iou)``: each of ``ref`` (best score first) takes the unused ``got`` detection of
    its class that overlaps it most, when that IoU is at least ``min_iou``."""
    if len(ref) == 0 or len(got) == 0:
        return []
    iou = _iou(ref.boxes, got.boxes)
    iou[ref.labels[:, None] != got.labels[None, :]] = -1.0
    pairs = []
    for i in range(len(ref)):
        j = int(iou[i].argmax())
        if float(iou[i, j]) >= min_iou:
            pairs.append((i, j, float(iou[i, j])))
            iou[:, j] = -1.0
    return pairs


#: ``excuse(side, image, k)``: whether detection ``k`` of image ``image`` of ``side`` (0 reference, 1 file), left
#: without a partner, is an NMS tie.
Excuse = Callable[[int, int, int], bool]


def _match(refs: Sequence[Detections], gots: Sequence[Detections], threshold: float, min_iou: float,
           excuse: Excuse | None = None) -> BoxMatch:
    m = BoxMatch(len(refs), 0, 0, 0, 0, 0, 0, None, 0.0, threshold, min_iou)
    for image, (ref, got) in enumerate(zip(refs, gots)):
        strong = (ref.scores >= threshold, got.scores >= threshold)
        paired = (torch.zeros_like(strong[0]), torch.zeros_like(strong[1]))
        for i, j, iou in _pairs(ref, got, min_iou):
            paired[0][i], paired[1][j] = True, True
            if strong[0][i] or strong[1][j]:
                m.matched += 1
                m.lowest_iou = iou if m.lowest_iou is None else min(m.lowest_iou, iou)
                m.max_score_diff = max(m.max_score_diff, abs(float(ref.scores[i] - got.scores[j])))
        lone = [[int(k) for k in (strong[side] & ~paired[side]).nonzero().flatten()] for side in (0, 1)]
        ties = [sum(1 for k in lone[side] if excuse is not None and excuse(side, image, k)) for side in (0, 1)]
        m.nms_ties += ties[0] + ties[1]
        lost, extra = len(lone[0]) - ties[0], len(lone[1]) - ties[1]
        m.reference, m.file = m.reference + int(strong[0].sum()), m.file + int(strong[1].sum())
        m.unmatched_reference, m.unmatched_file = m.unmatched_reference + lost, m.unmatched_file + extra
        m.images_differing += int(lost + extra > 0)
    return m


@dataclass
class _Decoded:
    """One side's candidates before NMS (boxes N, A, 4; class probabilities N, A, C) and its detections."""

    boxes: torch.Tensor
    probs: torch.Tensor
    dets: list[Detections]


def _decoded(raw: np.ndarray, anchors: torch.Tensor, post: PostProcess) -> _Decoded:
    t = torch.from_numpy(np.asarray(raw, np.float32))
    boxes = decode_boxes(t[..., :4], anchors).clamp(0.0, 1.0)  # as detect decodes them
    return _Decoded(boxes, torch.softmax(t[..., 4:], dim=-1), detect(t, anchors, post))


def _tie_excuse(sides: tuple[_Decoded, _Decoded], judge: BoxJudge) -> Excuse:
    """An unpaired detection is an NMS tie when its own anchor, on the other side, gives its class a score above
    the border and the same box (IoU >= ``min_iou``): the network agrees there, NMS picked a neighbour of equal
    score (the same NMS code cannot differ otherwise)."""
    def excuse(side: int, image: int, k: int) -> bool:
        mine, other = sides[side], sides[1 - side]
        det = mine.dets[image]
        box, label, score = det.boxes[k], int(det.labels[k]), det.scores[k]
        hit = ((mine.boxes[image] == box).all(-1) & (mine.probs[image, :, label] == score)).nonzero().flatten()
        if len(hit) == 0:
            return False
        a = int(hit[0])
        same_box = float(_iou(other.boxes[image, a][None], box[None])) >= judge.min_iou
        return same_box and float(other.probs[image, a, label]) >= judge.score_threshold - judge.border
    return excuse


def compare_detections(reference: np.ndarray, out: np.ndarray, judge: BoxJudge) -> BoxMatch:
    """The detections of raw outputs ``out`` (a file's) against those of ``reference`` (PyTorch's): both decoded
    by ``detect`` with the score floor ``threshold - border``, then paired (module docstring)."""
    # every anchor may stay: a cut at max_detections among near-equal scores would flip on rounding
    every = int(judge.anchors.shape[0])
    post = PostProcess(max(0.0, judge.score_threshold - judge.border), per_class=every, max_detections=every)
    sides = (_decoded(reference, judge.anchors, post), _decoded(out, judge.anchors, post))
    return _match(sides[0].dets, sides[1].dets, judge.score_threshold, judge.min_iou, _tie_excuse(sides, judge))


@dataclass(frozen=True)
class BoxTruth:
    """The labelled check set of a detector's bf16/int8 export (``check_labels`` of ``ExportImages``): the
    ground truth ``annotations`` (a COCO instances JSON or its dict), the check images' COCO ``image_ids`` and
    original ``sizes`` ``(width, height)`` in the check images' order, and the COCO ``category_ids`` of labels
    1..K."""

    annotations: str | dict
    image_ids: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    category_ids: tuple[int, ...]


def check_box_truth(truth: Any, images: torch.Tensor, num_classes: int) -> BoxTruth:
    """Validate a detector's check set against its images and the model's classes (one-line ``ValueError``s)."""
    if not isinstance(truth, BoxTruth):
        raise ValueError(f"check_labels of a detector must be a BoxTruth (COCO annotations, image ids, sizes, "
                         f"category ids), got {type(truth).__name__}")
    ann = truth.annotations
    if not isinstance(ann, dict) and not (isinstance(ann, (str, Path)) and Path(ann).is_file()):
        raise ValueError(f"the check set's annotations must be a COCO instances file or its dict; {ann!r} is neither")
    if not (len(truth.image_ids) == len(truth.sizes) == len(images)):
        raise ValueError(f"the check set has {len(truth.image_ids)} image ids and {len(truth.sizes)} sizes for "
                         f"{len(images)} check images")
    if not all(len(s) == 2 and all(isinstance(v, int) and v >= 1 for v in s) for s in truth.sizes):
        raise ValueError("the check set's sizes must be (width, height) pairs of positive integers")
    if len(truth.category_ids) != num_classes - 1:
        raise ValueError(f"the check set names {len(truth.category_ids)} categories; the model has "
                         f"{num_classes - 1} classes besides the background")
    return BoxTruth(str(ann) if isinstance(ann, Path) else ann, tuple(int(i) for i in truth.image_ids),
                    tuple((int(w), int(h)) for w, h in truth.sizes), tuple(int(c) for c in truth.category_ids))


@dataclass(frozen=True)
class MapReport:
    """PyTorch fp32 vs a bf16/int8 detector file on a labelled check set (the sibling of ``Int8Report`` and
    ``MiouReport``): COCO box mAP@[.5:.95] and AP50 in percent; ``drop`` = fp32 mAP - file mAP in mAP points;
    ``agreement``: % of the detections scoring >= :data:`VERIFY_SCORE` on either side matched across (same
    class, IoU >= :data:`AGREEMENT_IOU`)."""

    fp32_map: float
    int8_map: float
    drop: float
    agreement: float
    images: int
    fp32_ap50: float
    int8_ap50: float
    precision: str = "int8"
    #: What ``max_drop`` and ``drop`` count.
    unit: ClassVar[str] = "mAP pt"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "metric": "mAP"}

    def __str__(self) -> str:
        return (f"fp32 mAP {self.fp32_map:.2f}%, {self.precision} mAP {self.int8_map:.2f}% (drop {self.drop:+.2f} "
                f"mAP pt; AP50 {self.fp32_ap50:.2f}% vs {self.int8_ap50:.2f}%), detection agreement "
                f"{self.agreement:.2f}% on {self.images} images")


@dataclass
class _Held:
    """Check images in memory as the val loader ``collect_detections`` reads: ``image_ids``, ``image_sizes``,
    ``batches``."""

    images: torch.Tensor
    truth: BoxTruth

    @property
    def image_ids(self) -> list[int]:
        return list(self.truth.image_ids)

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        return list(self.truth.sizes)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = dense_batch(tuple(self.images.shape))
        for i in range(0, len(self.images), step):
            x = self.images[i:i + step]
            yield x, torch.zeros(len(x), 1, 5)


def _class_logits(raw: torch.Tensor) -> torch.Tensor:
    """(N, A, 4 + C) -> (N, C, A): the class logits with the classes on dimension 1 (a softmax per anchor)."""
    return raw[..., 4:].transpose(1, 2)


@dataclass(frozen=True)
class BoxCheckSet:
    """A detector's check set with PyTorch fp32's COCO scores and confident detections on it."""

    images: torch.Tensor
    truth: BoxTruth
    anchors: torch.Tensor
    fp32_scores: dict[str, Any]
    fp32_confident: list[Detections]
    post: PostProcess = field(default_factory=PostProcess)
    dense: ClassVar[bool] = False

    def judge(self, runtime: ArrayFn, precision: str = "int8") -> MapReport:
        scores, confident = _scored(runtime, self.images, self.truth, self.anchors, self.post)
        agreement = _match(self.fp32_confident, confident, VERIFY_SCORE, AGREEMENT_IOU).agreement
        a, b = self.fp32_scores, scores
        return MapReport(a["mAP"], b["mAP"], a["mAP"] - b["mAP"], 100.0 * agreement, len(self.images), a["AP50"],
                         b["AP50"], precision)

    def ranked_layers(self, net: nn.Module, calibration: torch.Tensor) -> list[str]:
        """The int8 fallback's layers, most sensitive first (KL divergence of the per-anchor class softmax)."""
        images, batch = sensitivity_plan(calibration)
        return [n for n, _ in int8_sensitivity(net, calibration, images=images, batch_size=batch,
                                               to_logits=_class_logits)]


def _scored(fn: ArrayFn, images: torch.Tensor, truth: BoxTruth, anchors: torch.Tensor,
            post: PostProcess) -> tuple[dict[str, Any], list[Detections]]:
    """COCO scores of ``fn`` on the check set (``collect_detections`` + ``coco_map``) and its detections scoring
    >= :data:`VERIFY_SCORE`."""
    raws: list[torch.Tensor] = []

    def forward(x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        raws.append(torch.from_numpy(np.asarray(fn(x.numpy()), np.float32)))
        return raws[-1]

    results, ids = collect_detections(forward, _Held(images, truth), anchors, truth.category_ids, post)
    scores = coco_map(truth.annotations, results, ids)
    confident = detect(torch.cat(raws), anchors, PostProcess(score_threshold=VERIFY_SCORE - SCORE_BORDER))
    return scores, confident


def box_check_set(reference: nn.Module, images: torch.Tensor, truth: BoxTruth, anchors: torch.Tensor) -> BoxCheckSet:
    """The check set with PyTorch fp32's scores by ``reference`` (eval mode)."""
    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return reference(torch.from_numpy(x)).float().numpy()

    scores, confident = _scored(fn, images, truth, anchors, PostProcess())
    return BoxCheckSet(images, truth, anchors, scores, confident)
