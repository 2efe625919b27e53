"""Segmentation prediction: image files -> class-index mask PNGs, overlays and the share of each class.

A predictor from :func:`mobilecnn.deploy.predict.load_predictor` (a run directory, a ``.safetensors`` file
or an exported file with its sidecar) is a segmentation predictor when its model's registry entry has
``task == "segmentation"``. Each image is

1. decoded to 8-bit RGB (:func:`mobilecnn.data.images.load_image`: EXIF orientation, any mode);
2. resized whole ("square", never cropped) to the model's input side, the training crop recorded in the
   preprocessing, and normalised as in training (:class:`~mobilecnn.data.images.Preprocessing`);
3. run through the model (N, K, R, R logits), images of a batch together;
4. its logits upsampled bilinearly (``align_corners=False``) to the image's own H x W and arg-maxed: one
   class index per pixel. Where the upsampled logits would take more than :data:`UPSAMPLE_BUDGET` bytes,
   this is done in strips of rows with the same formula, so a large photo does not need K x H x W floats.

Written into the output folder (created if missing; nothing is written elsewhere; every file atomically):
``<stem>_mask.png``, a palette ("P") PNG holding the class index of each pixel at the image's size, with
the Pascal VOC colours (:func:`mobilecnn.data.scenes_compose.voc_palette`, what ``mobilecnn data scenes``
and VOC masks use), and ``<stem>_overlay.png``, the image with the classes blended in and a legend
(:func:`mobilecnn.plots.save_overlay_png`). A second input with a stem already used (``a/photo.jpg`` and
``b/photo.png``) is written as ``<stem>-2_*`` (then ``-3``...), and its result says so. A file that cannot
be decoded gets an error naming it; the other files still go through. Memory is bounded by one batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..data.images import load_image
from ..data.scenes_compose import voc_palette
from ..errors import CheckpointError, DataError, NonFiniteError, UsageError
from ..files import atomic_write
from ..plots import save_overlay_png
from ..validators import is_int, is_number
from .predict import Predictor, expand_inputs

__all__ = ["DEFAULT_OUT", "UPSAMPLE_BUDGET", "MaskPrediction", "segmentation_predictor", "upsampled_argmax",
           "iter_mask_predictions", "predict_masks", "MASK_SUFFIX", "OVERLAY_SUFFIX", "OutputNames", "decode",
           "out_folder"]

#: Where masks and overlays go when no folder is given (relative to the working directory).
DEFAULT_OUT = "predictions"
MASK_SUFFIX = "_mask.png"
OVERLAY_SUFFIX = "_overlay.png"
#: Bytes of float32 upsampled logits above which an image is upsampled and arg-maxed in strips of rows.
UPSAMPLE_BUDGET = 256 << 20
#: A mask PNG holds one byte per pixel.
MAX_CLASSES = 256
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass
class MaskPrediction:
    """One image's result: ``shares`` is ``(class name, fraction of the pixels)`` of every class present,
    largest first; ``mask``/``overlay`` the files written; ``note`` says when the output name was changed;
    ``error`` is set instead for a file that could not be read."""

    path: str
    shares: list[tuple[str, float]] = field(default_factory=list)
    mask: str | None = None
    overlay: str | None = None
    size: tuple[int, int] | None = None  # (width, height) of the image and of its mask
    note: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        shares = [{"label": name, "share": share} for name, share in self.shares]
        return {"path": self.path, "shares": shares, "mask": self.mask, "overlay": self.overlay,
                "size": list(self.size) if self.size else None, "note": self.note, "error": self.error}


def segmentation_predictor(predictor: Predictor) -> Predictor:
    """``predictor`` checked to be a segmentation model reading RGB, with its resize made "square" (the
    whole image goes in: a centre crop would leave the borders without a prediction)."""
    if predictor.task != "segmentation":
        what = "boxes (mobilecnn.deploy.predict_boxes.predict_boxes)" if predictor.task == "detection" else \
            "labels (mobilecnn.deploy.predict.predict_files)"
        raise UsageError(f"{predictor.source} is a {predictor.task} model, not a segmentation model: its "
                         f"predictions are {what}")
    pre = predictor.preprocessing
    if pre.in_chans != 3:
        raise CheckpointError(f"{predictor.source}: its preprocessing makes {pre.in_chans}-channel images; "
                              "segmentation models read RGB images (in_chans 3)")
    if pre.resize == "square":
        return predictor
    return dataclasses.replace(predictor, preprocessing=dataclasses.replace(pre, resize="square"))


def _source_index(out_size: int, in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear (``align_corners=False``) sampling along one axis: lower and upper source index and the
    weight of the upper one, per output position."""
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * (in_size / out_size) - 0.5).clamp_(min=0)
    lo = src.to(torch.int64).clamp_(max=in_size - 1)
    hi = (lo + 1).clamp_(max=in_size - 1)
    return lo, hi, src - lo.to(torch.float32)


