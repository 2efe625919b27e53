"""What a training run is: the recipes, :class:`TrainConfig` (every option, with its CLI help as field
metadata, so the parser is generated from it) and :func:`resolve`, the one place where defaults are
filled in from the recipe.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..data.images import MAX_RESOLUTION
from ..errors import TrainError
from ..models import get_model_entry

__all__ = ["Recipe", "RECIPES", "SCHEDULES", "TrainConfig", "TrainSettings", "resolve", "cli", "resume_value"]

def resume_value(text: str) -> bool | str:
    """``--resume`` takes no value (True) or ``auto``."""
    if str(text).strip().lower() == "auto":
        return "auto"
    import argparse  # only the CLI calls this

    raise argparse.ArgumentTypeError(f"expected nothing or 'auto', got {text!r}")


def cli(help: str, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata that puts a config field on the command line (see :mod:`mobilecnn.cli.options`)."""
    return {"cli": {"help": help, **argparse_kwargs}}


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule of a named recipe; ``lr`` is for ``reference_batch`` and scales linearly.

    ``batch_size`` is the global batch used when ``--batch-size`` is not given.
    """

    optimizer: str
    lr: float
    reference_batch: int
    schedule: str
    weight_decay: float
    label_smoothing: float
    warmup_epochs: float = 0.0
    ema: float = 0.0
    bn_recalibration: bool = False
    momentum: float = 0.9
    crop_padding: int = 4  # in-memory datasets: random crop of the image zero-padded by this many pixels
    batch_size: int = 256
    description: str = ""


RECIPES: dict[str, Recipe] = {
    # ShuffleNet section 4: SGD 0.9, linear decay from 0.5 at batch 1024, wd 4e-5 on weights only,
    # label smoothing 0.1 (authors' code), then one pass re-estimating BN statistics.
    "shufflenet": Recipe("sgd", 0.5, 1024, "linear", 4e-5, 0.1, bn_recalibration=True,
                         description="ShuffleNet paper: SGD 0.9, lr 0.5@1024 linear decay, wd 4e-5, LS 0.1, BN recalibration"),
    # MobileNetV2 section 6.1: RMSProp (decay 0.9, momentum 0.9), wd 4e-5, lr 0.045 x0.98 per epoch at
    # batch 96; label smoothing 0.1 and EMA 0.9999 as in TF-slim (the EMA decay warms up, see optim.py).
    "mobilenetv2": Recipe("rmsprop", 0.045, 96, "exponential", 4e-5, 0.1, ema=0.9999,
                          description="MobileNetV2 paper: RMSProp 0.9/0.9, lr 0.045@96 x0.98/epoch, wd 4e-5, LS 0.1, EMA 0.9999"),
    # Fast CPU recipe for small datasets (one-cycle SGD, flip only); how it was tuned is in
    # docs/training.md.
    "fast": Recipe("sgd", 0.3, 64, "onecycle", 5e-5, 0.1, warmup_epochs=0.0, crop_padding=0, batch_size=64,
                   description="fast CPU recipe: SGD nesterov, one-cycle lr 0.3@64, batch 64, wd 5e-5, LS 0.1, flip only"),
}
SCHEDULES = ("linear", "cosine", "onecycle", "exponential", "constant")
SMALL_DATASETS = ("fashion-mnist", "cifar10", "cifar100")
MAX_EPOCHS = 100_000


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in ``config.json`` of the run directory."""

    model: str = field(metadata=cli("registered model name (see `mobilecnn list`)", required=True))
    data: str = field(default="fashion-mnist",
                      metadata=cli("fashion-mnist, cifar10, cifar100, or a folder with train/ and val/"))
    data_dir: str | None = field(default=None, metadata=cli(
        "where Fashion-MNIST/CIFAR live (default: $MOBILECNN_DATA_DIR or /usr/share/datasets/fashion-mnist)"))
    out: str | None = field(default=None, metadata=cli("run directory (default runs/MODEL)"))
    recipe: str | None = field(default=None, metadata=cli(
        "fast (default on small datasets), shufflenet, mobilenetv2", choices=list(RECIPES)))
    epochs: float = field(default=5, metadata=cli("epochs (fractions allowed)"))
    batch_size: int | None = field(default=None, metadata=cli(
        "global batch, kept under torchrun (default: the recipe's: fast 64, shufflenet/mobilenetv2 256)"))
    lr: float | None = field(default=None, metadata=cli("peak learning rate (default: the recipe's, scaled by batch)"))
    weight_decay: float | None = field(default=None, metadata=cli("weight decay on conv/linear weights"))
    schedule: str | None = field(default=None, metadata=cli("learning-rate schedule", choices=list(SCHEDULES)))
    warmup: float | None = field(default=None, metadata=cli("warm-up epochs"))
    label_smoothing: float | None = field(default=None, metadata=cli("label smoothing"))
    ema: float | None = field(default=None, metadata=cli("EMA decay (0 = off)"))
    channels_last: bool = field(default=True, metadata=cli("channels_last memory format"))
    amp: bool = field(default=False, metadata=cli(
        "mixed precision: bf16 autocast (CPU, GPUs with bf16), else fp16 autocast with a gradient scaler"))
    seed: int = field(default=0, metadata=cli("random seed"))
    resume: bool | str = field(default=False, metadata=cli(
        "continue from the last complete checkpoint in --out; `--resume auto`: resume if one exists, else start "
        "(for torchrun --max-restarts)", nargs="?", const=True, type=resume_value, metavar="auto"))
    subset: int | None = field(default=None, metadata=cli("train on N images (a seeded random subset)"))
    val_subset: int | None = field(default=None, metadata=cli("evaluate on N validation images"))
    resolution: int | None = field(default=None, metadata=cli(
        "image side (default 32 for small datasets, 224 for folders)"))
    small_input: bool | None = field(default=None, metadata=cli("small-image stem (default: on for resolution <= 64)"))
    checkpoint_every: int = field(default=200, metadata=cli("steps between checkpoints"))
    workers: int = field(default=2, metadata=cli("DataLoader workers for image folders"))
    on_corrupt: str = field(default="skip", metadata=cli("corrupt images in a folder", choices=["skip", "error"]))
    threads: int | None = field(default=None, metadata=cli("torch threads per process (default: the free cores)"))
    bn_recalibration: bool | None = None
    bn_recalibration_batches: int = 50
    max_steps: int | None = field(default=None, metadata=cli("stop after N steps (smoke runs)"))
    eval_every: int = 1  # epochs
    crop_padding: int | None = field(default=None, metadata=cli("random-crop padding in pixels (small datasets)"))
    device: str = field(default="auto", metadata=cli(
        "auto (the available accelerator, else the CPU), cpu, cuda, cuda:N or mps; under torchrun each process "
        "takes the GPU of its LOCAL_RANK. Not part of the run's identity: a run resumes on another device"))
    compile: bool = field(default=False, metadata=cli(
        "torch.compile the model (compile time is reported apart from training time)"))
    deterministic: bool = field(default=True, metadata=cli(
        "CUDA: deterministic algorithms where PyTorch has them, cudnn.benchmark off (--no-deterministic is "
        "faster; see docs/devices.md)"))
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # fine-tuning (docs/pretrained.md)
    init: str | None = field(default=None, metadata=cli(
        "start from these weights (a .safetensors from `mobilecnn weights import` or `train`); a new classifier "
        "when the class count differs; training then uses the weights' own preprocessing"))
    freeze_backbone: bool = field(default=False, metadata=cli(
        "train the classifier only (backbone parameters and BN statistics frozen)"))
    backbone_lr_scale: float = field(default=1.0, metadata=cli(
        "learning rate of everything but the classifier, as a fraction of --lr"))
    freeze_bn: bool = field(default=False, metadata=cli(
        "keep BN running statistics fixed (BN layers in eval mode while training; no BN recalibration)"))

    def identity(self) -> dict[str, Any]:
        """The settings that define a run; resuming with different ones is refused."""
        keys = ("model", "data", "recipe", "batch_size", "lr", "weight_decay", "schedule", "warmup", "label_smoothing",
                "ema", "seed", "subset", "resolution", "small_input", "amp", "channels_last", "model_kwargs", "epochs",
                "crop_padding")
        identity = {k: getattr(self, k) for k in keys}
        # fine-tuning settings only when used, so the identity of every other run is unchanged
        for key, default in (("init", None), ("freeze_backbone", False), ("backbone_lr_scale", 1.0), ("freeze_bn", False)):
            if getattr(self, key) != default:
                identity[key] = getattr(self, key)
        if self.init is not None:
            from .finetune import init_fingerprint

            identity["init_sha256"] = init_fingerprint(self.init)
        return identity


