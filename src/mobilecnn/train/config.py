"""What a training run is: the recipes, :class:`TrainConfig` (every option, with its CLI help as field
metadata, so the parser is generated from it) and :func:`resolve`, the one place where defaults are
filled in from the recipe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..data import DATASETS, FASHION_MNIST
from ..data.images import MAX_RESOLUTION
from ..data.names import SCENES
from ..errors import TrainError
from ..fields import cli, positive_int
from ..files import sha256_of
from ..models import get_model_entry
from ..validators import check_choice, check_int, check_number, check_positive_int, check_threads, refuse

__all__ = ["Recipe", "RECIPES", "SCHEDULES", "TRAINED_TASKS", "TrainConfig", "TrainSettings", "resolve",
           "resume_value"]


def resume_value(text: str) -> bool | str:
    """``--resume`` takes no value (True) or ``auto``."""
    if str(text).strip().lower() == "auto":
        return "auto"
    import argparse  # only the CLI calls this

    raise argparse.ArgumentTypeError(f"expected nothing or 'auto', got {text!r}")


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
    task: str = "classification"  # the models it trains (registry task)
    crop_size: int | None = None  # segmentation: the training crop (None: the dataset's image side); detection: input
    # detection: SSD's zoom-out and IoU-crop augmentations (off for short CPU runs: docs/detection.md measured
    # that a detector trained from scratch for minutes with the IoU crop does not learn yet)
    zoom_out: bool = True
    iou_crop: bool = True


RECIPES: dict[str, Recipe] = {
    # ShuffleNet section 4: SGD 0.9, linear decay from 0.5 at batch 1024, wd 4e-5 on weights only,
    # label smoothing 0.1 (authors' code), then one pass re-estimating BN statistics.
    "shufflenet": Recipe("sgd", 0.5, 1024, "linear", 4e-5, 0.1, bn_recalibration=True,
                         description="ShuffleNet paper: SGD 0.9, lr 0.5@1024 linear decay, wd 4e-5, LS 0.1, "
                                     "BN recalibration"),
    # MobileNetV2 section 6.1: RMSProp (decay 0.9, momentum 0.9), wd 4e-5, lr 0.045 x0.98 per epoch at
    # batch 96; label smoothing 0.1 and EMA 0.9999 as in TF-slim (the EMA decay warms up, see optim.py).
    "mobilenetv2": Recipe("rmsprop", 0.045, 96, "exponential", 4e-5, 0.1, ema=0.9999,
                          description="MobileNetV2 paper: RMSProp 0.9/0.9, lr 0.045@96 x0.98/epoch, wd 4e-5, "
                                      "LS 0.1, EMA 0.9999"),
    # Fast CPU recipe for small datasets (one-cycle SGD, flip only); how it was tuned is in
    # docs/training.md.
    "fast": Recipe("sgd", 0.3, 64, "onecycle", 5e-5, 0.1, warmup_epochs=0.0, crop_padding=0, batch_size=64,
                   description="fast CPU recipe: SGD nesterov, one-cycle lr 0.3@64, batch 64, wd 5e-5, LS 0.1, "
                               "flip only"),
    # DeepLabv3 (Chen et al. 2017, section 4) as DeepLab's train.py runs it for MobileNet backbones: momentum
    # 0.9, "poly" decay (power 0.9) from 0.007 at batch 16, wd 4e-5, 513 crops, random scale 0.5-2.0 + flip.
    "deeplab": Recipe("momentum", 0.007, 16, "poly", 4e-5, 0.0, batch_size=16, crop_padding=0, crop_size=513,
                      task="segmentation",
                      description="DeepLabv3: SGD momentum 0.9, poly(0.9) lr 0.007@16, wd 4e-5, crop 513, "
                                  "scale 0.5-2.0, flip"),
    # Fast CPU recipe for segmenters on small scenes (docs/segmentation.md says how it was chosen).
    "fast_segmentation": Recipe("adamw", 6e-3, 8, "poly", 1e-4, 0.0, warmup_epochs=0.1, batch_size=8,
                                crop_padding=0, task="segmentation",
                                description="fast CPU segmentation recipe: AdamW, poly(0.9) lr 6e-3@8 with a "
                                            "0.1-epoch warm-up, wd 1e-4, crop = image side, scale 0.5-2.0, flip"),
    # MobileNetV2 section 6.2 as TF's ssdlite_mobilenet_v2_coco.config trains it: RMSProp (decay 0.9, momentum
    # 0.9) lr 0.004 at batch 24, L2 4e-5, 320 px (the paper's; the config says 300). The config decays the lr
    # by 0.95 every 800,720 steps, i.e. constant over any run here. SSD's augmentation (crop, zoom-out, flip).
    "ssdlite": Recipe("rmsprop", 0.004, 24, "constant", 4e-5, 0.0, batch_size=24, crop_padding=0, crop_size=320,
                      task="detection",
                      description="SSDLite (TF config): RMSProp 0.9/0.9, lr 0.004@24 constant, wd 4e-5, 320 px, "
                                  "IoU crop, zoom-out, flip, photometric distortion"),
    # Fast CPU recipe for detectors on the small scenes (docs/detection.md says how it was chosen).
    "fast_detection": Recipe("adamw", 3e-3, 16, "cosine", 1e-4, 0.0, warmup_epochs=0.2, batch_size=16,
                             crop_padding=0, crop_size=128, task="detection", zoom_out=False, iou_crop=False,
                             description="fast CPU detection recipe: AdamW, cosine lr 3e-3@16 with a 0.2-epoch "
                                         "warm-up, wd 1e-4, 128 px (the scenes' side), flip, photometric distortion"),
}
SCHEDULES = ("linear", "cosine", "onecycle", "exponential", "constant", "poly")
#: The tasks `train` covers (every registry task).
TRAINED_TASKS = ("classification", "segmentation", "detection")
MAX_EPOCHS = 100_000


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in ``config.json`` of the run directory."""

    model: str = field(metadata=cli("registered model name (see `mobilecnn list`)", required=True))
    data: str = field(default=FASHION_MNIST, metadata=cli(
        f"{', '.join(DATASETS)}, or a folder with train/ and val/; segmenters: a Pascal VOC folder, a folder of "
        f"train|val/{{images,masks}}, or {SCENES} (the default: Fashion-MNIST scenes, generated once into a cache)"))
    data_dir: str | None = field(default=None, metadata=cli(
        "where Fashion-MNIST/CIFAR live (default: $MOBILECNN_DATA_DIR or /usr/share/datasets/fashion-mnist)"))
    out: str | None = field(default=None, metadata=cli("run directory (default runs/MODEL)"))
    recipe: str | None = field(default=None, metadata=cli(
        "classifiers: fast (default on small datasets), shufflenet, mobilenetv2; segmenters: fast_segmentation "
        "(default), deeplab; detectors: fast_detection (default), ssdlite", choices=list(RECIPES)))
    epochs: float = field(default=5, metadata=cli("epochs (fractions allowed)"))
    batch_size: int | None = field(default=None, metadata=cli(
        "global batch, kept under torchrun (default: the recipe's: fast 64, shufflenet/mobilenetv2 256)",
        type=positive_int))
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
    subset: int | None = field(default=None, metadata=cli("train on N images (a seeded random subset)",
                                                          type=positive_int))
    val_subset: int | None = field(default=None, metadata=cli("evaluate on N validation images",
                                                              type=positive_int))
    resolution: int | None = field(default=None, metadata=cli(
        "image side (default 32 for small datasets, 224 for folders); segmenters: the training crop (default: the "
        "recipe's, else the largest image side); detectors: the square input side (default: the recipe's)",
        type=positive_int))
    output_stride: int | None = field(default=None, metadata=cli(
        "segmenters: output stride 16 (default) or 8", type=positive_int))
    aspp: bool | None = field(default=None, metadata=cli(
        "segmenters: DeepLabv3's atrous branches (default off: the paper's MNV2* head)"))
    small_input: bool | None = field(default=None, metadata=cli("small-image stem (default: on for resolution <= 64)"))
    checkpoint_every: int = field(default=200, metadata=cli("steps between checkpoints", type=positive_int))
    workers: int = field(default=2, metadata=cli("DataLoader workers for image folders"))
    on_corrupt: str = field(default="skip", metadata=cli("corrupt images in a folder", choices=["skip", "error"]))
    threads: int | None = field(default=None, metadata=cli("torch threads per process (default: the free cores)",
                                                           type=positive_int))
    bn_recalibration: bool | None = None
    bn_recalibration_batches: int = 50
    max_steps: int | None = field(default=None, metadata=cli("stop after N steps (smoke runs)", type=positive_int))
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
        for key, default in (("init", None), ("freeze_backbone", False), ("backbone_lr_scale", 1.0),
                             ("freeze_bn", False), ("output_stride", None), ("aspp", None)):
            if getattr(self, key) != default:
                identity[key] = getattr(self, key)
        if self.init is not None:  # the file's content, not its name: resuming with other weights is refused
            identity["init_sha256"] = sha256_of(self.init)
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


