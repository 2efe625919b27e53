"""Checkpoints: safetensors only (no pickle), written atomically, with the model described in metadata.

A training checkpoint is a directory ``checkpoints/step-00001234/`` holding

* ``model.safetensors``: the weights, with metadata ``model``, ``num_classes``, ``in_chans``, ``small_input``;
* ``ema.safetensors``: the EMA weights (when EMA is on);
* ``state.safetensors`` + ``state.json``: optimizer tensors and RNG state / epoch, step and the
  optimizer's non-tensor state.

The directory is filled under a temporary name and renamed into place, then the ``LATEST`` pointer
is replaced atomically: a crash at any moment leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from .files import atomic_write, atomic_write_text

__all__ = [
    "CheckpointError",
    "model_metadata",
    "save_weights",
    "load_weights",
    "check_state_fits",
    "read_metadata",
    "described_model",
    "save_training_checkpoint",
    "latest_checkpoint",
    "load_training_state",
]

LATEST = "LATEST"


def model_metadata(model: nn.Module) -> dict[str, str]:
    """What identifies a model's weights: registry name, class count, input channels, stem, and the
    architecture options (``padding``, ``bn_eps``, ``act``) when they are not the defaults."""
    meta = {
        "format": "mobilecnn",
        "model": str(getattr(model, "model_name", type(model).__name__)),
        "num_classes": str(getattr(model, "num_classes", "")),
        "in_chans": str(getattr(model, "in_chans", "")),
        "small_input": str(getattr(model, "small_input", "")),
    }
    if getattr(model, "model_kwargs", None):
        meta["model_kwargs"] = json.dumps(model.model_kwargs, sort_keys=True)
    return meta


def described_model(path: str | Path) -> dict[str, Any]:
    """What a weights file's metadata says about the model it fits: ``model``, ``num_classes``,
    ``in_chans``, ``small_input`` and ``model_kwargs`` (architecture options such as ``padding``,
    ``bn_eps``, ``act``), each only when recorded. Errors name the file."""
    meta = read_metadata(path)
    out: dict[str, Any] = {}
    try:
        if meta.get("model"):
            out["model"] = meta["model"]
        for key in ("num_classes", "in_chans"):
            if meta.get(key):
                out[key] = int(meta[key])
        if meta.get("small_input") in ("True", "False"):
            out["small_input"] = meta["small_input"] == "True"
        kwargs = json.loads(meta.get("model_kwargs") or "{}")
    except ValueError as exc:
        raise CheckpointError(f"{path}: unreadable model description in its metadata ({exc})") from None
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: model_kwargs in its metadata is not an object")
    out["model_kwargs"] = kwargs
    return out


def _plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous tensors that share no memory; weights on a GPU are written from host copies
    return {k: v.detach().cpu().contiguous().clone() if v.data_ptr() else v.detach().cpu().contiguous()
            for k, v in state.items()}


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write ``state`` to ``path`` as safetensors, atomically."""
    tensors = _plain_state(state)
    try:
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    except SafetensorError as exc:  # e.g. disk full
        raise OSError(f"could not write {path}: {exc}") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata stored in a safetensors file's header (no tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