def _argmax_in_strips(logits: torch.Tensor, size: tuple[int, int], budget: int) -> torch.Tensor:
    """:func:`upsampled_argmax` a few rows at a time (bilinear weights computed as ``F.interpolate`` does)."""
    k, h_in, w_in = logits.shape
    h, w = size
    y0, y1, fy = _source_index(h, h_in)
    x0, x1, fx = _source_index(w, w_in)
    gx = 1.0 - fx
    rows = max(1, budget // (6 * 4 * k * w))
    out = torch.empty(h, w, dtype=torch.uint8)
    for a in range(0, h, rows):
        b = min(h, a + rows)
        top, bottom = logits[:, y0[a:b]], logits[:, y1[a:b]]  # (K, s, w_in)
        top_w = top[:, :, x0] * gx + top[:, :, x1] * fx  # (K, s, W)
        bottom_w = bottom[:, :, x0] * gx + bottom[:, :, x1] * fx
        wy = fy[a:b, None]
        out[a:b] = ((1.0 - wy) * top_w + wy * bottom_w).argmax(0).to(torch.uint8)
    return out


def upsampled_argmax(logits: torch.Tensor | np.ndarray, size: tuple[int, int],
                     budget: int = UPSAMPLE_BUDGET) -> np.ndarray:
    """Logits (K, h, w) of one image -> uint8 (H, W) class indices: bilinear upsampling (``align_corners=False``)
    to ``size = (H, W)``, then the arg max over K (ties: the lowest class). Above ``budget`` bytes of upsampled
    logits the rows are done in strips."""
    t = torch.as_tensor(logits, dtype=torch.float32)
    if t.dim() != 3 or t.shape[0] > MAX_CLASSES:
        raise ValueError(f"logits must be (K, h, w) with K <= {MAX_CLASSES}, got {tuple(t.shape)}")
    h, w = size
    if not (is_int(h) and is_int(w) and h >= 1 and w >= 1):
        raise ValueError(f"size must be two positive integers (H, W), got {size!r}")
    if t.shape[0] * h * w * 4 > budget:
        return _argmax_in_strips(t, (h, w), budget).numpy()
    up = F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return up.argmax(0).to(torch.uint8).numpy()


class OutputNames:
    """``OUT/<stem><suffix>`` per input for each of ``suffixes``, a counter added where a stem was used already
    (case-insensitively) or where an output would replace one of the inputs."""

    def __init__(self, out_dir: Path, inputs: Sequence[Path], suffixes: Sequence[str] = (MASK_SUFFIX, OVERLAY_SUFFIX)
                 ) -> None:
        self.out_dir = out_dir
        self.suffixes = tuple(suffixes)
        self.used: set[str] = set()
        self.inputs = {_resolved(p) for p in inputs}

    def take(self, path: Path) -> tuple[list[Path], str | None]:
        stem, n = path.stem, 1
        while True:
            name = stem if n == 1 else f"{stem}-{n}"
            outputs = [self.out_dir / f"{name}{suffix}" for suffix in self.suffixes]
            if name.casefold() not in self.used and not {_resolved(p) for p in outputs} & self.inputs:
                break
            n += 1
        self.used.add(name.casefold())
        note = None if n == 1 else (f"{path}: another input has the name {stem!r} (or an input is in the way): "
                                    f"written as {' and '.join(p.name for p in outputs)}")
        return outputs, note


def _resolved(path: Path) -> str:
    return str(path.resolve()).casefold()


def decode(path: Path) -> torch.Tensor:
    """uint8 (3, H, W); :class:`DataError` naming the file when it is not a readable image."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return load_image(path, 3)
    except _UNREADABLE as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _checked_logits(logits: Any, predictor: Predictor, count: int) -> np.ndarray:
    out = np.asarray(logits, dtype=np.float32)
    if out.ndim != 4 or out.shape[0] != count:
        raise CheckpointError(f"{predictor.source}: outputs of shape {out.shape} for {count} image(s), not "
                              "per-pixel logits (N, K, H, W): is the model or its sidecar a classifier's?")
    k = out.shape[1]
    if k > MAX_CLASSES:
        raise CheckpointError(f"{predictor.source}: {k} classes; a mask PNG holds at most {MAX_CLASSES}")
    if predictor.class_names and len(predictor.class_names) != k:
        raise CheckpointError(f"{predictor.source}: its description names {len(predictor.class_names)} classes but "
                              f"the model has {k} outputs; the sidecar does not belong to this file: export it again")
    if not np.isfinite(out).all():
        raise NonFiniteError(f"{predictor.source} produced NaN/inf outputs: its weights or preprocessing are broken; "
                             "no mask is written")
    return out


def _write_mask(mask: np.ndarray, path: Path, palette: list[int]) -> Path:
    image = Image.fromarray(mask).convert("L")
    image.putpalette(palette)  # "L" becomes "P": the pixel values stay the class indices
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _shares(mask: np.ndarray, names: Sequence[str]) -> list[tuple[str, float]]:
    counts = np.bincount(mask.ravel(), minlength=len(names))
    order = np.argsort(-counts, kind="stable")
    return [(names[c] if c < len(names) else str(c), float(counts[c] / mask.size)) for c in order if counts[c] > 0]


@dataclass
class _Job:
    result: MaskPrediction
    image: torch.Tensor  # uint8 (3, H, W)
    mask_path: Path
    overlay_path: Path


def _segment(jobs: list[_Job], predictor: Predictor, alpha: float) -> None:
    pre = predictor.preprocessing
    batch = np.stack([pre(job.image).numpy() for job in jobs])
    logits = _checked_logits(predictor.logits(batch), predictor, len(jobs))
    names = predictor.class_names or [str(i) for i in range(logits.shape[1])]
    palette = voc_palette()
    for job, one in zip(jobs, logits):
        h, w = job.image.shape[1:]
        mask = upsampled_argmax(one, (h, w))
        job.result.mask = str(_write_mask(mask, job.mask_path, palette))
        job.result.overlay = str(save_overlay_png(job.image.permute(1, 2, 0).numpy(), mask, palette, names,
                                                  job.overlay_path, alpha))
        job.result.shares = _shares(mask, names)
        job.result.size = (int(w), int(h))


def out_folder(out_dir: str | Path | None, what: str = "the masks and overlays") -> Path:
    """The output folder (default :data:`DEFAULT_OUT`), created; a file there is a one-line error."""
    out = Path(DEFAULT_OUT if out_dir is None else out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: pass a folder for {what}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def iter_mask_predictions(inputs: Sequence[str | Path], predictor: Predictor, out_dir: str | Path | None = None,
                          batch_size: int = 4, alpha: float = 0.5) -> Iterator[MaskPrediction]:
    """Masks and overlays of every image (directories: every image in them) written into ``out_dir``
    (default :data:`DEFAULT_OUT`), results in input order, ``batch_size`` images at a time."""
    if not is_int(batch_size) or batch_size < 1:
        raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not is_number(alpha) or not 0 <= alpha <= 1:
        raise UsageError(f"alpha must be a number in [0, 1], got {alpha!r}")
    predictor = segmentation_predictor(predictor)
    files = expand_inputs(inputs)
    out = out_folder(out_dir)
    names = OutputNames(out, files)
    pending: list[MaskPrediction] = []
    jobs: list[_Job] = []
    for path in files:
        result = MaskPrediction(str(path))
        pending.append(result)
        try:
            image = decode(path)
        except DataError as exc:
            result.error = str(exc)
        else:
            (mask_path, overlay_path), result.note = names.take(path)
            jobs.append(_Job(result, image, mask_path, overlay_path))
        if len(jobs) >= batch_size:
            _segment(jobs, predictor, alpha)
            yield from pending
            pending, jobs = [], []
    if jobs:
        _segment(jobs, predictor, alpha)
    yield from pending


def predict_masks(inputs: Sequence[str | Path], predictor: Predictor, out_dir: str | Path | None = None,
                  batch_size: int = 4, alpha: float = 0.5) -> list[MaskPrediction]:
    """:func:`iter_mask_predictions` as a list."""
    return list(iter_mask_predictions(inputs, predictor, out_dir, batch_size, alpha))
