"""The run directory: its lock, its ``config.json`` and ``metrics.jsonl``, and loading the trained model.

A run directory holds ``config.json`` (model, data description, every argument), ``metrics.jsonl``
(one line per epoch), ``curves.png`` and ``checkpoints/`` (:mod:`.checkpoints`). ``eval``, ``export``
and ``predict`` need only the directory: ``config.json`` names the model and its arguments, and the
last complete checkpoint holds the weights. A lone ``.safetensors`` written by ``train`` carries the
same description in its metadata.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import CheckpointError, RunLockedError, TrainError
from ..models import create_model
from .checkpoints import latest_checkpoint, load_weights, read_metadata
from .files import atomic_write_text

__all__ = ["LoadedModel", "load_trained", "run_lock", "prepare_run_dir", "append_jsonl", "write_config", "read_config"]


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


def _served_weights(ckpt: Path) -> str | None:
    """"model" when training found the raw weights better than the EMA ones at the end (state.json)."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state.get("serve") if isinstance(state, dict) else None


def _weights_in(ckpt: Path, prefer_ema: bool) -> tuple[Path, str]:
    ema = ckpt / "ema.safetensors"
    if prefer_ema and ema.is_file() and _served_weights(ckpt) != "model":
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
    config = read_config(run_dir) if run_dir is not None else {}
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


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on a run directory: a second ``train`` into it is refused, not interleaved."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{run_dir} is in use by another mobilecnn train (lock held on {run_dir / '.lock'}); "
                "wait for it to finish or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def prepare_run_dir(identity: dict[str, Any], run_dir: Path, resume: bool | str) -> Path | None:
    """Refuse a directory holding another run; return the checkpoint to resume from (or None).

    ``resume="auto"`` resumes when the directory holds a complete checkpoint of this run, else starts it.
    """
    config_file = run_dir / "config.json"
    ckpt = latest_checkpoint(run_dir)
    if resume == "auto":
        resume = ckpt is not None and config_file.is_file()
    if config_file.is_file():
        try:
            previous = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise TrainError(f"{config_file} is unreadable ({exc}); choose another --out") from None
        prev_id = previous.get("identity", {})
        mine = json.loads(json.dumps(identity))
        diff = [k for k in sorted(set(prev_id) | set(mine)) if prev_id.get(k) != mine.get(k)]
        if diff:
            shown = ", ".join(f"{k}: {prev_id.get(k)!r} there vs {mine.get(k)!r} now" for k in diff[:4])
            raise TrainError(f"{run_dir} already holds a different run ({shown}); choose another --out")
        if not resume and ckpt is not None:
            raise TrainError(f"{run_dir} already holds this run (checkpoint {ckpt.name}); pass --resume to continue it "
                             "or choose another --out")
    elif resume:
        raise TrainError(f"nothing to resume in {run_dir}: it holds no config.json; start without --resume")
    elif run_dir.exists() and any(p.name != ".lock" and not (p.name.startswith(".") and p.name.endswith(".tmp"))
                                  for p in run_dir.iterdir()):  # atomic-write debris of a killed run is not a run
        raise TrainError(f"{run_dir} is not empty and holds no mobilecnn run; choose another --out")
    return ckpt if resume else None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())




def write_config(run_dir: Path, record: dict[str, Any]) -> None:
    """Write ``config.json`` atomically."""
    atomic_write_text(run_dir / "config.json", json.dumps(record, indent=2) + "\n")


def read_config(run_dir: Path) -> dict[str, Any]:
    """``config.json`` of a run as a dict; ``{}`` when the run has none. Errors name the file."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); it must be the JSON object `mobilecnn train` wrote") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not the object `mobilecnn train` writes")
    return config
