"""Training: the authors' recipes and a fast CPU recipe, resumable, and the same entry point under torchrun.

``train(TrainConfig(...), callback=...)`` runs a whole training; the CLI supplies the progress bar
through ``callback``. Under ``torchrun --nproc-per-node N`` the same call uses DistributedDataParallel
(gloo on CPU, nccl on GPU), each process takes ``batch_size / N`` of the global batch and rank 0
alone writes files.

Reproducibility: data order and augmentation are functions of (seed, epoch, step) (see
:mod:`mobilecnn.data`), the learning rate a function of the step, and checkpoints hold weights,
optimizer, EMA and RNG state, so ``resume=True`` from any checkpoint ends with the same weights as
an uninterrupted run (same seed, same thread count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import latest_checkpoint, load_training_state, save_training_checkpoint
from .registry import create_model, get_model_entry
from .utils import atomic_write_text

__all__ = [
    "TrainConfig",
    "Recipe",
    "RECIPES",
    "TrainError",
    "NonFiniteLossError",
    "RunLockedError",
    "train",
    "learning_rate",
    "param_groups",
    "recalibrate_batchnorm",
    "evaluate_model",
    "run_lock",
]


class TrainError(ValueError):
    """A training request that cannot run as given (bad option, directory holding another run...)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class RunLockedError(TrainError):
    """Another process is training into the same run directory."""


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
    # batch 96; label smoothing 0.1 and EMA 0.9999 as in TF-slim.
    "mobilenetv2": Recipe("rmsprop", 0.045, 96, "exponential", 4e-5, 0.1, ema=0.9999,
                          description="MobileNetV2 paper: RMSProp 0.9/0.9, lr 0.045@96 x0.98/epoch, wd 4e-5, LS 0.1, EMA 0.9999"),
    # Fast CPU recipe for small datasets, tuned on Fashion-MNIST (32 px, torchrun 2 x 1 thread) with
    # shufflenet_v1_g3_x0_5: one-cycle SGD (Nesterov) peaking at 0.3 for batch 64, label smoothing 0.1,
    # flip only. 1.25 epochs: 90.49 / 90.40 / 90.32% test top-1 for seeds 0 / 1 / 2 (90.25 / 89.69 / 90.08
    # after the first epoch). Batch 64 beat 128 at equal epochs (1.5 epochs: 90.5 vs 90.1) at the same
    # img/s; peak lr 0.3-0.5 @64 beat 0.1-0.2 (1.25 epochs: 90.5 vs 90.0-90.3). On 20k images x 1 epoch it
    # beat the previous 0.1@128 by 1.2-3.5 pt on mobilenet_v1_x0_25/x1_0, mobilenet_v2_x0_5 and
    # shufflenet_v1_g8_x1_0. Crop augmentation slows short schedules down (2 of 3 epochs at 0.1@128:
    # 85.8% with 4 px padding, 88.5% with 2 px).
    "fast": Recipe("sgd", 0.3, 64, "onecycle", 5e-5, 0.1, warmup_epochs=0.0, crop_padding=0, batch_size=64,
                   description="fast CPU recipe: SGD nesterov, one-cycle lr 0.3@64, batch 64, wd 5e-5, LS 0.1, flip only"),
}
SCHEDULES = ("linear", "cosine", "onecycle", "exponential", "constant")


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in ``config.json`` of the run directory."""

    model: str
    data: str = "fashion-mnist"
    data_dir: str | None = None
    out: str = "runs/run"
    recipe: str | None = None  # default: "fast" on Fashion-MNIST/CIFAR, "shufflenet"/"mobilenetv2" by family otherwise
    epochs: float = 5
    batch_size: int | None = None  # global batch, kept under torchrun; default: the recipe's
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup: float | None = None  # epochs
    label_smoothing: float | None = None
    ema: float | None = None  # EMA decay; 0 turns it off
    channels_last: bool = True
    amp: bool = False  # bf16 autocast (AMX on this CPU)
    seed: int = 0
    resume: bool = False
    subset: int | None = None
    val_subset: int | None = None
    resolution: int | None = None
    small_input: bool | None = None  # default: resolution <= 64
    checkpoint_every: int = 200  # steps
    workers: int = 2
    on_corrupt: str = "skip"
    threads: int | None = None
    bn_recalibration: bool | None = None
    bn_recalibration_batches: int = 50
    max_steps: int | None = None  # stop early (tests, smoke runs); the schedule still spans `epochs`
    eval_every: int = 1  # epochs
    crop_padding: int | None = None  # default: the recipe's
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def resolved_recipe(self) -> tuple[str, Recipe]:
        name = self.recipe
        if name is None:
            if self.data in ("fashion-mnist", "cifar10", "cifar100"):
                name = "fast"
            else:
                name = "shufflenet" if get_model_entry(self.model).family == "shufflenet_v1" else "mobilenetv2"
        if name not in RECIPES:
            raise TrainError(f"unknown recipe {name!r}; accepted: {', '.join(RECIPES)}")
        return name, RECIPES[name]

    def identity(self) -> dict[str, Any]:
        """The settings that define a run; resuming with different ones is refused."""
        keys = ("model", "data", "recipe", "batch_size", "lr", "weight_decay", "schedule", "warmup", "label_smoothing",
                "ema", "seed", "subset", "resolution", "small_input", "amp", "channels_last", "model_kwargs", "epochs",
                "crop_padding")
        return {k: getattr(self, k) for k in keys}


# --------------------------------------------------------------------------------------------------
# Pieces


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only: never on BN parameters or biases (ShuffleNet section 4)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear)) and name == "weight":
                decay.append(p)
            else:
                no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def learning_rate(step: int, total_steps: int, peak: float, schedule: str, warmup_steps: int, steps_per_epoch: int) -> float:
    """Learning rate at ``step`` (0-based): a pure function of the step, so resuming needs no scheduler state."""
    if schedule == "onecycle":
        # one-cycle: linear ramp from peak/25 over the first 25%, then cosine down to ~0
        up = max(1, int(0.25 * total_steps))
        if step < up:
            return peak * (0.04 + 0.96 * step / up)
        t = (step - up) / max(1, total_steps - up)
        return peak * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return peak * (1.0 - t)
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "exponential":
        return peak * 0.98 ** ((step - warmup_steps) / steps_per_epoch)
    if schedule == "constant":
        return peak
    raise TrainError(f"unknown schedule {schedule!r}; accepted: {', '.join(SCHEDULES)}")


def _make_optimizer(name: str, groups: list[dict[str, Any]], lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "rmsprop":
        # TF's RMSProp puts epsilon (1.0 in the paper's setup scaled by lr) inside the sqrt; 0.0316 ~ sqrt(1e-3)
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, momentum=momentum, eps=0.0316)
    raise TrainError(f"unknown optimizer {name!r}")


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], max_batches: int,
                          channels_last: bool = False) -> int:
    """Re-estimate BN running statistics with a cumulative average over ``max_batches`` training batches."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.train()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    seen = 0
    for x, _ in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model(x)
        seen += 1
        if seen >= max_batches:
            break
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)
    return seen


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: Any, channels_last: bool = False, amp: bool = False,
                   num_classes: int | None = None) -> dict[str, Any]:
    """Top-1, top-5, loss and the confusion matrix of ``model`` over every batch of ``loader`` (epoch 0).

    Under torch.distributed, counts are summed over ranks (each rank holds a shard).
    """
    model.eval()
    n_cls = num_classes or getattr(model, "num_classes", None)
    confusion = torch.zeros(n_cls, n_cls, dtype=torch.long)
    correct5 = torch.zeros((), dtype=torch.long)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for x, y in loader.batches(0):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        pred = logits.argmax(1)
        confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
        k = min(5, logits.shape[1])
        correct5 += (logits.topk(k, 1).indices == y[:, None]).any(1).sum()
    if dist.is_available() and dist.is_initialized():
        for t in (confusion, correct5):
            dist.all_reduce(t)
        dist.all_reduce(loss_sum)
    total = int(confusion.sum())
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1).double()).tolist()
    return {
        "samples": total,
        "top1": 100.0 * float(confusion.diag().sum()) / max(1, total),
        "top5": 100.0 * float(correct5) / max(1, total),
        "loss": float(loss_sum) / max(1, total),
        "per_class_accuracy": [100.0 * a for a in per_class],
        "confusion": confusion.tolist(),
    }


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on a run directory: a second ``train`` into it is refused, not interleaved."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{run_dir} is in use by another mobilecnn train (lock held on {run_dir / '.lock'}); "
                "wait for it to finish or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


