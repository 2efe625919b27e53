"""Classify image files with a trained run, a weight file, or an exported file (ONNX, OpenVINO, ExecuTorch...).

Images are converted the way the model was trained: to grayscale for 1-channel models, then, for
models trained on an image folder, resized (shorter side to resolution / 0.875) and center-cropped;
for models trained on the small in-memory datasets (Fashion-MNIST, CIFAR), resized to a square of
the training resolution. Normalisation uses the training set's statistics. A file that cannot be
decoded gets an error naming it; the other files are still classified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .checkpoint import CheckpointError

__all__ = ["Prediction", "Predictor", "load_predictor", "expand_inputs", "predict_files", "preprocess_image",
           "EXPORT_SIDECAR_SUFFIX"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Raster decoders only: PIL's EPS/PDF plugins hand the file to Ghostscript, which must never see untrusted input.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "WEBP", "TIFF", "PPM")  # JPEG covers MPO
EXPORT_SIDECAR_SUFFIX = ".mobilecnn.json"  # written beside every exported file: model + preprocessing


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # (label, probability), best first
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "top": [{"label": l, "probability": p} for l, p in self.top], "error": self.error}


@dataclass
class Predictor:
    """A logits function plus how to prepare images for it."""

    logits: Callable[[np.ndarray], np.ndarray]
    class_names: list[str]
    in_chans: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    center_crop: bool
    source: str


def _preprocessing(data: dict[str, Any]) -> dict[str, Any]:
    name = str(data.get("name", ""))
    return {
        "class_names": list(data.get("class_names") or []),
        "in_chans": int(data.get("in_chans", 3)),
        "resolution": int(data.get("resolution", 224)),
        "mean": tuple(data.get("mean") or (0.5,)),
        "std": tuple(data.get("std") or (0.5,)),
        "center_crop": name.startswith("folder:"),
    }


def load_predictor(model: str | Path, threads: int = 1) -> Predictor:
    """From a run directory / checkpoint / ``.safetensors`` (PyTorch) or an exported file (its runtime)."""
    path = Path(model)
    if not path.exists():
        raise CheckpointError(f"--model {path} does not exist: pass a run directory, a .safetensors file or an exported file")
    if path.is_dir() or path.suffix == ".safetensors":
        from .evaluate import load_trained

        loaded = load_trained(path)
        net = loaded.model.eval()

        def logits(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return net(torch.from_numpy(x)).numpy()

        pre = _preprocessing(loaded.data)
        pre["class_names"] = loaded.class_names
        return Predictor(logits, source=f"{loaded.model_name} ({loaded.weights} weights, PyTorch)", **pre)
    sidecar = Path(str(path) + EXPORT_SIDECAR_SUFFIX)
    if not sidecar.is_file():
        raise CheckpointError(f"{path} has no {sidecar.name} beside it (written by `mobilecnn export`): without it the "
                              "class names and preprocessing are unknown")
    info = json.loads(sidecar.read_text())
    from .runtime import load_runtime

    runtime = load_runtime(path, threads=threads)
    return Predictor(runtime, source=f"{info.get('model')} ({path.suffix[1:]} file{', int8' if info.get('int8') else ''})",
                     **_preprocessing(info.get("data", {})))


def preprocess_image(path: str | Path, predictor: Predictor) -> np.ndarray:
    """One image file -> float32 array (C, H, W), prepared like the training data. Raises ValueError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32)
                img = Image.fromarray((arr * (255.0 / max(arr.max(), 1.0))).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            img = img.convert("L" if predictor.in_chans == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    res = predictor.resolution
    if predictor.center_crop:
        short = int(round(res / 0.875))
        w, h = img.size
        scale = short / min(w, h)
        img = img.resize((max(res, round(w * scale)), max(res, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - res) // 2, (h - res) // 2
        img = img.crop((left, top, left + res, top + res))
    else:
        img = img.resize((res, res), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    mean = np.asarray(predictor.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(predictor.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((arr - mean) / std, dtype=np.float32)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; a directory stands for every image file in it (recursively, sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def predict_files(inputs: Sequence[str | Path], predictor: Predictor, topk: int = 5, batch_size: int = 32) -> list[Prediction]:
    """Top-k labels with probabilities for every image; unreadable files get ``error`` set instead."""
    if topk < 1:
        raise ValueError(f"--topk must be >= 1, got {topk}")
    files = expand_inputs(inputs)
    results: list[Prediction] = []
    ready: list[tuple[int, np.ndarray]] = []
    for path in files:
        results.append(Prediction(str(path)))
        if not path.is_file():
            results[-1].error = f"{path}: no such file"
            continue
        try:
            ready.append((len(results) - 1, preprocess_image(path, predictor)))
        except ValueError as exc:
            results[-1].error = str(exc)
    names = predictor.class_names
    for lo in range(0, len(ready), batch_size):
        chunk = ready[lo:lo + batch_size]
        logits = np.asarray(predictor.logits(np.stack([a for _, a in chunk])), dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        k = min(topk, probs.shape[1])
        for (idx, _), p in zip(chunk, probs):
            order = np.argsort(-p)[:k]
            results[idx].top = [(names[i] if i < len(names) else str(i), float(p[i])) for i in order]
    return results
