"""Write an imported checkpoint: ``W.safetensors`` (weights in mobilecnn's layout) whose metadata is the
authoritative description, and the ``W.safetensors.mobilecnn.json`` sidecar, a readable copy of it.

The metadata follows the weights-file schema (:mod:`mobilecnn.models.weights_file`), read by
``create_model(name, weights=W)``, ``load_trained`` (``predict``, ``eval``, ``export``) and ``train --init``;
an imported file has ``in_chans`` 3 and ``small_input`` False, and its

* ``data`` is a dataset description whose ``preprocessing`` is a :class:`~mobilecnn.data.images.Preprocessing`
  dict (mean, std, scale, channel_order, resize, crop_fraction, resolution) and ``class_names`` (the
  ``--labels`` file, else ImageNet's 1000 names shipped in ``weights/imagenet_classes.txt``; none for a file
  without a classifier);
* ``source`` (library, file name, sha256, source variant, conversion notes), ``license`` (a note, not advice),
  ``headless`` (``True`` when the file had no classifier).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..fields import cli, positive_int
from ..files import atomic_write_text, read_bounded, sha256_of
from ..models.weights_file import (
    SIDECAR_SUFFIX,  # one sidecar name for exports and imports
    save_weights,
    weights_metadata,
)
from .common import LICENSES, SOURCES, Converted, imagenet_class_names
from .convert import convert_file

__all__ = ["ImportConfig", "write_imported", "import_weights", "run_import", "SIDECAR_SUFFIX", "read_labels"]


@dataclass
class ImportConfig:
    """``mobilecnn weights import``: which published checkpoint, from where, written where."""

    path: str | Path = field(metadata=cli(
        ".pth/.pth.tar/.pt/.bin (torch.load weights_only), .safetensors, .h5 (Keras, read with h5py)",
        positional=True, metavar="FILE"))
    source: str | None = field(metadata=cli("the library or repository the file comes from", flag="--from",
                                            required=True, choices=list(SOURCES)))
    out: str | Path = field(metadata=cli(
        "output .safetensors (a .mobilecnn.json sidecar is written beside)", required=True))
    model: str | None = field(default=None, metadata=cli(
        "registered model name (default: inferred from the tensor shapes)"))
    variant: str | None = field(default=None, metadata=cli(
        "timm only: the timm model name (e.g. mobilenetv2_100), checked"))
    resolution: int | None = field(default=None, metadata=cli(
        "input side the weights were trained at (default: Keras file name's, else 224)", type=positive_int))
    labels: str | Path | None = field(default=None, metadata=cli("text file with one class name per line"))


#: The largest --labels file read (ImageNet's 1000 names take 21 KB).
MAX_LABELS_BYTES = 4 << 20


def read_labels(path: str | Path, num_classes: int) -> list[str]:
    """One class name per line (blank lines ignored); the count must equal the classifier's outputs."""
    try:
        raw = read_bounded(path, MAX_LABELS_BYTES, "a text file with one class name per line")
        names = [line.strip() for line in raw.decode("utf8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise UsageError(f"--labels {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise UsageError(f"--labels {exc}") from None
    if len(names) != num_classes:
        raise UsageError(f"--labels {path} holds {len(names)} names for a classifier with {num_classes} outputs")
    return names


def _published_names(conv: Converted) -> list[str] | None:
    """ImageNet's class names for a classifier of its 1000 classes (every source's files were trained on it);
    None for a file without a classifier."""
    return imagenet_class_names() if not conv.headless and conv.num_classes == 1000 else None


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
    meta = weights_metadata(conv.model_name, conv.num_classes, 3, False, conv.model_kwargs,
                            data=json.dumps(desc["data"]), source=json.dumps(desc["source"]), license=desc["license"],
                            headless=str(conv.headless))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, conv.state_dict, meta)
    atomic_write_text(Path(str(out) + SIDECAR_SUFFIX), json.dumps(desc, indent=2) + "\n")
    return desc


def import_weights(path: str | Path, source: str | None, out: str | Path, **options: Any) -> dict[str, Any]:
    """:func:`run_import` of ``ImportConfig(path, source, out, **options)`` (``model``, ``variant``,
    ``resolution``, ``labels``)."""
    return run_import(ImportConfig(path, source, out, **options))


def run_import(config: ImportConfig) -> dict[str, Any]:
    """``mobilecnn weights import``: convert ``config.path`` and write ``config.out``; returns the description."""
    c = config
    source = Path(c.path).resolve()
    if source in (Path(c.out).resolve(), Path(str(c.out) + SIDECAR_SUFFIX).resolve()):
        raise UsageError(f"--out {c.out} is the file being imported ({c.path}); the conversion would replace its "
                         "source: name another --out")
    conv = convert_file(c.path, c.source, model=c.model, variant=c.variant, resolution=c.resolution)
    names = read_labels(c.labels, conv.num_classes) if c.labels is not None else _published_names(conv)
    origin = {"file": Path(c.path).name, "sha256": sha256_of(c.path)}
    desc = write_imported(c.out, conv, names, origin)
    desc["out"] = str(c.out)
    desc["sidecar"] = str(c.out) + SIDECAR_SUFFIX
    return desc