# --------------------------------------------------------------------------------------------------
# The run


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def default_threads(processes_on_this_machine: int = 1) -> int:
    """Threads per process: the free cores shared among this machine's processes.

    Oversubscription is catastrophic on small machines (MEASURED.md: a 2-thread run on a box with one
    busy core took 180x longer), so cores already busy by the 1-minute load average are left alone.
    """
    cores = os.cpu_count() or 1
    busy = int(round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else 0
    free = max(1, cores - busy)
    return max(1, min(cores, free) // max(1, processes_on_this_machine))


def _check_config(cfg: TrainConfig) -> None:
    get_model_entry(cfg.model)  # unknown model -> UnknownModelError naming the closest
    cfg.resolved_recipe()
    if cfg.schedule is not None and cfg.schedule not in SCHEDULES:
        raise TrainError(f"unknown schedule {cfg.schedule!r}; accepted: {', '.join(SCHEDULES)}")
    checks = [
        ("epochs", cfg.epochs, cfg.epochs > 0 and math.isfinite(cfg.epochs), "> 0 and finite"),
        ("batch_size", cfg.batch_size, isinstance(cfg.batch_size, int) and cfg.batch_size >= 1, "an integer >= 1"),
        ("lr", cfg.lr, cfg.lr is None or (cfg.lr > 0 and math.isfinite(cfg.lr)), "> 0"),
        ("weight_decay", cfg.weight_decay, cfg.weight_decay is None or 0 <= cfg.weight_decay < math.inf, ">= 0 and finite"),
        ("label_smoothing", cfg.label_smoothing, cfg.label_smoothing is None or 0 <= cfg.label_smoothing < 1, "in [0, 1)"),
        ("ema", cfg.ema, cfg.ema is None or 0 <= cfg.ema < 1, "in [0, 1) (0 = off)"),
        ("warmup", cfg.warmup, cfg.warmup is None or 0 <= cfg.warmup < math.inf, ">= 0 epochs, finite"),
        ("max_steps", cfg.max_steps, cfg.max_steps is None or cfg.max_steps >= 1, ">= 1"),
        ("crop_padding", cfg.crop_padding, cfg.crop_padding is None or 0 <= cfg.crop_padding <= 256, "in [0, 256] pixels"),
        ("subset", cfg.subset, cfg.subset is None or cfg.subset >= 1, ">= 1"),
        ("seed", cfg.seed, -2**63 <= cfg.seed < 2**64, "an integer in [-2**63, 2**64) (torch.manual_seed's range)"),
        ("checkpoint_every", cfg.checkpoint_every, cfg.checkpoint_every >= 1, ">= 1 steps"),
        ("on_corrupt", cfg.on_corrupt, cfg.on_corrupt in ("skip", "error"), "'skip' or 'error'"),
    ]
    for name, value, ok, accepted in checks:
        if not ok:
            raise TrainError(f"--{name.replace('_', '-')} {value!r} is not accepted: it must be {accepted}")


def _prepare_run_dir(cfg: TrainConfig, run_dir: Path) -> Path | None:
    """Refuse a directory holding another run; return the checkpoint to resume from (or None)."""
    config_file = run_dir / "config.json"
    ckpt = latest_checkpoint(run_dir)
    if config_file.is_file():
        try:
            previous = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise TrainError(f"{config_file} is unreadable ({exc}); choose another --out") from None
        prev_id = previous.get("identity", {})
        mine = json.loads(json.dumps(cfg.identity()))
        diff = [k for k in sorted(set(prev_id) | set(mine)) if prev_id.get(k) != mine.get(k)]
        if diff:
            shown = ", ".join(f"{k}: {prev_id.get(k)!r} there vs {mine.get(k)!r} now" for k in diff[:4])
            raise TrainError(f"{run_dir} already holds a different run ({shown}); choose another --out")
        if not cfg.resume and ckpt is not None:
            raise TrainError(f"{run_dir} already holds this run (checkpoint {ckpt.name}); pass --resume to continue it "
                             "or choose another --out")
    elif cfg.resume:
        raise TrainError(f"nothing to resume in {run_dir}: it holds no config.json; start without --resume")
    elif run_dir.exists() and any(p.name != ".lock" and not (p.name.startswith(".") and p.name.endswith(".tmp"))
                                  for p in run_dir.iterdir()):  # atomic-write debris of a killed run is not a run
        raise TrainError(f"{run_dir} is not empty and holds no mobilecnn run; choose another --out")
    return ckpt if cfg.resume else None


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def train(cfg: TrainConfig, callback: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a training; returns the final metrics. Raises ``TrainError`` for bad requests.

    ``callback(event, info)`` receives ``"start"``, ``"step"`` (every step), ``"epoch"`` and ``"end"``
    events on rank 0 (the CLI draws its progress bar from them).
    """
    from .data import load_data

    recipe_name, recipe = cfg.resolved_recipe()
    if cfg.batch_size is None:
        cfg = dataclasses.replace(cfg, batch_size=recipe.batch_size)
    _check_config(cfg)
    ddp = _init_distributed()
    if cfg.batch_size % ddp.world_size:
        raise TrainError(f"--batch-size {cfg.batch_size} must be divisible by the {ddp.world_size} processes")
    threads = cfg.threads or default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", ddp.world_size)))
    torch.set_num_threads(threads)
    run_dir = Path(cfg.out)
    notify = callback if (callback and ddp.main) else (lambda event, info: None)

    lock = run_lock(run_dir) if ddp.main else contextlib.nullcontext()
    with lock:
        resume_from = _prepare_run_dir(cfg, run_dir) if ddp.main else None
        if ddp.world_size > 1:  # every rank resumes from what rank 0 found
            box = [str(resume_from) if resume_from else ""]
            dist.broadcast_object_list(box, src=0)
            resume_from = Path(box[0]) if box[0] else None

        train_loader, val_loader, info = load_data(
            cfg.data, data_dir=cfg.data_dir, resolution=cfg.resolution, batch_size=cfg.batch_size // ddp.world_size,
            seed=cfg.seed, subset=cfg.subset, val_subset=cfg.val_subset, rank=ddp.rank, world_size=ddp.world_size,
            workers=cfg.workers, on_corrupt=cfg.on_corrupt,
            crop_padding=cfg.crop_padding if cfg.crop_padding is not None else recipe.crop_padding,
        )
        small_input = cfg.small_input if cfg.small_input is not None else info.resolution <= 64
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=info.num_classes, in_chans=info.in_chans, small_input=small_input,
                             **cfg.model_kwargs)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)

        lr = cfg.lr if cfg.lr is not None else recipe.lr * cfg.batch_size / recipe.reference_batch
        wd = cfg.weight_decay if cfg.weight_decay is not None else recipe.weight_decay
        schedule = cfg.schedule or recipe.schedule
        smoothing = cfg.label_smoothing if cfg.label_smoothing is not None else recipe.label_smoothing
        ema_decay = cfg.ema if cfg.ema is not None else recipe.ema
        bn_recal = cfg.bn_recalibration if cfg.bn_recalibration is not None else recipe.bn_recalibration
        steps_per_epoch = len(train_loader)
        total_steps = max(1, int(round(cfg.epochs * steps_per_epoch)))
        warmup_steps = int((cfg.warmup if cfg.warmup is not None else recipe.warmup_epochs) * steps_per_epoch)
        optimizer = _make_optimizer(recipe.optimizer, param_groups(model, wd), lr, recipe.momentum)
        ema = None
        if ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)

        settings = {"recipe": recipe_name, "lr": lr, "weight_decay": wd, "schedule": schedule, "label_smoothing": smoothing,
                    "ema": ema_decay, "bn_recalibration": bn_recal, "steps_per_epoch": steps_per_epoch,
                    "total_steps": total_steps, "warmup_steps": warmup_steps, "world_size": ddp.world_size,
                    "threads_per_process": threads, "small_input": small_input}
        config_record = {
            "format": "mobilecnn-run/1",
            "model": cfg.model,
            "model_kwargs": {"num_classes": info.num_classes, "in_chans": info.in_chans, "small_input": small_input,
                             **cfg.model_kwargs},
            "data": info.to_dict(),
            "resolution": info.resolution,
            "identity": json.loads(json.dumps(cfg.identity())),
            "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
            "settings": settings,
        }
        if ddp.main:
            atomic_write_text(run_dir / "config.json", json.dumps(config_record, indent=2) + "\n")
        # makes every weight file self-describing (predict/export from a lone .safetensors)
        weights_metadata = {"data": json.dumps(info.to_dict()), "model_kwargs": json.dumps(cfg.model_kwargs)}

        step, start_epoch, start_in_epoch = 0, 0, 0
        if resume_from is not None:
            state = load_training_state(resume_from, model=model, optimizer=optimizer, ema=ema)
            step, start_epoch, start_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
            if start_in_epoch >= steps_per_epoch:
                start_epoch, start_in_epoch = start_epoch + 1, 0

        net: nn.Module = model
        if ddp.world_size > 1:
            net = nn.parallel.DistributedDataParallel(model)

        stop_at = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
        n_epochs = math.ceil(total_steps / steps_per_epoch)
        notify("start", {"total_steps": stop_at, "step": step, "steps_per_epoch": steps_per_epoch, "settings": settings,
                         "info": info, "resumed_from": str(resume_from) if resume_from else None})
        metrics_file = run_dir / "metrics.jsonl"
        last_metrics: dict[str, Any] = {}

        def checkpoint(epoch: int, in_epoch: int) -> None:
            if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
                kept = latest_checkpoint(run_dir)
                raise NonFiniteLossError(
                    f"weights became NaN/inf at step {step} (epoch {epoch}); stopped without saving them. The last good "
                    f"checkpoint is {kept if kept else 'none'}; lower --lr or disable --amp and resume with --resume"
                )
            if ddp.main:
                save_training_checkpoint(run_dir, model=model, optimizer=optimizer, epoch=epoch, step=step,
                                         step_in_epoch=in_epoch, ema=ema, metadata=weights_metadata)
            if ddp.world_size > 1:
                dist.barrier()

        epoch = start_epoch
        finished = step >= stop_at
        while not finished and epoch < n_epochs:
            net.train()
            t0 = time.perf_counter()
            seen = loss_sum = correct = 0.0
            in_epoch = start_in_epoch if epoch == start_epoch else 0
            for x, y in train_loader.batches(epoch, in_epoch):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, total_steps, lr, schedule, warmup_steps, steps_per_epoch)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.amp):
                    logits = net(x)
                loss = criterion(logits.float(), y)
                finite = torch.isfinite(loss.detach()).to(torch.int32)
                if ddp.world_size > 1:
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                if not bool(finite):
                    kept = latest_checkpoint(run_dir)
                    raise NonFiniteLossError(
                        f"loss became {loss.item()} at step {step} (epoch {epoch}); stopped. The last good checkpoint "
                        f"is {kept if kept else 'none (no checkpoint was written yet)'}; lower --lr or disable --amp "
                        "and resume with --resume"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                in_epoch += 1
                batch = y.shape[0]
                seen += batch
                loss_sum += float(loss.detach()) * batch
                correct += float((logits.detach().argmax(1) == y).sum())
                elapsed = time.perf_counter() - t0
                notify("step", {"step": step, "epoch": epoch, "loss": float(loss.detach()), "accuracy": 100 * correct / seen,
                                "img_per_s": seen * ddp.world_size / max(elapsed, 1e-9),
                                "lr": optimizer.param_groups[0]["lr"]})
                if step % cfg.checkpoint_every == 0 and in_epoch < steps_per_epoch:
                    checkpoint(epoch, in_epoch)
                if step >= stop_at:
                    finished = True
                    break
            train_time = time.perf_counter() - t0
            epoch_done = in_epoch >= steps_per_epoch
            last_epoch = finished or epoch + 1 >= n_epochs
            if last_epoch and bn_recal:
                recalibrate_batchnorm(model, train_loader.batches(epoch + 1000), cfg.bn_recalibration_batches,
                                      cfg.channels_last)
            record: dict[str, Any] = {"epoch": epoch + (in_epoch / steps_per_epoch if not epoch_done else 1), "step": step,
                                      "train_loss": loss_sum / max(seen, 1), "train_accuracy": 100 * correct / max(seen, 1),
                                      "train_img_per_s": seen * ddp.world_size / max(train_time, 1e-9),
                                      "train_time_s": train_time, "lr": optimizer.param_groups[0]["lr"]}
            if last_epoch or (epoch + 1) % cfg.eval_every == 0:
                ev = evaluate_model(ema.module if ema is not None else model, val_loader, cfg.channels_last, cfg.amp,
                                    info.num_classes)
                record.update({"val_top1": ev["top1"], "val_top5": ev["top5"], "val_loss": ev["loss"],
                               "weights": "ema" if ema is not None else "model"})
            if ddp.main:  # metrics before the checkpoint: a crash in between repeats a line, never loses one
                _append_jsonl(metrics_file, record)
                from .plots import plot_training_curves

                with contextlib.suppress(Exception):  # a plot must never fail a training
                    plot_training_curves(metrics_file, run_dir / "curves.png")
            checkpoint(epoch, in_epoch)
            last_metrics = record
            notify("epoch", record)
            epoch += 1
        if ddp.main and not last_metrics and metrics_file.is_file():
            lines = metrics_file.read_text().strip().splitlines()
            last_metrics = json.loads(lines[-1]) if lines else {}
        notify("end", {"run_dir": str(run_dir), **last_metrics})
        return {"run_dir": str(run_dir), **last_metrics}
