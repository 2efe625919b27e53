"""The training loop: :func:`train_one_epoch`, :func:`evaluate` and :func:`fit` (alias :func:`train`).

``fit(TrainConfig(...), callback=...)`` runs (or resumes) a whole training; the CLI draws its progress
bar from ``callback``. Under ``torchrun --nproc-per-node N`` the same call uses DistributedDataParallel,
each process takes ``batch_size / N`` of the global batch and rank 0 alone writes files.

Reproducibility: data order and augmentation are functions of (seed, epoch, step) (:mod:`mobilecnn.data`),
the learning rate a function of the step, and checkpoints hold weights, optimizer, EMA, RNG state and the
running sums of the epoch's metrics, so ``resume=True`` from any checkpoint ends with the same weights and
the same logged losses as an uninterrupted run (same seed, same thread count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from .. import errors
from ..data import Batches, DataInfo
from ..device import amp_dtype, grad_scaler, resolve_device, set_deterministic, synchronize
from ..errors import MobileCNNError, NonFiniteLossError, TrainError
from ..plots import plot_training_curves, read_metrics
from ..runs.checkpoints import latest_checkpoint, load_training_state, save_training_checkpoint
from ..runs.layout import CURVES_FILE, METRICS_FILE
from ..runs.rundir import append_jsonl, prepare_run_dir, run_lock, write_config
from .config import TrainConfig, TrainSettings, resolve
from .distributed import DistContext, default_threads, env_local_rank, env_world_size, init_distributed
from .evaluation import evaluate
from .finetune import finetune_param_groups, freeze_backbone_, freeze_batchnorm_, read_init
from .optim import ModelEma, learning_rate, make_optimizer, param_groups, recalibrate_batchnorm
from .tasks import Loading, Task, task_of

__all__ = ["fit", "train", "train_one_epoch", "evaluate", "EpochStats"]

Callback = Callable[[str, dict[str, Any]], None]

_CPU = torch.device("cpu")


@dataclass
class EpochStats:
    """Running sums of one epoch's training metrics; saved in checkpoints so a resumed epoch logs the
    same numbers as an uninterrupted one."""

    seen: float = 0.0
    loss_sum: float = 0.0
    correct: float = 0.0
    train_time: float = 0.0

    def record(self, epoch: float, step: int, world_size: int, lr: float) -> dict[str, Any]:
        return {"epoch": epoch, "step": step, "train_loss": self.loss_sum / max(self.seen, 1),
                "train_accuracy": 100 * self.correct / max(self.seen, 1),
                "train_img_per_s": self.seen * world_size / max(self.train_time, 1e-9),
                "train_time_s": self.train_time, "lr": lr}


@dataclass
class _Run:
    """Everything one training holds (what train_one_epoch reads and advances)."""

    cfg: TrainConfig
    settings: TrainSettings
    ddp: DistContext
    run_dir: Path
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    ema: ModelEma | None
    criterion: nn.Module
    task: Task
    train_loader: Batches
    info: DataInfo
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    stop_at: int
    weights_metadata: dict[str, str]
    notify: Callback
    device: torch.device = torch.device("cpu")
    autocast_args: tuple[str, torch.dtype] = ("cpu", torch.bfloat16)
    scaler: torch.amp.GradScaler | None = None
    compile_pending: bool = False  # the next training step compiles the model (timed apart)
    compile_time_s: float = 0.0
    step: int = 0

    def check_finite_weights(self, epoch: int) -> None:
        if not all(bool(torch.isfinite(t).all()) for t in self.model.state_dict().values() if t.is_floating_point()):
            kept = latest_checkpoint(self.run_dir)
            raise NonFiniteLossError(
                f"weights became NaN/inf at step {self.step} (epoch {epoch}); stopped without saving them. The last "
                f"good checkpoint is {kept if kept else 'none'}; lower --lr or disable --amp and resume with --resume")

    def checkpoint(self, epoch: int, in_epoch: int, stats: EpochStats, serve: str | None = None) -> None:
        self.check_finite_weights(epoch)
        if self.ddp.main:
            progress: dict[str, Any] = {"epoch": epoch, "step": self.step, "step_in_epoch": in_epoch,
                                        "epoch_stats": dataclasses.asdict(stats)}
            if self.scaler is not None:  # fp16 AMP: the loss scale is part of the state
                progress["grad_scaler"] = self.scaler.state_dict()
            if serve:
                progress["serve"] = serve
            save_training_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer, progress=progress,
                                     ema=self.ema, metadata=self.weights_metadata)
        if self.ddp.world_size > 1:
            dist.barrier()


def train_one_epoch(run: _Run, epoch: int, start_in_epoch: int, stats: EpochStats) -> tuple[int, bool]:
    """Train from step ``start_in_epoch`` of ``epoch``; returns (steps done in the epoch, run finished)."""
    cfg, s = run.cfg, run.settings
    run.net.train()
    if cfg.freeze_bn or cfg.freeze_backbone:
        freeze_batchnorm_(run.model)
    t0 = time.perf_counter()
    time_before = stats.train_time
    in_epoch = start_in_epoch
    for x, y in run.train_loader.batches(epoch, in_epoch):
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(run.step, run.total_steps, s.lr, s.schedule, run.warmup_steps,
                                        run.steps_per_epoch) * group.get("lr_scale", 1.0)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(*run.autocast_args, enabled=cfg.amp):
            logits = run.net(x)
        loss = run.criterion(logits.float(), y)
        finite = torch.isfinite(loss.detach()).to(torch.int32)
        if run.ddp.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            kept = latest_checkpoint(run.run_dir)
            raise NonFiniteLossError(
                f"loss became {loss.item()} at step {run.step} (epoch {epoch}); stopped. The last good checkpoint "
                f"is {kept if kept else 'none (no checkpoint was written yet)'}; lower --lr or disable --amp "
                "and resume with --resume")
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler is None:
            loss.backward()
            run.optimizer.step()
        else:  # fp16 autocast: scaled gradients, steps with inf/NaN gradients skipped
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
        if run.ema is not None:
            run.ema.update(run.model)
        run.step += 1
        in_epoch += 1
        batch = y.shape[0]
        stats.seen += batch
        stats.loss_sum += float(loss.detach()) * batch
        stats.correct += run.task.correct(logits, y)
        if run.compile_pending:  # the first step compiled the model: its time is compile time, not training
            synchronize(run.device)
            run.compile_time_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            run.compile_pending = False
        stats.train_time = time_before + time.perf_counter() - t0
        run.notify("step", {"step": run.step, "epoch": epoch, "loss": float(loss.detach()),
                            "accuracy": 100 * stats.correct / stats.seen,
                            "img_per_s": stats.seen * run.ddp.world_size / max(stats.train_time, 1e-9),
                            "lr": run.optimizer.param_groups[0]["lr"]})
        if run.step % cfg.checkpoint_every == 0 and in_epoch < run.steps_per_epoch:
            run.checkpoint(epoch, in_epoch, stats)
        if run.step >= run.stop_at:
            return in_epoch, True
    stats.train_time = time_before + time.perf_counter() - t0
    return in_epoch, False


def _setup(cfg: TrainConfig, settings: TrainSettings, ddp: DistContext, run_dir: Path, notify: Callback,
           device: torch.device = _CPU) -> tuple[_Run, Batches, dict[str, Any], dict[str, Any]]:
    s = settings
    task = task_of(s.recipe.task)
    init = read_init(cfg.init) if cfg.init else None
    # on the CPU the same code runs (the in-memory data stays where it is)
    train_loader, val_loader, info = task.load(cfg, s, Loading(s.batch_size // ddp.world_size, ddp.rank,
                                                               ddp.world_size, device), init)
    torch.manual_seed(cfg.seed)
    built = task.build(cfg, info, init)
    model, model_kwargs, small_input = built.model, built.model_kwargs, built.small_input
    if cfg.freeze_backbone:
        freeze_backbone_(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # the last stage's BN (a DeepLab head's image-pooling branch, SSD's last 1x1 extra: one value per image) needs
    # two values
    side = 1 if task.name != "classification" else -(-info.resolution // getattr(model, "total_stride", 1))
    if (s.batch_size // ddp.world_size) * side * side < 2:
        raise TrainError(f"a batch of {s.batch_size // ddp.world_size} image(s) per process at {info.resolution} px "
                         f"leaves BatchNorm one value per channel in the last stage ({side}x{side}); use "
                         "--batch-size >= 2 or a larger --resolution")
    if device.type != "cpu":
        model = model.to(device)
    steps_per_epoch = len(train_loader)
    total_steps = max(1, int(round(cfg.epochs * steps_per_epoch)))
    groups = (finetune_param_groups(model, s.weight_decay, cfg.backbone_lr_scale) if cfg.backbone_lr_scale != 1.0
              else param_groups(model, s.weight_decay))
    optimizer = make_optimizer(s.recipe.optimizer, groups, s.lr, s.recipe.momentum)
    ema = ModelEma(model, s.ema) if s.ema else None
    threads = torch.get_num_threads()
    record_settings = {"recipe": s.recipe_name, "lr": s.lr, "weight_decay": s.weight_decay, "schedule": s.schedule,
                       "label_smoothing": s.label_smoothing, "ema": s.ema, "bn_recalibration": s.bn_recalibration,
                       "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                       "warmup_steps": int(s.warmup_epochs * steps_per_epoch), "world_size": ddp.world_size,
                       "threads_per_process": threads, "small_input": small_input, "device": str(device),
                       "amp_dtype": str(amp_dtype(device)).replace("torch.", "") if cfg.amp else None,
                       "compile": bool(cfg.compile)}
    config_record = {
        "format": "mobilecnn-run/1",
        "model": cfg.model,
        "model_kwargs": {"num_classes": info.num_classes, "in_chans": info.in_chans, "small_input": small_input,
                         **model_kwargs},
        "data": info.to_dict(),
        "resolution": info.resolution,
        "identity": json.loads(json.dumps(cfg.identity())),
        "config": json.loads(json.dumps(dataclasses.asdict(dataclasses.replace(cfg, out=s.out)))),
        "settings": record_settings,
    }
    net: nn.Module = model
    if ddp.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = cast(nn.Module, torch.compile(net, dynamic=False))  # an OptimizedModule; the stub says Callable
    run = _Run(cfg=cfg, settings=s, ddp=ddp, run_dir=run_dir, model=model, net=net, optimizer=optimizer, ema=ema,
               criterion=task.criterion(s, device.type == "cuda" and cfg.deterministic, model, info), task=task,
               train_loader=train_loader, info=info,
               steps_per_epoch=steps_per_epoch, total_steps=total_steps,
               warmup_steps=int(s.warmup_epochs * steps_per_epoch),
               stop_at=min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps,
               # makes every weight file self-describing (predict/export from a lone .safetensors)
               weights_metadata={"data": json.dumps(info.to_dict()), "model_kwargs": json.dumps(model_kwargs)},
               notify=notify, device=device, autocast_args=(device.type, amp_dtype(device)),
               scaler=grad_scaler(device, cfg.amp), compile_pending=bool(cfg.compile))
    return run, val_loader, record_settings, config_record


def _sync_buffers(run: _Run) -> None:
    """Rank 0's BN statistics (and EMA buffers) to every rank before evaluating: DDP broadcasts buffers at the
    start of each training forward, so after the last step each rank holds the statistics of its own last
    batch, and the ranks' shards would be scored by slightly different models (rank 0's is the one saved)."""
    modules = [run.model] + ([run.ema] if run.ema is not None else [])
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def _finish_epoch(run: _Run, val_loader: Batches, epoch: int, in_epoch: int, stats: EpochStats, finished: bool,
                  n_epochs: int) -> dict[str, Any]:
    cfg = run.cfg
    epoch_done = in_epoch >= run.steps_per_epoch
    last_epoch = finished or epoch + 1 >= n_epochs
    if last_epoch and run.settings.bn_recalibration:
        recalibrate_batchnorm(run.model, run.train_loader.batches(epoch + 1000), cfg.bn_recalibration_batches,
                              cfg.channels_last)
    if run.ddp.world_size > 1:
        _sync_buffers(run)
    record = stats.record(epoch + (in_epoch / run.steps_per_epoch if not epoch_done else 1), run.step,
                          run.ddp.world_size, run.optimizer.param_groups[0]["lr"])
    if cfg.compile:
        record["compile_time_s"] = run.compile_time_s  # the first step's time, kept out of train_time_s
    serve = None
    if last_epoch or (epoch + 1) % cfg.eval_every == 0:
        task, key = run.task, run.task.score
        ev = task.evaluate(run.ema.module if run.ema is not None else run.model, val_loader, cfg, run.info)
        record.update({**ev, "weights": "ema" if run.ema is not None else "model"})
        if run.ema is not None and last_epoch:
            raw = task.evaluate(run.model, val_loader, cfg, run.info)
            if (raw[key] or 0.0) > (ev[key] or 0.0):  # a short run: the average still lags behind the model
                serve = "model"
                record.update({**raw, "weights": "model", f"ema_{key}": ev[key],
                               "note": f"EMA weights scored {ev[key]:.2f}% < raw weights {raw[key]:.2f}% "
                                       f"({key}): the raw weights are served"})
    if run.ddp.main:  # metrics before the checkpoint: a crash in between repeats a line, never loses one
        metrics_file = run.run_dir / METRICS_FILE
        append_jsonl(metrics_file, record)
        with contextlib.suppress(Exception):  # a plot must never fail a training
            plot_training_curves(metrics_file, run.run_dir / CURVES_FILE)
    run.checkpoint(epoch, in_epoch, stats, serve=serve)
    return record


def _finished_in_records(run_dir: Path, stop_at: int) -> Path | None:
    """The metrics file of ``run_dir`` when its last record is at the run's last step, else None."""
    path = run_dir / METRICS_FILE
    records = read_metrics(path) if path.is_file() else []
    step = records[-1].get("step") if records else None
    return path if isinstance(step, int) and step >= stop_at else None


