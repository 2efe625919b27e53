"""``mobilecnn data scenes``: write the Fashion-MNIST scenes dataset (VOC or COCO layout) to a folder."""

from __future__ import annotations

import argparse
import json

from ..data.scenes import ScenesConfig, generate_scenes
from .commands import help_of
from .console import err, out, safe
from .options import add_config_arguments, add_json_option, config_from_args

__all__ = ["add_parsers"]


def _cmd_scenes(args: argparse.Namespace) -> int:
    config: ScenesConfig = config_from_args(ScenesConfig, args)
    with err.status(f"composing {config.train_count} + {config.val_count} {config.task} scenes"):
        summary = generate_scenes(config)
    if args.json:
        out(json.dumps(summary, indent=2, default=str))
        return 0
    layout = "Pascal VOC" if config.task == "segmentation" else "COCO"
    counts = ", ".join(f"{split} {summary[split]['scenes']} scenes ({summary[split]['items']} items)"
                       for split in ("train", "val"))
    out(f"wrote {safe(summary['out'])} ({layout} layout): {counts}; {summary['num_classes']} classes "
        "(background + the 10 Fashion-MNIST classes)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help=help_of("data"))
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = dsub.add_parser("scenes", help="compose real Fashion-MNIST items onto real textures (docs/scenes.md)")
    add_config_arguments(q, ScenesConfig)
    add_json_option(q, "the summary")
    q.set_defaults(func=_cmd_scenes)
