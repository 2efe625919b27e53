"""From a trained run directory to a verified deployable file (``mobilecnn export``).

:func:`export_run` loads the run's weights (EMA when present), takes real images of the dataset the
run was trained on (training images for int8 calibration, test images for verification and the int8
accuracy check), calls :func:`mobilecnn.export.export_model`, and writes beside the file a
``<file>.mobilecnn.json`` sidecar (model, class names, preprocessing, verification numbers) that
``predict`` and ``bench`` read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .evaluate import load_trained
from .predict import EXPORT_SIDECAR_SUFFIX
from .utils import atomic_write_text

__all__ = ["export_run", "sample_images", "DEFAULT_SUFFIX"]

DEFAULT_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "openvino": ".xml", "executorch": ".pte"}
MAX_CALIBRATION = 2048  # int8 calibration holds activations of every image: 60,000 tiny images took 21 GB


def sample_images(data: str, *, data_dir: str | None, resolution: int, split: str, count: int, seed: int = 0,
                  with_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``count`` preprocessed real images (and labels) of a dataset split ("train" or "val")."""
    from .data import load_data

    train_loader, val_loader, _ = load_data(data, data_dir=data_dir, resolution=resolution, batch_size=64,
                                            eval_batch_size=256, seed=seed, val_subset=count if split == "val" else None,
                                            workers=0)
    loader = val_loader if split == "val" else train_loader
    xs, ys, n = [], [], 0
    for x, y in loader.batches(0):
        xs.append(x)
        ys.append(y)
        n += len(y)
        if n >= count:
            break
    return torch.cat(xs)[:count], torch.cat(ys)[:count]


def export_run(
    run: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    int8: bool = False,
    calibration_data: str | None = None,
    data_dir: str | None = None,
    calibration_count: int = 512,
    check_count: int = 2000,
    max_drop: float = 0.5,
    threads: int = 1,
) -> dict[str, Any]:
    """Export a trained run; returns the export report plus the sidecar path. Raises on failure (nothing left)."""
    from .export import FORMATS, export_model

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not accepted; accepted: {', '.join(FORMATS)}")
    if int8 and (isinstance(calibration_count, bool) or not isinstance(calibration_count, int)
                 or not 32 <= calibration_count <= MAX_CALIBRATION):  # calibration keeps every activation: OOM
        raise ValueError(f"--calibration-count {calibration_count!r} is not accepted: it must be an integer in "
                         f"[32, {MAX_CALIBRATION}] (256-512 recommended)")
    loaded = load_trained(run)
    info = loaded.data
    dataset = info.get("name") or "fashion-mnist"
    if dataset.startswith("folder:"):
        dataset = dataset[len("folder:"):]
    resolution = int(info.get("resolution") or 224)
    if out is None:
        base = loaded.run_dir if loaded.run_dir is not None else Path(run).parent
        out = Path(base) / "export" / f"{loaded.model_name}{'_int8' if int8 else ''}{DEFAULT_SUFFIX[fmt]}"
    out = Path(out)
    verify, verify_labels = sample_images(dataset, data_dir=data_dir, resolution=resolution, split="val",
                                          count=check_count if int8 else 256)
    calibration = None
    if int8:
        calibration, _ = sample_images(calibration_data or dataset, data_dir=data_dir, resolution=resolution,
                                       split="train", count=calibration_count)
    report = export_model(
        loaded.model, fmt, out, example=verify[:1], verify_images=verify[:256], int8=int8, calibration=calibration,
        check_images=verify if int8 else None, check_labels=verify_labels if int8 else None, max_drop=max_drop,
        threads=threads,
    )
    result = report.to_dict()
    sidecar = Path(str(report.path) + EXPORT_SIDECAR_SUFFIX)
    try:
        atomic_write_text(sidecar, json.dumps({
            "model": loaded.model_name, "weights": loaded.weights, "source": str(loaded.weights_file), "format": fmt,
            "int8": int8, "data": info, "report": result,
        }, indent=2, default=str) + "\n")
    except OSError as exc:  # e.g. disk full: no exported file may stay without its sidecar
        for leftover in (report.path, report.path.with_suffix(".bin") if fmt == "openvino" else None):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
        raise OSError(exc.errno, f"{exc.strerror or exc}: could not write {sidecar}; {report.path} was removed") from None
    result["sidecar"] = str(sidecar)
    return result