def load_weights(path: str | Path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors weight file; with ``model``, check it belongs to that model, then load it.

    Only safetensors is accepted: a pickle (``.pt``/``.pth`` from ``torch.save``) is refused,
    because unpickling can run arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:2] in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        raise CheckpointError(
            f"{path} is a pickle/torch.save file; mobilecnn loads only safetensors (unpickling can run code). "
            "Convert trusted weights with safetensors.torch.save_file."
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    if model is not None:
        meta = read_metadata(path)
        mine = model_metadata(model)
        for key, what in (("model", "model"), ("num_classes", "class count"), ("in_chans", "input channels"),
                          ("small_input", "small_input stem")):
            if meta.get(key) and mine.get(key) and meta[key] != mine[key]:
                raise CheckpointError(
                    f"{path} holds weights for {meta.get('model')} (num_classes={meta.get('num_classes')}, "
                    f"in_chans={meta.get('in_chans')}, small_input={meta.get('small_input')}), but the model is "
                    f"{mine['model']} (num_classes={mine['num_classes']}, in_chans={mine['in_chans']}, "
                    f"small_input={mine['small_input']}): the {what} differs"
                )
        arch = getattr(model, "arch", None) or {}
        try:
            recorded = json.loads(meta.get("model_kwargs") or "{}")
        except ValueError:
            recorded = {}
        differ = [k for k, v in (recorded.items() if isinstance(recorded, dict) else ()) if k in arch and arch[k] != v]
        if differ:  # same shapes, another function (e.g. Keras weights without TF padding): refuse
            shown = ", ".join(f"{k}={recorded[k]!r} in the file vs {arch[k]!r}" for k in differ)
            raise CheckpointError(f"{path} was made for {meta.get('model')} with {shown} in the model; build it with "
                                  f"create_model({meta.get('model')!r}, weights=...) and the file's own options")
        check_state_fits(state, model, path)
        model.load_state_dict(state)
    return state


def check_state_fits(state: dict[str, torch.Tensor], model: nn.Module, path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first missing, unknown or wrongly shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    wrong_type = [k for k in expected if k in state and state[k].is_floating_point() != expected[k].is_floating_point()]
    if missing or unexpected or wrong or wrong_type:
        detail = "; ".join(
            part for part in (
                f"missing {len(missing)} tensors (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unknown tensors (e.g. {unexpected[0]})" if unexpected else "",
                f"shape mismatch for {wrong[0]}: file {tuple(state[wrong[0]].shape)} vs model "
                f"{tuple(expected[wrong[0]].shape)}" if wrong else "",
                f"dtype mismatch for {wrong_type[0]}: file {state[wrong_type[0]].dtype}" if wrong_type else "",
            ) if part
        )
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"{path} does not fit {name}: {detail}")


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
    epoch: int,
    step: int,
    step_in_epoch: int,
    ema: nn.Module | None = None,
    extra: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    keep: int = 2,
) -> Path:
    """Write a complete training checkpoint for ``step`` and point ``LATEST`` at it; keep the last ``keep``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp-{os.getpid()}"
    for stale in ckpt_root.glob(".step-*.tmp-*"):  # left by a killed writer (the run lock admits one writer)
        _remove_inside(stale)
    for stale in ckpt_root.glob(f".{LATEST}.*.tmp"):  # a killed atomic_write_text of the pointer
        stale.unlink(missing_ok=True)
    tmp.mkdir()
    try:
        meta = {**model_metadata(model), **(metadata or {})}
        save_file(_plain_state(model.state_dict()), str(tmp / "model.safetensors"), metadata=meta)
        if ema is not None:
            save_file(_plain_state(ema.state_dict()), str(tmp / "ema.safetensors"), metadata=meta)
        opt_tensors, opt_plain = _optimizer_split(optimizer.state_dict())
        opt_tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on a GPU draws from its RNG
            opt_tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(_plain_state(opt_tensors), str(tmp / "state.safetensors"))
        state = {"epoch": epoch, "step": step, "step_in_epoch": step_in_epoch, "optimizer": opt_plain,
                 **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(state))
        for f in tmp.iterdir():
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
    (path / "state.json").unlink(missing_ok=True)  # first: a half-deleted checkpoint must not look complete
    shutil.rmtree(path, ignore_errors=True)  # rmtree does not follow links inside the tree


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The last complete checkpoint directory of a run, or ``None``.

    Only a real ``checkpoints/step-N`` directory of this run counts: ``LATEST`` naming anything else
    (another path, a link to another run's checkpoint) is ignored, never followed.
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    if not _real_dir(ckpt_root):
        return None
    pointer = ckpt_root / LATEST
    if pointer.is_file() and not pointer.is_symlink():
        try:
            name = pointer.read_text(errors="replace").strip()
        except OSError:
            name = ""
        candidate = ckpt_root / name
        if _STEP_NAME.fullmatch(name) and _complete(candidate):
            return candidate
    complete = sorted(p for p in ckpt_root.glob("step-*") if _STEP_NAME.fullmatch(p.name) and _complete(p))
    return complete[-1] if complete else None


_STEP_NAME = re.compile(r"step-\d{8,}")


def _complete(ckpt: Path) -> bool:
    state = ckpt / "state.json"
    return _real_dir(ckpt) and state.is_file() and not state.is_symlink()


def load_training_state(
    ckpt: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, ema: nn.Module | None = None
) -> dict[str, Any]:
    """Restore model (+ optimizer, EMA, torch RNG) from a checkpoint directory; returns its ``state.json``."""
    load_weights(ckpt / "model.safetensors", model)
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt / 'state.json'} is unreadable ({exc})") from None
    tensors = load_weights(ckpt / "state.safetensors")  # refuses pickles, names the file on any error
    if optimizer is not None:
        optimizer.load_state_dict(_optimizer_join(tensors, state["optimizer"]))
    if ema is not None:
        ema_file = ckpt / "ema.safetensors"
        if not ema_file.is_file():
            raise CheckpointError(f"{ckpt} has no EMA weights but this run uses --ema")
        ema.load_state_dict(load_weights(ema_file))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():  # a run resumed on a GPU (from a GPU checkpoint)
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state