def _recipe_name(cfg: TrainConfig, task: str) -> str:
    if cfg.recipe is not None:
        return cfg.recipe
    if task == "segmentation":
        return "fast_segmentation"
    if task == "detection":
        return "fast_detection"
    if cfg.data in DATASETS:
        return "fast"
    return "shufflenet" if get_model_entry(cfg.model).family == "shufflenet_v1" else "mobilenetv2"


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def resolve(cfg: TrainConfig) -> TrainSettings:
    """Check ``cfg`` and fill in its defaults from the recipe; raises :class:`TrainError` naming the option."""
    task = get_model_entry(cfg.model).task  # unknown model -> UnknownModelError naming the closest
    if task not in TRAINED_TASKS:
        raise TrainError(f"--model {cfg.model}: training covers {' and '.join(TRAINED_TASKS)} models; {cfg.model} "
                         f"is a {task} model")
    name = _recipe_name(cfg, task)
    if name not in RECIPES:
        raise TrainError(f"unknown recipe {name!r}; accepted: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    if recipe.task != task:
        accepted = [k for k, r in RECIPES.items() if r.task == task]
        raise TrainError(f"--recipe {name} trains {recipe.task} models and {cfg.model} is a {task} model; "
                         f"accepted: {', '.join(accepted)}")
    if task != "segmentation" and (cfg.output_stride is not None or cfg.aspp is not None):
        raise TrainError(f"--output-stride and --aspp apply to segmentation models; {cfg.model} is a {task} model")
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


def _check(cfg: TrainConfig, s: TrainSettings) -> None:
    """Refuse any option out of range (:class:`TrainError` naming the option, the value and what is accepted)."""
    e = TrainError
    check_number(cfg.epochs, "--epochs", above=0, maximum=MAX_EPOCHS, error=e)
    check_positive_int(s.batch_size, "--batch-size", maximum=1 << 20, error=e)
    check_number(s.lr, "--lr", above=0, error=e)
    check_number(s.weight_decay, "--weight-decay", minimum=0, error=e)
    check_choice(s.schedule, "--schedule", SCHEDULES, error=e)
    check_number(s.label_smoothing, "--label-smoothing", minimum=0, below=1, error=e)
    check_number(s.ema, "--ema", minimum=0, below=1, accepted="a number in [0, 1) (0 = off)", error=e)
    check_number(s.warmup_epochs, "--warmup", minimum=0, maximum=MAX_EPOCHS, error=e)
    if cfg.max_steps is not None:
        check_positive_int(cfg.max_steps, "--max-steps", error=e)
    check_int(s.crop_padding, "--crop-padding", minimum=0, maximum=256, error=e)
    for option, value in (("--subset", cfg.subset), ("--val-subset", cfg.val_subset)):
        if value is not None:
            check_positive_int(value, option, error=e)
    if cfg.resolution is not None:
        check_positive_int(cfg.resolution, "--resolution", maximum=MAX_RESOLUTION, error=e)
    if cfg.output_stride is not None:
        check_choice(cfg.output_stride, "--output-stride", (16, 8), error=e)
    check_int(cfg.seed, "--seed", minimum=-2**63, maximum=2**64 - 1, error=e,
              accepted="an integer in [-2**63, 2**64) (torch.manual_seed's range)")
    check_positive_int(cfg.checkpoint_every, "--checkpoint-every", error=e)
    check_int(cfg.workers, "--workers", minimum=0, maximum=256, error=e)
    check_choice(cfg.on_corrupt, "--on-corrupt", ("skip", "error"), error=e)
    if not (isinstance(cfg.resume, bool) or cfg.resume == "auto"):
        raise refuse("--resume", cfg.resume, "true, false or 'auto'", e)
    if not (isinstance(cfg.device, str) and cfg.device.strip()):
        raise refuse("--device", cfg.device, "auto, cpu, cuda, cuda:N or mps", e)
    if cfg.threads is not None:
        check_threads(cfg.threads, "--threads", error=e)
    check_number(cfg.backbone_lr_scale, "--backbone-lr-scale", above=0, maximum=1e3, error=e,
                 accepted="a number > 0 (use --freeze-backbone for 0)")
    if cfg.init is not None and not (isinstance(cfg.init, str) and os.path.isfile(cfg.init)):
        raise refuse("--init", cfg.init, "an existing weights file", e)
    if not isinstance(cfg.model_kwargs, dict):
        raise TrainError(f"model_kwargs must be a dict, got {type(cfg.model_kwargs).__name__}")
