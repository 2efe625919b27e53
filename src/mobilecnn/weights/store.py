"""Write an imported checkpoint: ``W.safetensors`` (weights in mobilecnn's layout) whose metadata is the
authoritative description, and the ``W.safetensors.mobilecnn.json`` sidecar, a readable copy of it.

Metadata (all strings; JSON where structured), read by ``create_model(name, weights=W)``,
``load_trained`` (``predict``, ``eval``, ``export``) and ``train --init``:

* ``format`` = ``mobilecnn``, ``model``, ``num_classes``, ``in_chans`` (3), ``small_input`` (False);
* ``model_kwargs``: the architecture options the weights need (``padding``, ``bn_eps``, ``act``);
* ``data``: a dataset description whose ``preprocessing`` is a :class:`~mobilecnn.data.images.Preprocessing`
  dict (mean, std, scale, channel_order, resize, crop_fraction, resolution) and ``class_names`` (the
  ``--labels`` file, else empty: ImageNet's class names do not ship with mobilecnn);
* ``source`` (library, file name, sha256, source variant, conversion notes), ``license`` (a note, not advice),
  ``headless`` (``True`` when the file had no classifier).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..runs.checkpoints import save_weights
from ..runs.files import atomic_write_text, sha256_of
from .common import LICENSES, Converted
from .convert import convert_file

__all__ = ["write_imported", "import_weights", "SIDECAR_SUFFIX", "read_labels"]

from ..deploy.formats import SIDECAR_SUFFIX  # one sidecar name for exports and imports
MAX_LABELS = 100_000




def read_labels(path: str | Path, num_classes: int) -> list[str]:
    """One class name per line (blank lines ignored); the count must equal the classifier's outputs."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--labels {path}: unreadable ({exc})") from None
    if len(names) != num_classes:
        raise UsageError(f"--labels {path} holds {len(names)} names for a classifier with {num_classes} outputs")
    return names


def description(conv: Converted, labels: list[str] | None, origin: dict[str, Any]) -> dict[str, Any]:
    pre = conv.preprocessing
    data = {"name": f"imported:{conv.source}", "num_classes": conv.num_classes, "class_names": labels or [],
            "in_chans": pre.in_chans, "mean": list(pre.mean), "std": list(pre.std), "resolution": pre.resolution,
            "preprocessing": pre.to_dict()}
    return {"model": conv.model_name, "num_classes": conv.num_classes, "model_kwargs": conv.model_kwargs,
            "data": data, "source": {"library": conv.source, "variant": conv.variant, **origin, "notes": conv.notes},
            "license": LICENSES[conv.source], "headless": conv.headless}


def write_imported(out: str | Path, conv: Converted, labels: list[str] | None = None,
                   origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out`` (safetensors) and ``out.mobilecnn.json``; returns the description written."""
    out = Path(out)
    if not out.name.endswith(".safetensors"):
        raise UsageError(f"--out {out}: the imported weights are written as safetensors; name it *.safetensors")
    desc = description(conv, labels, origin or {})
    meta = {"format": "mobilecnn", "model": conv.model_name, "num_classes": str(conv.num_classes), "in_chans": "3",
            "small_input": "False", "model_kwargs": json.dumps(conv.model_kwargs, sort_keys=True),
            "data": json.dumps(desc["data"]), "source": json.dumps(desc["source"]), "license": desc["license"],
            "headless": str(conv.headless)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, conv.state_dict, meta)
    atomic_write_text(Path(str(out) + SIDECAR_SUFFIX), json.dumps(desc, indent=2) + "\n")
    return desc


def import_weights(path: str | Path, source: str | None, out: str | Path, *, model: str | None = None,
                   variant: str | None = None, resolution: int | None = None,
                   labels: str | Path | None = None) -> dict[str, Any]:
    """``mobilecnn weights import``: convert ``path`` and write ``out``; returns the description."""
    conv = convert_file(path, source, model=model, variant=variant, resolution=resolution)
    names = read_labels(labels, conv.num_classes) if labels is not None else None
    origin = {"file": Path(path).name, "sha256": sha256_of(path)}
    desc = write_imported(out, conv, names, origin)
    desc["out"] = str(out)
    desc["sidecar"] = str(out) + SIDECAR_SUFFIX
    return desc
