"""The commands of the ``mobilecnn`` command line and their one-line help: read by each command's parser and by
the top-level ``mobilecnn --help``, which is answered from here without loading torch."""

from __future__ import annotations

import argparse

__all__ = ["PROG", "DESCRIPTION", "COMMANDS", "GROUPS", "help_of", "group_of", "top_level_parser"]

PROG = "mobilecnn"
DESCRIPTION = "ShuffleNet v1, MobileNetV2 and MobileNet V1: exact models, complexity, training, export."

#: command -> one-line help, in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "list": "list registered models (optionally matching a wildcard PATTERN)",
    "profile": "MACs, params, peak activation memory and per-layer table of a model",
    "tables": "regenerate the papers' complexity tables beside the published figures",
    "train": "train a model (Fashion-MNIST by default); works under torchrun",
    "eval": "top-1/top-5/per-class accuracy and confusion matrix of a trained run",
    "reproduce": "test the papers' claims (ShuffleNet Tables 3 and 5; MobileNetV2 Figure 6, Tables 4-7, cost) and "
                 "write a report",
    "export": "fold BN, export, and verify against PyTorch on real images",
    "bench": "latency/throughput on each backend, torchvision reference rows included",
    "predict": "top-k labels of image files (a directory: every image in it); segmentation models: masks, "
               "overlays and class shares; detection models: boxes drawn and COCO results",
    "data": "datasets: the Fashion-MNIST scenes of the dense tasks",
    "weights": "import or download published weights (torchvision, timm, Keras, megvii ShuffleNet)",
}

#: The module of :mod:`mobilecnn.cli` that defines each command's parser: a command loads only its own module (and
#: what that imports), so ``mobilecnn list`` does not pay for the runtimes ``export`` needs.
GROUPS: dict[str, tuple[str, ...]] = {
    "models": ("list", "profile", "tables"),
    "training": ("train", "eval", "reproduce"),
    "deploy": ("export", "bench", "predict"),
    "data": ("data",),
    "weights": ("weights",),
}


def group_of(command: str) -> str | None:
    """The :data:`GROUPS` module defining ``command``, or None for a word that is not a command."""
    return next((group for group, names in GROUPS.items() if command in names), None)


def help_of(command: str) -> str:
    return COMMANDS[command]


def top_level_parser(version: str) -> argparse.ArgumentParser:
    """The parser of ``mobilecnn`` without a command's own options (``--help``, ``--version``)."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"{PROG} {version}")
    return parser