def _on_rank0(ddp: DistContext, check: Callable[[], Path | None]) -> Path | None:
    """``check()`` on rank 0, its result shared with every rank; a refusal (a ``MobileCNNError``) is raised on
    every rank with rank 0's message, so none goes on into collectives its peers will never join."""
    result: Path | None = None
    refusal: tuple[str, str] | None = None
    if ddp.main:
        try:
            result = check()
        except MobileCNNError as exc:
            if ddp.world_size == 1:
                raise
            refusal = (type(exc).__name__, str(exc))
    if ddp.world_size > 1:
        box: list[Any] = [(refusal, str(result) if result else "")]
        dist.broadcast_object_list(box, src=0)
        refusal, shared = box[0]
        if refusal is not None:
            error = getattr(errors, refusal[0], TrainError)
            raise (error if isinstance(error, type) and issubclass(error, MobileCNNError) else TrainError)(refusal[1])
        result = Path(shared) if shared else None
    return result


def fit(cfg: TrainConfig, callback: Callback | None = None) -> dict[str, Any]:
    """Run (or resume) a training; returns the final metrics. Raises ``TrainError`` for bad requests.

    ``callback(event, info)`` receives ``"start"``, ``"step"`` (every step), ``"epoch"`` and ``"end"``
    events on rank 0.
    """
    settings = resolve(cfg)
    device = resolve_device(cfg.device, env_local_rank() if env_world_size() > 1 else None)
    set_deterministic(device, cfg.deterministic)
    ddp = init_distributed(device)
    if settings.batch_size % ddp.world_size:
        raise TrainError(f"--batch-size {settings.batch_size} must be divisible by the {ddp.world_size} processes")
    threads = cfg.threads or default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", ddp.world_size)))
    torch.set_num_threads(threads)
    cfg = dataclasses.replace(cfg, batch_size=settings.batch_size)
    run_dir = Path(settings.out)
    notify: Callback = callback if (callback and ddp.main) else (lambda event, info: None)

    # Read-only checks first: a refused command (a directory holding another run, a file, a data error)
    # leaves nothing behind. Only then is the directory created and locked, and the checks repeated
    # under the lock (another process may have started in between).
    # Under torchrun rank 0 checks and every rank raises its refusal, before the group is used for anything else.
    _on_rank0(ddp, lambda: prepare_run_dir(cfg.identity(), run_dir, cfg.resume))
    run, val_loader, record_settings, config_record = _setup(cfg, settings, ddp, run_dir, notify, device)
    with run_lock(run_dir) if ddp.main else contextlib.nullcontext():
        # every rank resumes from what rank 0 found
        resume_from = _on_rank0(ddp, lambda: prepare_run_dir(cfg.identity(), run_dir, cfg.resume, check_lock=False))
        if ddp.main:
            write_config(run_dir, config_record)

        start_epoch, start_in_epoch, stats = 0, 0, EpochStats()
        if resume_from is not None:
            state = load_training_state(resume_from, model=run.model, optimizer=run.optimizer, ema=run.ema)
            if run.scaler is not None and isinstance(state.get("grad_scaler"), dict):
                run.scaler.load_state_dict(state["grad_scaler"])
            run.step, start_epoch, start_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
            if start_in_epoch >= run.steps_per_epoch:
                start_epoch, start_in_epoch = start_epoch + 1, 0
            elif isinstance(state.get("epoch_stats"), dict):
                stats = EpochStats(**state["epoch_stats"])

        n_epochs = math.ceil(run.total_steps / run.steps_per_epoch)
        notify("start", {"total_steps": run.stop_at, "step": run.step, "steps_per_epoch": run.steps_per_epoch,
                         "settings": record_settings, "info": run.info,
                         "resumed_from": str(resume_from) if resume_from else None})
        last_metrics: dict[str, Any] = {}
        # a finished run whose checkpoints are gone (deleted to save space, or committed without them) is not trained
        # again from scratch on --resume: its metrics already hold its last step
        done = _on_rank0(ddp, lambda: _finished_in_records(run_dir, run.stop_at)) if cfg.resume and not resume_from \
            else None
        epoch, finished = start_epoch, run.step >= run.stop_at or done is not None
        while not finished and epoch < n_epochs:
            in_epoch, finished = train_one_epoch(run, epoch, start_in_epoch if epoch == start_epoch else 0, stats)
            last_metrics = _finish_epoch(run, val_loader, epoch, in_epoch, stats, finished, n_epochs)
            notify("epoch", last_metrics)
            stats = EpochStats()
            epoch += 1
        metrics_file = run_dir / METRICS_FILE
        if ddp.main and not last_metrics and metrics_file.is_file():
            records = read_metrics(metrics_file)  # bounded: a metrics.jsonl linked to /dev/zero is refused
            last_metrics = records[-1] if records else {}
        if cfg.compile:
            last_metrics = {**last_metrics, "compile_time_s": run.compile_time_s}
        notify("end", {"run_dir": str(run_dir), **last_metrics})
        return {"run_dir": str(run_dir), **last_metrics}


train = fit
