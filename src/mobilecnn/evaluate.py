"""Load a trained model from a run directory or a weight file, and evaluate it on a dataset.

``eval``, ``export`` and ``predict`` need only the run directory: ``config.json`` names the model and
its arguments, and the last complete checkpoint holds the weights (the EMA weights when present).
A lone ``.safetensors`` written by ``train`` carries the same description in its metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError, latest_checkpoint, load_weights, read_metadata
from .registry import create_model
from .utils import atomic_write_text

__all__ = ["LoadedModel", "load_trained", "evaluate_run"]


@dataclass
class LoadedModel:
    model: nn.Module
    model_name: str
    weights_file: Path
    weights: str  # "ema" or "model"
    data: dict[str, Any]  # DataInfo.to_dict(): class_names, mean, std, resolution, in_chans, name...
    run_dir: Path | None

    @property
    def class_names(self) -> list[str]:
        return list(self.data.get("class_names") or [str(i) for i in range(self.model.num_classes)])


def _weights_in(ckpt: Path, prefer_ema: bool) -> tuple[Path, str]:
    ema = ckpt / "ema.safetensors"
    if prefer_ema and ema.is_file():
        return ema, "ema"
    return ckpt / "model.safetensors", "model"


def load_trained(path: str | Path, prefer_ema: bool = True) -> LoadedModel:
    """A model ready for inference (eval mode) from a run directory, checkpoint directory or weight file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: pass a run directory made by `mobilecnn train` or a .safetensors file")
    run_dir: Path | None = None
    if path.is_dir():
        if (path / "model.safetensors").is_file():  # a checkpoint directory
            ckpt = path
            run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        else:
            ckpt = latest_checkpoint(path)
            if ckpt is None:
                hint = " (it holds no config.json either)" if not (path / "config.json").is_file() else ""
                raise CheckpointError(f"{path} holds no complete checkpoint{hint}; train first with `mobilecnn train --out {path}`")
            run_dir = path
        weights_file, kind = _weights_in(ckpt, prefer_ema)
    else:
        weights_file, kind = path, "ema" if path.name.startswith("ema") else "model"
        if path.parent.parent.name == "checkpoints":
            run_dir = path.parent.parent.parent
    meta = read_metadata(weights_file)
    if meta.get("format") != "mobilecnn" or not meta.get("model"):
        raise CheckpointError(f"{weights_file} was not written by mobilecnn (no model description in its metadata)")
    config: dict[str, Any] = {}
    if run_dir is not None and (run_dir / "config.json").is_file():
        config = json.loads((run_dir / "config.json").read_text())
    data = json.loads(meta["data"]) if meta.get("data") else config.get("data", {})
    extra = json.loads(meta.get("model_kwargs") or "{}")
    model = create_model(
        meta["model"], num_classes=int(meta["num_classes"]), in_chans=int(meta["in_chans"]),
        small_input=meta.get("small_input") == "True", **extra,
    )
    state = load_weights(weights_file)
    if kind == "ema" or any(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights_file} does not fit {meta['model']}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return LoadedModel(model.eval(), meta["model"], weights_file, kind, data, run_dir)


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
) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy and confusion matrix on the validation split; writes JSON + PNG."""
    from .data import load_data
    from .plots import plot_confusion
    from .train import evaluate_model

    loaded = load_trained(path, prefer_ema)
    dataset = data or loaded.data.get("name") or "fashion-mnist"
    if dataset.startswith("folder:"):
        dataset = dataset[len("folder:"):]
    _, val_loader, info = load_data(dataset, data_dir=data_dir, resolution=loaded.data.get("resolution"),
                                    batch_size=batch_size, eval_batch_size=batch_size, val_subset=subset, workers=workers)
    if info.num_classes != loaded.model.num_classes:
        raise CheckpointError(
            f"{loaded.weights_file} was trained for {loaded.model.num_classes} classes but {info.name} has "
            f"{info.num_classes}: evaluate on the dataset it was trained on"
        )
    if info.in_chans != loaded.model.in_chans:
        raise CheckpointError(f"{loaded.weights_file} expects {loaded.model.in_chans}-channel images but {info.name} "
                              f"has {info.in_chans}")
    result = evaluate_model(loaded.model, val_loader, num_classes=info.num_classes)
    result.update({"model": loaded.model_name, "weights": loaded.weights, "weights_file": str(loaded.weights_file),
                   "data": info.name, "class_names": info.class_names})
    out = Path(out_dir) if out_dir else (loaded.run_dir / "eval" if loaded.run_dir else Path("eval"))
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2) + "\n")
    plot_confusion(result["confusion"], info.class_names, out / "confusion.png",
                   title=f"{loaded.model_name} on {info.name}: top-1 {result['top1']:.2f}%")
    result["outputs"] = {"json": str(out / "eval.json"), "confusion_png": str(out / "confusion.png")}
    return result
