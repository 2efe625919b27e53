"""The run directory: its lock, its ``config.json`` and ``metrics.jsonl``, and loading the trained model.

A run directory holds ``config.json`` (model, data description, every argument), ``metrics.jsonl``
(one line per epoch), ``curves.png`` and ``checkpoints/`` (:mod:`.checkpoints`); the names are in
:mod:`.layout`. ``eval``, ``export``
and ``predict`` need only the directory: ``config.json`` names the model and its arguments, and the
last complete checkpoint holds the weights. A lone ``.safetensors`` written by ``train`` carries the
same description in its metadata.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch import nn

from ..errors import CheckpointError, RunLockedError, TrainError
from ..files import atomic_write_text, read_json_object
from ..models import create_model
from ..models.weights_file import check_state_fits, load_weights, read_metadata, written_by_mobilecnn
from .checkpoints import latest_checkpoint
from .layout import CHECKPOINTS_DIR, CONFIG_FILE, EMA_WEIGHTS, LOCK_FILE, MODEL_WEIGHTS, STATE_FILE

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
        return list(self.data.get("class_names") or [str(i) for i in range(cast(int, self.model.num_classes))])


def _json_field(meta: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta[key])
    except ValueError as exc:
        raise CheckpointError(f"{path}: its {key!r} metadata is not valid JSON ({exc})") from None


def _served_weights(ckpt: Path) -> str | None:
    """"model" when training found the raw weights better than the EMA ones at the end (state.json)."""
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state.get("serve") if isinstance(state, dict) else None


def _weights_in(ckpt: Path, prefer_ema: bool) -> tuple[Path, str]:
    ema = ckpt / EMA_WEIGHTS
    if prefer_ema and ema.is_file() and _served_weights(ckpt) != "model":
        return ema, "ema"
    return ckpt / MODEL_WEIGHTS, "model"


def load_trained(path: str | Path, prefer_ema: bool = True) -> LoadedModel:
    """A model ready for inference (eval mode) from a run directory, checkpoint directory or weight file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: pass a run directory made by `mobilecnn train` or a "
                              ".safetensors file")
    run_dir: Path | None = None
    if path.is_dir():
        ckpt: Path | None
        if (path / MODEL_WEIGHTS).is_file():  # a checkpoint directory
            ckpt = path
            run_dir = path.parent.parent if path.parent.name == CHECKPOINTS_DIR else None
        else:
            ckpt = latest_checkpoint(path)
            if ckpt is None:
                hint = f" (it holds no {CONFIG_FILE} either)" if not (path / CONFIG_FILE).is_file() else ""
                raise CheckpointError(f"{path} holds no complete checkpoint{hint}; train first with "
                                      f"`mobilecnn train --out {path}`")
            run_dir = path
        weights_file, kind = _weights_in(ckpt, prefer_ema)
    else:
        weights_file, kind = path, "ema" if path.name.startswith("ema") else "model"
        if path.parent.parent.name == CHECKPOINTS_DIR:
            run_dir = path.parent.parent.parent
    meta = read_metadata(weights_file)
    if not written_by_mobilecnn(meta):
        raise CheckpointError(f"{weights_file} was not written by mobilecnn (no model description in its metadata)")
    config = read_config(run_dir) if run_dir is not None else {}
    if run_dir is not None and config.get("model") and meta.get("model") and config["model"] != meta["model"]:
        raise CheckpointError(f"{weights_file} holds {meta['model']} but {run_dir / CONFIG_FILE} was written for "
                              f"{config['model']}: the checkpoint belongs to another run; point at its own run "
                              "directory, or at the .safetensors file alone")
    data = _json_field(meta, "data", weights_file) if meta.get("data") else config.get("data", {})
    extra = _json_field(meta, "model_kwargs", weights_file) if meta.get("model_kwargs") else {}
    if not isinstance(data, dict) or not isinstance(extra, dict):
        raise CheckpointError(f"{weights_file}: its data / model_kwargs metadata must be JSON objects")
    try:
        num_classes, in_chans = int(meta["num_classes"]), int(meta["in_chans"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{weights_file}: num_classes / in_chans metadata must be integers, got "
                              f"{meta.get('num_classes')!r} / {meta.get('in_chans')!r}") from None
    try:
        model = create_model(meta["model"], num_classes=num_classes, in_chans=in_chans,
                             small_input=meta.get("small_input") == "True", **extra)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{weights_file}: its metadata does not describe a buildable model ({exc})") from None
    state = load_weights(weights_file)
    if kind == "ema" or any(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
    check_state_fits(state, model, weights_file)
    model.load_state_dict(state)
    return LoadedModel(model.eval(), meta["model"], weights_file, kind, data, run_dir)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on a run directory: a second ``train`` into it is refused, not interleaved.

    The lock file is opened without following links (``O_NOFOLLOW``) and must be a regular file, so a
    ``.lock`` planted as a link to a user's file can never be truncated; the PID is written only
    once the lock is held. Call it only after the directory was found fit for the run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TrainError(f"{path} is a symbolic link: mobilecnn never writes through a link in a run "
                             "directory; remove it or choose another --out") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TrainError(f"{path} is not a regular file; remove it or choose another --out")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{run_dir} is in use by another mobilecnn train (lock held on {path}); "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _refuse_if_locked(run_dir: Path) -> None:
    """Raise :class:`RunLockedError` when another process holds the run's lock (checked read-only)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # no lock file (or a link, refused later by run_lock)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunLockedError(f"{run_dir} is in use by another mobilecnn train (lock held on {run_dir / LOCK_FILE}); "
                             "wait for it to finish or choose another --out") from None
    finally:
        os.close(fd)


def prepare_run_dir(identity: dict[str, Any], run_dir: Path, resume: bool | str, check_lock: bool = True
                    ) -> Path | None:
    """Refuse a directory holding another run; return the checkpoint to resume from (or None).

    Read-only: it creates and changes nothing, so a refused command leaves nothing behind.
    ``resume="auto"`` resumes when the directory holds a complete checkpoint of this run, else starts it.
    ``check_lock``: first refuse a directory another process is training into (not when the caller
    holds the lock itself).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"--out {run_dir} is a file, not a directory; choose a directory for the run")
    if check_lock:
        _refuse_if_locked(run_dir)
    config_file = run_dir / CONFIG_FILE
    ckpt = latest_checkpoint(run_dir)
    if resume == "auto":
        resume = ckpt is not None and config_file.is_file()
    if config_file.is_file():
        try:
            previous = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise TrainError(f"{config_file} is unreadable ({exc}); choose another --out") from None
        if not isinstance(previous, dict) or not isinstance(previous.get("identity", {}), dict):
            raise TrainError(f"{config_file} is not the JSON object `mobilecnn train` writes; choose another --out")
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
        raise TrainError(f"nothing to resume in {run_dir}: it holds no {CONFIG_FILE}; start without --resume")
    elif run_dir.exists() and any(p.name != LOCK_FILE and not (p.name.startswith(".") and p.name.endswith(".tmp"))
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
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(record, indent=2) + "\n")


def read_config(run_dir: Path) -> dict[str, Any]:
    """``config.json`` of a run as a dict; ``{}`` when the run has none. Errors name the file."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    return read_json_object(path, "`mobilecnn train`", CheckpointError)
