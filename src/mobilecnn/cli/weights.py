"""``mobilecnn weights import``: published checkpoints (torchvision, timm, Keras, megvii) -> mobilecnn safetensors."""

from __future__ import annotations

import argparse
import json

from ..weights import ImportConfig, run_import
from .console import out, safe
from .options import add_config_arguments, add_json_option, config_from_args

__all__ = ["add_parsers"]


def _cmd_import(args: argparse.Namespace) -> int:
    cfg = config_from_args(ImportConfig, args)
    desc = run_import(cfg)
    if args.json:
        out(json.dumps(desc, indent=2))
        return 0
    pre = desc["data"]["preprocessing"]
    options = ", ".join(f"{k}={v}" for k, v in sorted(desc["model_kwargs"].items())) or "none"
    out(f"{safe(cfg.path)} ({desc['source']['library']}) -> {desc['model']} ({desc['num_classes']} classes, "
        f"architecture options: {options})")
    out(f"preprocessing: {pre['channel_order']}, shorter side {int(pre['resolution'] / pre['crop_fraction'])} then "
        f"centre crop {pre['resolution']}, (x * {pre['scale']:.6g} - mean {pre['mean']}) / std {pre['std']}")
    names = desc["data"]["class_names"]
    if cfg.labels is not None:
        out(f"labels: {len(names)} names from {safe(cfg.labels)}")
    elif names:
        out(f"labels: ImageNet's {len(names)} class names ({safe(names[0])}, {safe(names[1])}, ...); --labels FILE "
            "replaces them")
    else:
        out("labels: none (the file has no classifier)")
    for note in desc["source"]["notes"]:
        out(f"note: {safe(note)}")
    out(f"license: {desc['license']}")
    out(f"wrote {safe(desc['out'])} and {safe(desc['sidecar'])}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="import published weights (torchvision, timm, Keras, megvii ShuffleNet)")
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    q = wsub.add_parser("import", help="convert a published checkpoint into mobilecnn safetensors (exact; see "
                                       "docs/pretrained.md)")
    add_config_arguments(q, ImportConfig)
    add_json_option(q, "the description written")
    q.set_defaults(func=_cmd_import)
