"""The deploy form of a model: BatchNorm folded into the convolutions, an export-friendly head.

* :func:`fold_batchnorm` folds every Conv2d directly followed by a BatchNorm2d (float64 arithmetic).
* :func:`deploy_form` also rewrites the zoo's head as global pool (keepdim) -> 1x1 conv -> flatten,
  the same arithmetic as pool -> flatten -> Linear. It keeps the ExecuTorch int8 program in one
  XNNPACK delegate (with a Linear head the flatten between two delegates failed to serialise with a
  dynamic batch: "0 in strides is not supported").
* :func:`avgpool_to_depthwise` (ExecuTorch only) turns ShuffleNet's zero-padded 3x3 average pools
  into equal fixed depthwise convs, because XNNPACK does not take count_include_pad pooling.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..models import ClassifierNet

__all__ = ["fold_batchnorm", "deploy_form", "DeployClassifier", "avgpool_to_depthwise", "pools_as_depthwise"]


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` in eval mode; the arithmetic is done in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm: BatchNorm2d without running statistics cannot be folded")
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                      conv.padding, conv.dilation, conv.groups, bias=True,  # type: ignore[arg-type]
                      padding_mode=conv.padding_mode)
    assert fused.bias is not None
    with torch.no_grad():
        fused.weight.copy_((w * scale.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
        fused.bias.copy_((beta + (b - bn.running_mean.detach().double()) * scale).to(conv.weight.dtype))
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Deep-copied eval model with every Conv2d directly followed by a BatchNorm2d folded into it.

    Covers the zoo's ``ConvBNAct`` (children ``conv``, ``bn``) and any ``nn.Sequential`` holding a
    Conv2d then a BatchNorm2d (torchvision's blocks). The conv gets a bias; the BN becomes
    ``nn.Identity``. Outputs match the eval-mode original to float32 rounding (tests: 1e-5 relative).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm expects an nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.num_features == conv.out_channels:
                parent._modules[first] = _fold_pair(conv, bn)
                parent._modules[second] = nn.Identity()
    return folded


class DeployClassifier(nn.Module):
    """``features`` -> global average pool (keepdim) -> 1x1 conv (the Linear's weights) -> flatten."""

    def __init__(self, features: nn.Module, linear: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
        with torch.no_grad():
            self.fc.weight.copy_(linear.weight.detach()[:, :, None, None])
            if linear.bias is not None and self.fc.bias is not None:
                self.fc.bias.copy_(linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(x).flatten(1)


def _classifier_linear(model: nn.Module) -> nn.Linear | None:
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear) \
            and all(isinstance(m, (nn.Dropout, nn.Identity)) for m in list(head)[:-1]):
        return head[-1]
    return None


def deploy_form(model: nn.Module) -> nn.Module:
    """The module that is exported: BN folded, eval mode, zoo heads as pool -> 1x1 conv -> flatten.

    Other modules (e.g. torchvision's) are exported as :func:`fold_batchnorm` returns them.
    """
    folded = fold_batchnorm(model)
    linear = _classifier_linear(folded)
    standard = (isinstance(folded, ClassifierNet) and type(folded).forward is ClassifierNet.forward
                and type(folded).forward_head is ClassifierNet.forward_head
                and type(folded).forward_features is ClassifierNet.forward_features)
    if standard and linear is not None:
        features = folded.features
        assert isinstance(features, nn.Module)
        return DeployClassifier(features, linear).eval()
    return folded


def avgpool_to_depthwise(net: nn.Module, example: torch.Tensor) -> int:
    """Replace padded ``AvgPool2d(count_include_pad=True)`` by the equal fixed depthwise conv, in place.

    XNNPACK refuses average pooling that counts zero padding (executorch's AvgPoolingConfig), so
    ShuffleNet's 3x3/s2 shortcut pool would fall back to ExecuTorch's slow portable kernel. A 3x3
    depthwise conv with weights 1/9 and zero padding is the same arithmetic and is delegated; its
    per-channel int8 weights (all equal) quantize exactly. Returns the number of pools replaced.
    """
    channels: dict[str, int] = {}
    pools = {name: m for name, m in net.named_modules() if isinstance(m, nn.AvgPool2d)
             and m.count_include_pad and not m.ceil_mode and m.divisor_override is None
             and any(p != 0 for p in nn.modules.utils._pair(m.padding))}
    if not pools:
        return 0
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: channels.__setitem__(name, inp[0].shape[1]))
             for name, m in pools.items()]
    try:
        with torch.no_grad():
            net(example[:1])
    finally:
        for h in hooks:
            h.remove()
    for name, pool in pools.items():
        if name not in channels:
            continue
        c = int(channels[name])
        k, st, pad = (nn.modules.utils._pair(v)
                      for v in (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding))
        conv = nn.Conv2d(c, c, k, st, pad, groups=c, bias=False)
        with torch.no_grad():
            conv.weight.fill_(1.0 / (k[0] * k[1]))
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, conv)
    return len(channels)


def pools_as_depthwise(net: nn.Module, example: torch.Tensor) -> list[str]:
    """:func:`avgpool_to_depthwise` as a format transform (the notes it leaves in the export report)."""
    replaced = avgpool_to_depthwise(net, example)
    if not replaced:
        return []
    return [f"{replaced} zero-padded average pool(s) exported as fixed depthwise convs (XNNPACK does not "
            "delegate count_include_pad pooling)"]