@dataclass(frozen=True)
class TrainSettings:
    """A :class:`TrainConfig` with every default filled in from its recipe (what :func:`resolve` returns)."""

    recipe_name: str
    recipe: Recipe
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str
    warmup_epochs: float
    label_smoothing: float
    ema: float
    bn_recalibration: bool
    crop_padding: int
    out: str


def _recipe_name(cfg: TrainConfig) -> str:
    if cfg.recipe is not None:
        return cfg.recipe
    if cfg.data in SMALL_DATASETS:
        return "fast"
    return "shufflenet" if get_model_entry(cfg.model).family == "shufflenet_v1" else "mobilenetv2"


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def resolve(cfg: TrainConfig) -> TrainSettings:
    """Check ``cfg`` and fill in its defaults from the recipe; raises :class:`TrainError` naming the option."""
    get_model_entry(cfg.model)  # unknown model -> UnknownModelError naming the closest
    name = _recipe_name(cfg)
    if name not in RECIPES:
        raise TrainError(f"unknown recipe {name!r}; accepted: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    batch_size = _pick(cfg.batch_size, recipe.batch_size)
    lr = _pick(cfg.lr, None)
    settings = TrainSettings(
        recipe_name=name,
        recipe=recipe,
        batch_size=batch_size,
        lr=lr if lr is not None else recipe.lr * batch_size / recipe.reference_batch,
        weight_decay=_pick(cfg.weight_decay, recipe.weight_decay),
        schedule=_pick(cfg.schedule, recipe.schedule),
        warmup_epochs=_pick(cfg.warmup, recipe.warmup_epochs),
        label_smoothing=_pick(cfg.label_smoothing, recipe.label_smoothing),
        ema=_pick(cfg.ema, recipe.ema),
        bn_recalibration=_pick(cfg.bn_recalibration,
                               recipe.bn_recalibration and not (cfg.freeze_bn or cfg.freeze_backbone)),
        crop_padding=_pick(cfg.crop_padding, recipe.crop_padding),
        out=_pick(cfg.out, f"runs/{cfg.model}"),
    )
    _check(cfg, settings)
    return settings


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(cfg: TrainConfig, s: TrainSettings) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    checks = [
        ("epochs", cfg.epochs, _is_number(cfg.epochs) and 0 < cfg.epochs <= MAX_EPOCHS, f"a number in (0, {MAX_EPOCHS}]"),
        ("batch_size", s.batch_size, _is_int(s.batch_size) and 1 <= s.batch_size <= 1 << 20, "an integer >= 1"),
        ("lr", s.lr, _is_number(s.lr) and s.lr > 0, "a finite number > 0"),
        ("weight_decay", s.weight_decay, _is_number(s.weight_decay) and s.weight_decay >= 0, "a finite number >= 0"),
        ("schedule", s.schedule, s.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
        ("label_smoothing", s.label_smoothing, _is_number(s.label_smoothing) and 0 <= s.label_smoothing < 1, "in [0, 1)"),
        ("ema", s.ema, _is_number(s.ema) and 0 <= s.ema < 1, "in [0, 1) (0 = off)"),
        ("warmup", s.warmup_epochs, _is_number(s.warmup_epochs) and 0 <= s.warmup_epochs <= MAX_EPOCHS,
         f"a number of epochs in [0, {MAX_EPOCHS}]"),
        ("max_steps", cfg.max_steps, cfg.max_steps is None or (_is_int(cfg.max_steps) and cfg.max_steps >= 1), ">= 1"),
        ("crop_padding", s.crop_padding, _is_int(s.crop_padding) and 0 <= s.crop_padding <= 256, "in [0, 256] pixels"),
        ("subset", cfg.subset, cfg.subset is None or (_is_int(cfg.subset) and cfg.subset >= 1), ">= 1"),
        ("val_subset", cfg.val_subset, cfg.val_subset is None or (_is_int(cfg.val_subset) and cfg.val_subset >= 1), ">= 1"),
        ("resolution", cfg.resolution, cfg.resolution is None or (_is_int(cfg.resolution) and 1 <= cfg.resolution <= MAX_RESOLUTION),
         f"an integer in [1, {MAX_RESOLUTION}]"),
        ("seed", cfg.seed, _is_int(cfg.seed) and -2**63 <= cfg.seed < 2**64,
         "an integer in [-2**63, 2**64) (torch.manual_seed's range)"),
        ("checkpoint_every", cfg.checkpoint_every, _is_int(cfg.checkpoint_every) and cfg.checkpoint_every >= 1, ">= 1 steps"),
        ("workers", cfg.workers, _is_int(cfg.workers) and 0 <= cfg.workers <= 256, "an integer in [0, 256]"),
        ("on_corrupt", cfg.on_corrupt, cfg.on_corrupt in ("skip", "error"), "'skip' or 'error'"),
        ("resume", cfg.resume, isinstance(cfg.resume, bool) or cfg.resume == "auto", "true, false or 'auto'"),
        ("device", cfg.device, isinstance(cfg.device, str) and bool(cfg.device.strip()),
         "auto, cpu, cuda, cuda:N or mps"),
        ("threads", cfg.threads, cfg.threads is None or (_is_int(cfg.threads) and 1 <= cfg.threads <= cpus),
         f"an integer from 1 to the {cpus} CPU(s) available"),
        ("backbone_lr_scale", cfg.backbone_lr_scale, _is_number(cfg.backbone_lr_scale) and 0 < cfg.backbone_lr_scale <= 1e3,
         "a number > 0 (use --freeze-backbone for 0)"),
        ("init", cfg.init, cfg.init is None or (isinstance(cfg.init, str) and os.path.isfile(cfg.init)),
         "an existing weights file"),
    ]
    for name, value, ok, accepted in checks:
        if not ok:
            raise TrainError(f"--{name.replace('_', '-')} {value!r} is not accepted: it must be {accepted}")
    if not isinstance(cfg.model_kwargs, dict):
        raise TrainError(f"model_kwargs must be a dict, got {type(cfg.model_kwargs).__name__}")
