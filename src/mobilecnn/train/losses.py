"""A label-smoothed cross-entropy built from deterministic CUDA kernels.

``nn.CrossEntropyLoss`` reaches ``nll_loss``, which PyTorch lists among the CUDA operations without a
deterministic implementation (``torch.use_deterministic_algorithms``). This one computes the same
quantity, ``(1 - e) * nll + e * mean_c(-log p_c)``, from ``log_softmax``, ``gather`` (deterministic on
CUDA when deterministic algorithms are on) and plain reductions. Training on CUDA with
``--deterministic`` (the default) uses it; the CPU keeps ``nn.CrossEntropyLoss``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmoothedCrossEntropy"]


class SmoothedCrossEntropy(nn.Module):
    """Logits ``(N, C, ...)``, targets ``(N, ...)``; targets equal to ``ignore_index`` count for nothing and the
    mean is over the others (``nn.CrossEntropyLoss``'s ``reduction="mean"`` without class weights)."""

    def __init__(self, label_smoothing: float = 0.0, ignore_index: int = -100) -> None:
        super().__init__()
        self.label_smoothing, self.ignore_index = float(label_smoothing), int(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=1)
        keep = target != self.ignore_index
        nll = -logp.gather(1, torch.where(keep, target, 0).unsqueeze(1)).squeeze(1)
        if self.label_smoothing:
            nll = (1.0 - self.label_smoothing) * nll - self.label_smoothing * logp.mean(1)
        return (nll * keep).sum() / keep.sum().clamp(min=1)
