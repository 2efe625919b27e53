"""Optimisation pieces: parameter groups, the learning-rate schedule, optimisers, EMA, BN recalibration."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import TrainError
from .config import SCHEDULES

__all__ = ["param_groups", "learning_rate", "make_optimizer", "ModelEma", "recalibrate_batchnorm"]


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


def learning_rate(step: int, total_steps: int, peak: float, schedule: str, warmup_steps: int,
                  steps_per_epoch: int) -> float:
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
    if schedule == "poly":  # DeepLab's: (1 - t) ** 0.9
        return peak * (1.0 - t) ** 0.9
    raise TrainError(f"unknown schedule {schedule!r}; accepted: {', '.join(SCHEDULES)}")


def make_optimizer(name: str, groups: list[dict[str, Any]], lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "momentum":  # TF's MomentumOptimizer (DeepLab): heavy-ball, not Nesterov
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":  # weight decay from the groups (conv weights only), decoupled as AdamW does it
        return torch.optim.AdamW(groups, lr=lr)
    if name == "rmsprop":
        # TF's RMSProp puts epsilon (1.0 in the paper's setup scaled by lr) inside the sqrt; 0.0316 ~ sqrt(1e-3)
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, momentum=momentum, eps=0.0316)
    raise TrainError(f"unknown optimizer {name!r}")


class ModelEma(nn.Module):
    """Exponential moving average of a model's weights and buffers, with timm's warm-up of the decay.

    The decay used at update ``n`` is ``min(decay, (1 + n) / (10 + n))``: early updates follow the model
    closely, so a short run (a fine-tune of a few hundred steps) does not serve weights that are
    still almost the initial ones. ``state_dict`` keys are ``module.*`` plus ``n_averaged``, the layout
    of ``torch.optim.swa_utils.AveragedModel``.
    """

    n_averaged: torch.Tensor  # a registered buffer

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.n_averaged)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        source = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = source[name].detach()
            if average.is_floating_point():
                average.lerp_(value.to(average.dtype), 1.0 - decay)
            else:
                average.copy_(value)
        self.n_averaged += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


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
