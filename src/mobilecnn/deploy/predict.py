"""Classify image files with a trained run, a weight file, or an exported file (ONNX, OpenVINO, ExecuTorch...).

A segmentation model (its registry entry's ``task``) is loaded here too; its masks are made by
:mod:`.predict_masks`. A detector's boxes are made by :mod:`.predict_boxes`, from its raw outputs and the
anchors that its ``detection`` facts describe (the export sidecar's block, or the same facts read from the
PyTorch model: :func:`mobilecnn.deploy.boxes.detection_facts`).

Every image goes through :class:`mobilecnn.data.images.Preprocessing`, the transform the model was
evaluated with (stored in the run's config, the weights' metadata or the export sidecar), so a
prediction sees the same pixels as ``mobilecnn eval``. Images are decoded and classified in batches
(memory does not grow with the number of files). A file that cannot be decoded gets an error naming
it; the other files are still classified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.images import Preprocessing, is_image_name, load_image
from ..device import resolve_device
from ..errors import CheckpointError, DataError, NonFiniteError, UnknownModelError, UsageError
from ..fields import cli, positive_int
from ..files import read_json_object
from ..models import get_model_entry
from ..models.registry import TASKS
from ..runs.rundir import load_trained
from ..validators import check_threads, is_int
from .boxes import detection_facts
from .formats import SIDECAR_SUFFIX, load_runtime

__all__ = ["PredictConfig", "Prediction", "Predictor", "load_predictor", "expand_inputs", "predict_files",
           "iter_predictions",
           "preprocess_image", "read_sidecar", "model_task"]

MAX_LABELS = 100_000


@dataclass(frozen=True)
class PredictConfig:
    """``mobilecnn predict``: every option, its default and help (the CLI is generated from it)."""

    images: tuple[str, ...] = field(default=(), metadata=cli("image files or directories (every image in them)",
                                                             positional=True, nargs="+", metavar="IMAGE"))
    model: str = field(default="", metadata=cli("run directory, .safetensors, or an exported file", required=True))
    topk: int = field(default=5, metadata=cli("classes printed per image (classifiers)", type=positive_int))
    out: str | None = field(default=None, metadata=cli(
        "segmentation and detection models: where the masks and overlays, or the box images and detections.json, "
        "go (default: ./predictions)", metavar="DIR"))
    score_threshold: float = field(default=0.3, metadata=cli(
        "detection models: the lowest score of a box drawn and listed, a number in [0, 1)"))
    threads: int = field(default=1, metadata=cli("runtime threads", type=positive_int))
    device: str = field(default="auto", metadata=cli(
        "run directories and .safetensors: auto, cpu, cuda, cuda:N or mps (exported files run on the CPU)"))


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # (label, probability), best first
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        top = [{"label": name, "probability": p} for name, p in self.top]
        return {"path": self.path, "top": top, "error": self.error}


@dataclass
class Predictor:
    """A logits function plus how to prepare images for it."""

    logits: Callable[[np.ndarray], np.ndarray]
    class_names: list[str]
    preprocessing: Preprocessing
    source: str
    model: str = ""  # the registry name, when known
    task: str = "classification"  # or "segmentation": one class per pixel (see .predict_masks); or "detection"
    detection: dict[str, Any] | None = None  # a detector's facts: anchors, post-processing, classes (.boxes)


def model_task(model: Any, data: Any = None) -> str:
    """What ``model`` (a registry name) predicts: its registry entry's ``task``; for a name the registry does
    not know, the ``task`` recorded in the dataset description ``data``, else ``"classification"``."""
    try:
        return get_model_entry(str(model)).task
    except UnknownModelError:
        task = data.get("task") if isinstance(data, dict) else None
        return task if task in TASKS else "classification"


def _labels(names: Any, num_classes: int | None, where: str) -> list[str]:
    if names is None or names == []:
        return [str(i) for i in range(num_classes or 0)]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > MAX_LABELS:
        raise CheckpointError(f"{where}: class_names must be a list of at most {MAX_LABELS} strings")
    if num_classes is not None and len(names) != num_classes:
        raise CheckpointError(f"{where}: {len(names)} class names for a model with {num_classes} outputs")
    return list(names)


def read_sidecar(path: Path) -> dict[str, Any]:
    """The ``<file>.mobilecnn.json`` beside an exported file, checked; errors name the sidecar."""
    sidecar = Path(str(path) + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        raise CheckpointError(f"{path} has no {sidecar.name} beside it (written by `mobilecnn export`): without it the "
                              "class names and preprocessing are unknown")
    return read_json_object(sidecar, "`mobilecnn export`", CheckpointError)


def load_predictor(model: str | Path, threads: int = 1, device: str | None = "auto") -> Predictor:
    """From a run directory / checkpoint / ``.safetensors`` (PyTorch, on ``device``) or an exported file (its
    runtime, on the CPU: ``device`` must then be auto or cpu)."""
    path = Path(model)
    if not path.exists():
        raise CheckpointError(f"--model {path} does not exist: pass a run directory, a .safetensors file or an "
                              "exported file")
    if path.is_dir() or path.suffix == ".safetensors":
        torch.set_num_threads(check_threads(threads))
        dev = resolve_device(device)
        loaded = load_trained(path)
        net = loaded.model.eval().to(dev)

        def logits(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return net(torch.from_numpy(x).to(dev)).float().cpu().numpy()

        pre = Preprocessing.for_dataset(loaded.data, f"{loaded.weights_file} metadata")
        if pre.in_chans != loaded.model.in_chans:
            raise CheckpointError(f"{loaded.weights_file}: preprocessing makes {pre.in_chans}-channel images for a "
                                  "model "
                                  f"with in_chans={loaded.model.in_chans}")
        names = _labels(loaded.data.get("class_names"), getattr(loaded.model, "num_classes", None),
                        f"{loaded.weights_file} metadata")
        task = model_task(loaded.model_name, loaded.data)
        facts = detection_facts(loaded.model, pre.resolution, pre.resolution, loaded.data) \
            if task == "detection" else None
        return Predictor(logits, names, pre, source=f"{loaded.model_name} ({loaded.weights} weights, PyTorch)",
                         model=loaded.model_name, task=task, detection=facts)
    if device is not None and str(device).strip().lower() not in ("auto", "cpu"):
        raise UsageError(f"--device {device} applies to run directories and .safetensors files; {path.name} runs "
                         "in its own runtime on the CPU (pass --device cpu or auto)")
    info = read_sidecar(path)
    where = str(path) + SIDECAR_SUFFIX
    data = info.get("data", {})
    pre = (Preprocessing.from_dict(info["preprocessing"], where) if "preprocessing" in info
           else Preprocessing.for_dataset(data, where))
    names = _labels(data.get("class_names") if isinstance(data, dict) else None, None, where)
    runtime = load_runtime(path, threads=threads)
    _check_input_fits(runtime.input_chw, pre, path, where)
    facts = info.get("detection")
    return Predictor(runtime, names, pre,
                     source=f"{info.get('model')} ({path.suffix[1:]} file, {info.get('precision', 'fp32')})",
                     model=str(info.get("model") or ""), task=model_task(info.get("model"), data),
                     detection=facts if isinstance(facts, dict) else None)


def _check_input_fits(chw: tuple[int | None, ...] | None, pre: Preprocessing, path: Path, where: str) -> None:
    """The sidecar's preprocessing makes inputs the file takes (sides the file leaves dynamic are not checked)."""
    if chw is None:
        return
    wanted = (pre.in_chans, pre.resolution, pre.resolution)
    if any(have is not None and have != want for have, want in zip(chw, wanted)):
        shown = "x".join("?" if d is None else str(d) for d in chw)
        raise CheckpointError(f"{where} prepares {wanted[0]}x{wanted[1]}x{wanted[2]} inputs but {path.name} takes "
                              f"{shown}: the sidecar belongs to another file; re-export, or restore the sidecar "
                              "written beside this file")


