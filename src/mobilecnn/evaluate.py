"""``mobilecnn eval``: a trained run on its validation split: accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .data import load_data, locate_dataset
from .device import resolve_device
from .errors import CheckpointError
from .plots import plot_confusion
from .runs.files import atomic_write_text
from .runs.rundir import load_trained
from .train.loop import evaluate

__all__ = ["evaluate_run"]


def evaluate_run(
    path: str | Path,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
    subset: int | None = None,
    out_dir: str | Path | None = None,
    prefer_ema: bool = True,
    workers: int = 2,
    return_logits: bool = False,
    device: str | None = "auto",
) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy and confusion matrix on the validation split; writes JSON + PNG.

    ``return_logits`` adds the per-image ``logits`` and ``labels`` tensors (and ``files`` for image
    folders) to the returned dict; they are not written to the JSON. ``device``: auto, cpu, cuda, cuda:N, mps.
    """
    dev = resolve_device(device)
    loaded = load_trained(path, prefer_ema)
    if data:
        dataset = data
    else:
        dataset, data_dir = locate_dataset(loaded.data.get("name") or "fashion-mnist", data_dir)
    # a fine-tuned run normalises with the preprocessing it was trained with (its init weights')
    pre = loaded.data.get("preprocessing") if not data else None
    _, val_loader, info = load_data(dataset, data_dir=data_dir, resolution=loaded.data.get("resolution"),
                                    batch_size=1, eval_batch_size=batch_size, val_subset=subset, workers=workers,
                                    preprocessing=pre, device=dev if dev.type != "cpu" else None)
    if info.num_classes != loaded.model.num_classes:
        raise CheckpointError(
            f"{loaded.weights_file} was trained for {loaded.model.num_classes} classes but {info.name} has "
            f"{info.num_classes}: evaluate on the dataset it was trained on"
        )
    if info.in_chans != loaded.model.in_chans:
        raise CheckpointError(f"{loaded.weights_file} expects {loaded.model.in_chans}-channel images but {info.name} "
                              f"has {info.in_chans}")
    result = evaluate(loaded.model.to(dev), val_loader, num_classes=info.num_classes, keep_logits=return_logits)
    per_image = {k: result.pop(k) for k in ("logits", "labels") if k in result}
    result.update({"model": loaded.model_name, "weights": loaded.weights, "weights_file": str(loaded.weights_file),
                   "data": info.name, "class_names": info.class_names, "device": str(dev)})
    out = Path(out_dir) if out_dir else (loaded.run_dir / "eval" if loaded.run_dir else Path("eval"))
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    plot_confusion(result["confusion"], info.class_names, out / "confusion.png",
                   title=f"{loaded.model_name} on {info.name}: top-1 {result['top1']:.2f}%")
    result["outputs"] = {"json": str(out / "eval.json"), "confusion_png": str(out / "confusion.png")}
    if return_logits:
        result.update(per_image)
        if hasattr(val_loader, "samples"):
            result["files"] = [path for path, _ in val_loader.samples]
    return result
