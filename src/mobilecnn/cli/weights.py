"""``mobilecnn weights import|get``: published checkpoints (torchvision, timm, Keras, megvii) -> mobilecnn
safetensors; ``get`` downloads them first."""

from __future__ import annotations

import argparse
import json

from ..weights import GetConfig, ImportConfig, get_weights, run_import
from .commands import help_of
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


def _cmd_get(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from .console import err

    cfg = config_from_args(GetConfig, args)
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("downloading", total=None)
        desc = get_weights(cfg, lambda done, total: bar.update(task, completed=done, total=total))
    if args.json:
        out(json.dumps(desc, indent=2))
        return 0
    how = "downloaded" if desc["downloaded"] else "in the cache"
    out(f"{safe(cfg.model)} ({safe(cfg.source)}): {safe(desc['url'])} {how}, SHA-256 {desc['sha256']} "
        f"({desc['hash_from']})")
    out(f"weights: {safe(desc['out'])} (use create_model({cfg.model!r}, weights=...) or --model / --init)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help=help_of("weights"))
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    q = wsub.add_parser("import", help="convert a published checkpoint into mobilecnn safetensors (exact; see "
                                       "docs/pretrained.md)")
    add_config_arguments(q, ImportConfig)
    add_json_option(q, "the description written")
    q.set_defaults(func=_cmd_import)
    g = wsub.add_parser("get", help="download a model's published weights (hash checked, cached) and import them")
    add_config_arguments(g, GetConfig)
    add_json_option(g, "the description")
    g.set_defaults(func=_cmd_get)