def preprocess_image(path: str | Path, predictor: Predictor) -> np.ndarray:
    """One image file -> float32 array (C, H, W), prepared as in evaluation. Raises ``DataError``."""
    try:
        image = load_image(path, predictor.preprocessing.in_chans)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return predictor.preprocessing(image).numpy()


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; a directory stands for every image file in it (recursively, sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f.name)))
        else:
            out.append(p)
    return out


def _classify(chunk: list[tuple[Prediction, np.ndarray]], predictor: Predictor, topk: int) -> None:
    logits = np.asarray(predictor.logits(np.stack([a for _, a in chunk])), dtype=np.float64)
    if not np.isfinite(logits).all():
        raise NonFiniteError(f"{predictor.source} produced NaN/inf outputs: its weights or preprocessing are broken; "
                             "no prediction is reported")
    names = predictor.class_names
    if names and len(names) != logits.shape[1]:
        raise CheckpointError(f"{predictor.source}: its description names {len(names)} classes but the model has "
                              f"{logits.shape[1]} outputs; the sidecar does not belong to this file: export it again")
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(topk, probs.shape[1])
    for (result, _), p in zip(chunk, probs):
        order = np.argsort(-p)[:k]
        result.top = [(names[i] if i < len(names) else str(i), float(p[i])) for i in order]


def iter_predictions(inputs: Sequence[str | Path], predictor: Predictor, topk: int = 5,
                     batch_size: int = 32) -> Iterator[Prediction]:
    """Predictions in input order, decoded and classified ``batch_size`` images at a time."""
    if not is_int(topk) or topk < 1:
        raise DataError(f"--topk must be an integer >= 1, got {topk!r}")
    if predictor.task != "classification":
        what = "boxes (mobilecnn.deploy.predict_boxes.predict_boxes)" if predictor.task == "detection" else \
            "masks (mobilecnn.deploy.predict_masks.predict_masks)"
        raise UsageError(f"{predictor.source} is a {predictor.task} model: its predictions are {what}, not labels")
    pending: list[Prediction] = []
    ready: list[tuple[Prediction, np.ndarray]] = []
    for path in expand_inputs(inputs):
        result = Prediction(str(path))
        pending.append(result)
        if not path.is_file():
            result.error = f"{path}: no such file"
        else:
            try:
                ready.append((result, preprocess_image(path, predictor)))
            except DataError as exc:
                result.error = str(exc)
        if len(ready) >= batch_size:
            _classify(ready, predictor, topk)
            yield from pending
            pending, ready = [], []
    if ready:
        _classify(ready, predictor, topk)
    yield from pending


def predict_files(inputs: Sequence[str | Path], predictor: Predictor, topk: int = 5,
                  batch_size: int = 32) -> list[Prediction]:
    """Top-k labels with probabilities for every image; unreadable files get ``error`` set instead."""
    return list(iter_predictions(inputs, predictor, topk, batch_size))
