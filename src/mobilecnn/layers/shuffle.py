"""Channel shuffle: ShuffleNet (Zhang et al., arXiv 1707.01083) section 3.1.

With C = g * n channels the channel axis is viewed as (g, n), transposed to (n, g) and flattened, so
each group of the next grouped convolution receives channels from every group of the previous one
(docs/shufflenet_channels.md states the permutation and its inverse).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

from ..validators import check_positive_int

__all__ = ["channel_shuffle", "ChannelShuffle", "is_tracing", "shuffle_order", "shuffle_traced_as_gather"]

_NATIVE_CL_MAX_NUMEL = 1 << 21


def is_tracing() -> bool:
    """Whether the code runs under TorchScript, torch.compile, torch.export or the ONNX exporter."""
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
                or torch.onnx.is_in_onnx_export())


_AS_GATHER: contextvars.ContextVar[bool] = contextvars.ContextVar("mobilecnn_shuffle_as_gather", default=False)


@contextlib.contextmanager
def shuffle_traced_as_gather() -> Iterator[None]:
    """While tracing inside this block, :func:`channel_shuffle` becomes one Gather with a constant order.

    For the ONNX and OpenVINO exports: OpenVINO turns reshape/transpose into its ShuffleChannels node,
    which was about a third of ShuffleNet's int8 latency there, and a Gather runs faster in both runtimes;
    XNNPACK does not delegate it, so ExecuTorch keeps reshape/transpose (docs/deployment.md).
    """
    token = _AS_GATHER.set(True)
    try:
        yield
    finally:
        _AS_GATHER.reset(token)


def shuffle_order(channels: int, groups: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The shuffle as a permutation: output channel ``k`` is input channel ``shuffle_order(...)[k]``."""
    return torch.arange(channels, device=device).reshape(groups, channels // groups).t().reshape(-1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Shuffle the channels of an NCHW tensor across ``groups`` (ShuffleNet section 3.1).

    With C = g * n channels, the channel axis is viewed as (g, n), transposed to (n, g) and flattened:
    output channel ``k = i * g + j`` takes input channel ``j * n + i``. Values are identical for
    contiguous (NCHW) and channels_last inputs, and the output keeps the input's memory format.
    When tracing or exporting only reshape/transpose are used (one gather inside
    :func:`shuffle_traced_as_gather`), so the op exports to ONNX and every runtime runs it natively (the
    legacy ONNX exporter has no ``aten::channel_shuffle``); in eager mode small channels_last tensors go
    to PyTorch's native channel-shuffle kernel (same values, faster).
    """
    if x.dim() != 4:
        raise ValueError(f"channel_shuffle expects a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    if not is_tracing() and (groups < 1 or channels % groups != 0):
        raise ValueError(f"channel_shuffle: groups={groups} must be >= 1 and divide the {channels} channels")
    if groups == 1:
        return x
    per_group = channels // groups
    if _AS_GATHER.get() and is_tracing():
        return x.index_select(1, shuffle_order(channels, groups, x.device))
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if channels_last and x.numel() <= _NATIVE_CL_MAX_NUMEL and not is_tracing():
        # PyTorch's channels-last kernel is faster than the copy below up to ~2M elements and slower
        # above (benchmarks/results/shuffle_cost.json).
        return torch.channel_shuffle(x, groups)
    if channels_last:
        # On the NHWC view of a channels_last tensor: the copy made by the
        # final reshape is NHWC-contiguous, so the result stays channels_last.
        nhwc = x.permute(0, 2, 3, 1)
        nhwc = nhwc.reshape(batch, height, width, groups, per_group).transpose(3, 4)
        return nhwc.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
    x = x.reshape(batch, groups, per_group, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle`."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = check_positive_int(groups, "ChannelShuffle: groups")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
