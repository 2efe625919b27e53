"""Training checkpoints: weights, EMA weights, optimizer and RNG state of one step, written atomically.

A training checkpoint is a directory ``checkpoints/step-00001234/`` (names in :mod:`.layout`) holding

* ``model.safetensors``: the weights, in the weights-file format (:mod:`mobilecnn.models.weights_file`);
* ``ema.safetensors``: the EMA weights (when EMA is on);
* ``state.safetensors`` + ``state.json``: optimizer tensors and RNG state / epoch, step and the
  optimizer's non-tensor state.

The directory is filled under a temporary name and renamed into place, then the ``LATEST`` pointer
is replaced atomically: a crash at any moment leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError
from ..files import atomic_write_text, mode_for
from ..models.weights_file import load_weights, model_metadata, plain_state
from .layout import (
    CHECKPOINTS_DIR,
    EMA_WEIGHTS,
    LATEST,
    MODEL_WEIGHTS,
    STATE_FILE,
    STATE_TENSORS,
    STEP_NAME,
    checkpoint_name,
)

__all__ = ["LATEST", "save_training_checkpoint", "latest_checkpoint", "load_training_state"]


def _optimizer_split(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": opt_state["param_groups"], "state": {}}
    for idx, entry in opt_state["state"].items():
        plain["state"][str(idx)] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{name}"] = value
            else:
                plain["state"][str(idx)][name] = value
    return tensors, plain


def _optimizer_join(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_training_checkpoint(
    run_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: dict[str, Any],
    ema: nn.Module | None = None,
    metadata: dict[str, str] | None = None,
    keep: int = 2,
) -> Path:
    """Write a complete training checkpoint and point ``LATEST`` at it; keep the last ``keep``.

    ``progress``: ``epoch``, ``step`` and ``step_in_epoch``, plus anything else ``state.json`` keeps (the
    epoch's running metrics, the gradient scaler, which weights to serve).
    """
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(progress["step"])
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp-{os.getpid()}"
    for stale in ckpt_root.glob(".step-*.tmp-*"):  # left by a killed writer (the run lock admits one writer)
        _remove_inside(stale)
    for stale in ckpt_root.glob(f".{LATEST}.*.tmp"):  # a killed atomic_write_text of the pointer
        stale.unlink(missing_ok=True)
    tmp.mkdir()
    try:
        meta = {**model_metadata(model), **(metadata or {})}
        save_file(plain_state(model.state_dict()), str(tmp / MODEL_WEIGHTS), metadata=meta)
        if ema is not None:
            save_file(plain_state(ema.state_dict()), str(tmp / EMA_WEIGHTS), metadata=meta)
        opt_tensors, opt_plain = _optimizer_split(optimizer.state_dict())
        opt_tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on a GPU draws from its RNG
            opt_tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(plain_state(opt_tensors), str(tmp / STATE_TENSORS))
        position = {k: progress[k] for k in ("epoch", "step", "step_in_epoch")}
        state = {**position, "optimizer": opt_plain, **{k: v for k, v in progress.items() if k not in position}}
        (tmp / STATE_FILE).write_text(json.dumps(state))
        for f in tmp.iterdir():
            os.chmod(f, mode_for(final / f.name))  # safetensors writes 0600; the run follows the umask
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        if final.exists() or final.is_symlink():
            _remove_inside(final)
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, SafetensorError):  # e.g. disk full: an OSError naming the checkpoint, not a Rust error
            raise OSError(f"could not write checkpoint {final}: {exc}") from None
        raise
    atomic_write_text(ckpt_root / LATEST, name + "\n")
    old = sorted(p for p in ckpt_root.glob("step-*") if _real_dir(p) and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        _remove_inside(p)
    return final


def _real_dir(path: Path) -> bool:
    """A directory that is not a symbolic link (links in a run are the user's: never followed, never pruned)."""
    return path.is_dir() and not path.is_symlink()


def _remove_inside(path: Path) -> None:
    """Delete a checkpoint entry of this run without following links: a link is removed, never its target."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    (path / STATE_FILE).unlink(missing_ok=True)  # first: a half-deleted checkpoint must not look complete
    shutil.rmtree(path, ignore_errors=True)  # rmtree does not follow links inside the tree


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The last complete checkpoint directory of a run, or ``None``.

    Only a real ``checkpoints/step-N`` directory of this run counts: ``LATEST`` naming anything else
    (another path, a link to another run's checkpoint) is ignored, never followed.
    """
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    if not _real_dir(ckpt_root):
        return None
    pointer = ckpt_root / LATEST
    if pointer.is_file() and not pointer.is_symlink():
        try:
            name = pointer.read_text(errors="replace").strip()
        except OSError:
            name = ""
        candidate = ckpt_root / name
        if STEP_NAME.fullmatch(name) and _complete(candidate):
            return candidate
    complete = sorted(p for p in ckpt_root.glob("step-*") if STEP_NAME.fullmatch(p.name) and _complete(p))
    return complete[-1] if complete else None


def _complete(ckpt: Path) -> bool:
    state = ckpt / STATE_FILE
    return _real_dir(ckpt) and state.is_file() and not state.is_symlink()


def load_training_state(
    ckpt: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, ema: nn.Module | None = None
) -> dict[str, Any]:
    """Restore model (+ optimizer, EMA, torch RNG) from a checkpoint directory; returns its ``state.json``."""
    load_weights(ckpt / MODEL_WEIGHTS, model)
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt / STATE_FILE} is unreadable ({exc})") from None
    tensors = load_weights(ckpt / STATE_TENSORS, check_values=False)  # refuses pickles, names the file on any error
    if optimizer is not None:
        optimizer.load_state_dict(_optimizer_join(tensors, state["optimizer"]))
    if ema is not None:
        ema_file = ckpt / EMA_WEIGHTS
        if not ema_file.is_file():
            raise CheckpointError(f"{ckpt} has no EMA weights but this run uses --ema")
        ema.load_state_dict(load_weights(ema_file))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():  # a run resumed on a GPU (from a GPU checkpoint)
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state
