"""``mobilecnn weights import``: published checkpoints (torchvision, timm, Keras, megvii) -> mobilecnn safetensors."""

from __future__ import annotations

import argparse
import json

from .console import out, safe
from .options import positive_int

__all__ = ["add_parsers"]


def _cmd_import(args: argparse.Namespace) -> int:
    from ..weights import import_weights

    desc = import_weights(args.file, args.source, args.out, model=args.model, variant=args.variant,
                          resolution=args.resolution, labels=args.labels)
    if args.json:
        out(json.dumps(desc, indent=2))
        return 0
    pre = desc["data"]["preprocessing"]
    options = ", ".join(f"{k}={v}" for k, v in sorted(desc["model_kwargs"].items())) or "none"
    out(f"{safe(args.file)} ({desc['source']['library']}) -> {desc['model']} ({desc['num_classes']} classes, "
        f"architecture options: {options})")
    out(f"preprocessing: {pre['channel_order']}, shorter side {int(pre['resolution'] / pre['crop_fraction'])} then "
        f"centre crop {pre['resolution']}, (x * {pre['scale']:.6g} - mean {pre['mean']}) / std {pre['std']}")
    if not desc["data"]["class_names"]:
        out("labels: none (ImageNet class names do not ship with mobilecnn; pass --labels FILE, one name per line)")
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
    q.add_argument("file", metavar="FILE", help=".pth/.pth.tar/.pt/.bin (torch.load weights_only), .safetensors, "
                                                 ".h5 (Keras, read with h5py)")
    q.add_argument("--from", dest="source", required=True, choices=["torchvision", "timm", "keras", "megvii"],
                   help="the library or repository the file comes from")
    q.add_argument("--model", default=None, help="registered model name (default: inferred from the tensor shapes)")
    q.add_argument("--variant", default=None, help="timm only: the timm model name (e.g. mobilenetv2_100), checked")
    q.add_argument("--resolution", type=positive_int, default=None,
                   help="input side the weights were trained at (default: Keras file name's, else 224)")
    q.add_argument("--labels", default=None, help="text file with one class name per line")
    q.add_argument("--out", required=True, help="output .safetensors (a .mobilecnn.json sidecar is written beside)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_import)
