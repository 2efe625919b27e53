"""Complexity accounting in the papers' convention (docs/counting.md).

* MACs: multiply-adds of Conv2d and Linear only (ShuffleNet's "FLOPs", MobileNet's "MAdds"); a
  grouped k x k conv costs Ho*Wo*Cout*(Cin/g)*k*k, a Linear in*out. BN, activations, pooling, adds and
  the shuffle are free. Tools that count 2 FLOPs per MAC (``torch.utils.flop_counter``) give twice this.
* Params with and without the BN affine parameters (running statistics are buffers, never counted).
* Peak activation memory (MobileNetV2 section 5.1): every tensor of a batch-1 forward lives from the
  op that makes it to the last op that reads it; the peak is the largest total size of tensors alive
  at the same op, the input image included. Weights are not activations and are not counted.
* Per layer: name, kind, output shape, MACs, params; for each depthwise-separable block (MobileNet V1
  block, inverted residual, ShuffleNet unit) the cost of a standard K x K conv F^2 D K^2 C, of
  a depthwise separable conv F^2 D (K^2 + C), the block's measured MACs and the saving.
* Dilated (atrous) convs, two ways (``dilated=``): ``"plain"`` charges the positions the conv outputs;
  ``"space_to_batch"`` charges what TensorFlow computes, which runs a rate-r conv on the r x r sub-grids of
  its input padded to ``ceil(H / r)`` rows and ``ceil(W / r)`` columns each, i.e. ``r ceil(H / r)`` by
  ``r ceil(W / r)`` output positions (what the MobileNetV2 paper's Table 7 MAdds count).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..data.images import MAX_RESOLUTION  # the profiler keeps every activation of a forward alive: GiBs at 2048 px
from ..fields import cli, positive_int
from ..layers import DepthwiseSeparableConv, InvertedResidual, ShuffleNetUnit
from ..models import create_model, get_model_entry
from ..models.base import OUTPUT_STRIDES
from ..models.deeplab import evaluation_sizes
from ..models.published import DILATED_COUNTINGS
from ..validators import check_choice, check_positive_int

__all__ = ["LayerStats", "ModelProfile", "ProfileConfig", "profile", "profile_config", "count_macs",
           "peak_activation_bytes", "conv_kind", "evaluation_macs", "DILATED_COUNTINGS"]

_SEPARABLE_BLOCKS = (DepthwiseSeparableConv, InvertedResidual, ShuffleNetUnit)


@dataclass
class LayerStats:
    """One row of the per-layer table. The cost fields are set only for ``kind == "block"``."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    macs: int
    params: int
    standard_conv_macs: int | None = None  # F^2 D K^2 C
    separable_conv_macs: int | None = None  # F^2 D (K^2 + C)
    saving: float | None = None  # standard_conv_macs / macs


@dataclass
class ModelProfile:
    model: str
    resolution: int
    in_chans: int
    macs: int
    params: int
    params_without_bn: int
    peak_activation_bytes: int
    layers: list[LayerStats] = field(default_factory=list)
    #: the dilated-conv convention of ``macs`` and ``layers``; ``macs_space_to_batch``: the total the TF way
    #: (equal to ``macs`` when no conv is dilated)
    dilated: str = "plain"
    macs_space_to_batch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conv_kind(conv: nn.Conv2d) -> str:
    """``conv``, ``pointwise``, ``group_pointwise``, ``depthwise`` or ``group_conv``."""
    k = conv.kernel_size[0] * conv.kernel_size[1]
    if conv.groups == 1:
        return "pointwise" if k == 1 else "conv"
    if conv.groups == conv.in_channels == conv.out_channels:
        return "depthwise"
    return "group_pointwise" if k == 1 else "group_conv"


def _conv_macs(conv: nn.Conv2d, out: torch.Tensor, dilated: str = "plain") -> int:
    """``Ho Wo Cout (Cin / g) kh kw``; a dilated conv counted ``space_to_batch`` is charged ``r ceil(Ho / r)`` by
    ``r ceil(Wo / r)`` positions (TF pads each of the r x r sub-grids to ``ceil(H / r)`` x ``ceil(W / r)``)."""
    kh, kw = conv.kernel_size
    height, width = int(out.shape[2]), int(out.shape[3])
    if dilated == "space_to_batch":
        rh, rw = conv.dilation
        height, width = rh * -(-height // rh), rw * -(-width // rw)
    return height * width * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


def _param_count(module: nn.Module, recurse: bool = True) -> int:
    return sum(p.numel() for p in module.parameters(recurse=recurse))


def _example_input(model: nn.Module, resolution: int) -> torch.Tensor:
    """A batch-1 zero image on the model's device (``meta``: shapes only, for counting without computing)."""
    check_positive_int(resolution, "resolution", maximum=MAX_RESOLUTION)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else None
    return torch.zeros(1, getattr(model, "in_chans", 3), resolution, resolution, dtype=dtype, device=device)


def count_macs(model: nn.Module, resolution: int = 224, dilated: str = "plain") -> tuple[int, list[LayerStats]]:
    """MACs of a batch-1 forward at ``resolution`` and the per-layer rows (leaf layers + blocks); dilated convs
    are charged as ``dilated`` says (:data:`DILATED_COUNTINGS`, docs/counting.md). A model on the ``meta``
    device is counted from shapes alone."""
    check_choice(dilated, "dilated", DILATED_COUNTINGS)
    x = _example_input(model, resolution)
    rows: dict[str, LayerStats] = {}
    order: list[str] = []
    block_io: dict[str, tuple[int, tuple[int, ...]]] = {}
    hooks = []

    def leaf_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                macs, kind = _conv_macs(module, out, dilated), conv_kind(module)
            else:  # the hook is only registered on Conv2d and Linear
                linear = cast(nn.Linear, module)
                macs, kind = linear.in_features * linear.out_features * (out.numel() // out.shape[-1]), "linear"
            rows[name] = LayerStats(name, kind, tuple(out.shape), macs, _param_count(module))
            order.append(name)

        return hook

    def block_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            block_io[name] = (inputs[0].shape[1], tuple(out.shape))
            order.append(name)

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(leaf_hook(name)))
        elif isinstance(module, _SEPARABLE_BLOCKS):
            hooks.append(module.register_forward_hook(block_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    for name, (in_ch, out_shape) in block_io.items():
        inner = sum(r.macs for n, r in rows.items() if n.startswith(name + "."))
        f2, out_ch, k2 = out_shape[2] * out_shape[3], out_shape[1], 9
        standard = f2 * in_ch * k2 * out_ch
        rows[name] = LayerStats(
            name, "block", out_shape, inner, _param_count(modules[name]),
            standard_conv_macs=standard, separable_conv_macs=f2 * in_ch * (k2 + out_ch),
            saving=round(standard / inner, 2) if inner else None,
        )
    # Blocks fire their hook after their children; list each block before its layers.
    ordered = sorted(rows.values(), key=lambda r: (
        order.index(r.name) if r.kind != "block"
        else min(order.index(n) for n in rows if n.startswith(r.name + ".")) - 0.5))
    total = sum(r.macs for r in rows.values() if r.kind != "block")
    return total, ordered


class _LifetimeRecorder(TorchDispatchMode):
    """Records, per storage, the first op that writes it and the last op that reads it."""

    def __init__(self, ignore: set[int]) -> None:
        super().__init__()
        self.ignore = ignore
        self.step = 0
        self.spans: dict[int, list[int]] = {}  # storage ptr -> [nbytes, first, last]
        self.keep: list[torch.Tensor] = []  # hold every tensor so no address is reused mid-run

    def note(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self.ignore:
            return
        span = self.spans.get(ptr)
        if span is None:
            self.spans[ptr] = [storage.nbytes(), self.step, self.step]
            self.keep.append(t)
        else:
            span[2] = self.step

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.step += 1
        for t in tree_flatten((args, kwargs or {}))[0] + tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.note(t)
        return out


def peak_activation_bytes(model: nn.Module, resolution: int = 224) -> int:
    """Largest total bytes of activation tensors alive at once in a batch-1 eval forward."""
    x = _example_input(model, resolution)
    ignore = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    recorder = _LifetimeRecorder(ignore)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), recorder:
            recorder.note(x)
            model(x)
    finally:
        model.train(was_training)
    if not recorder.spans:
        return 0
    steps = recorder.step + 1
    alive = [0] * (steps + 1)
    for nbytes, first, last in recorder.spans.values():  # difference array over op indices
        alive[first] += nbytes
        alive[last + 1] -= nbytes
    peak = running = 0
    for delta in alive:
        running += delta
        peak = max(peak, running)
    return peak


def _is_dilated(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and max(m.dilation) > 1 for m in model.modules())


def evaluation_macs(model: nn.Module, resolution: int, multi_scale_flip: bool = False,
                    dilated: str = "plain") -> int:
    """MACs of one evaluation of a segmentation model: one ``resolution`` image or, ``multi_scale_flip`` (the
    MobileNetV2 paper's MF), the sum over DeepLab's scaled inputs, each also flipped
    (:func:`~mobilecnn.models.deeplab.evaluation_sizes`). Build the model on the ``meta`` device to count
    the large inputs from shapes alone."""
    sizes = evaluation_sizes(resolution, multi_scale_flip)
    return sum(count_macs(model, size, dilated)[0] * sizes.count(size) for size in dict.fromkeys(sizes))


def profile(model: nn.Module | str, resolution: int = 224, small_input: bool = False, dilated: str = "plain",
            **model_kwargs: Any) -> ModelProfile:
    """Complexity of ``model`` (a module or a registered name) for one ``resolution`` x ``resolution`` image;
    ``macs`` and the layer rows charge dilated convs as ``dilated`` says, ``macs_space_to_batch`` is the TF
    total either way (docs/counting.md)."""
    if isinstance(model, str):
        model = create_model(model, small_input=small_input, **model_kwargs)
    elif not isinstance(model, nn.Module):
        raise TypeError(f"profile expects an nn.Module or a registered model name, got {type(model).__name__}")
    macs, layers = count_macs(model, resolution, dilated)
    if dilated == "space_to_batch" or not _is_dilated(model):
        macs_s2b = macs
    else:
        macs_s2b = count_macs(model, resolution, "space_to_batch")[0]
    params = _param_count(model)
    bn_params = sum(_param_count(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return ModelProfile(
        model=getattr(model, "model_name", type(model).__name__),
        resolution=resolution,
        in_chans=getattr(model, "in_chans", 3),
        macs=macs,
        params=params,
        params_without_bn=params - bn_params,
        peak_activation_bytes=peak_activation_bytes(model, resolution),
        layers=layers,
        dilated=dilated,
        macs_space_to_batch=macs_s2b,
    )


#: The input side ``mobilecnn profile`` uses by task: DeepLab's 513 crop for segmentation, the MobileNetV2 paper's
#: 320 x 320 for detection (Tables 5 and 6).
DEFAULT_RESOLUTION = {"classification": 224, "segmentation": 513, "detection": 320}


@dataclass
class ProfileConfig:
    """``mobilecnn profile``: which model, built how, profiled at which input side."""

    name: str = field(metadata=cli("registered model name (see `mobilecnn list`)", positional=True, metavar="NAME"))
    resolution: int | None = field(default=None, metadata=cli(
        "input side in pixels (default: 224, 513 for a DeepLab model, 320 for a detector, or 32 with --small-input)",
        type=positive_int))
    small_input: bool = field(default=False, metadata=cli(
        "the stem for 28-64 px images (stride-1 stem, total stride 8)"))
    in_chans: int = field(default=3, metadata=cli("input channels", type=positive_int))
    output_stride: int | None = field(default=None, metadata=cli(
        "dilate to this output stride (a DeepLab model: 16 by default, or 8; a classifier: 8, 16, 32)",
        choices=list(OUTPUT_STRIDES)))
    aspp: bool = field(default=False, metadata=cli("a DeepLab model with the ASPP branches (Table 7's ASPP column)"))
    dilated: str = field(default="plain", metadata=cli(
        "how dilated convs are charged: at their output ('plain') or as TensorFlow's space-to-batch runs them "
        "(what the MobileNetV2 paper's Table 7 counts); docs/counting.md", choices=list(DILATED_COUNTINGS)))

    @property
    def input_resolution(self) -> int:
        """The side profiled: ``resolution``, else the usual one (32 small-input, 513 segmentation, 320 detection,
        224 otherwise)."""
        if self.resolution is not None:
            return self.resolution
        return 32 if self.small_input else DEFAULT_RESOLUTION[get_model_entry(self.name).task]

    def model_kwargs(self) -> dict[str, Any]:
        """The builder options given (``output_stride``, ``aspp``), besides the stem and channels."""
        kwargs: dict[str, Any] = {"in_chans": self.in_chans}
        if self.output_stride is not None:
            kwargs["output_stride"] = self.output_stride
        if self.aspp:
            kwargs["aspp"] = True
        return kwargs


def profile_config(config: ProfileConfig) -> ModelProfile:
    """:func:`profile` of the model ``config`` describes, at its :attr:`~ProfileConfig.input_resolution`."""
    return profile(config.name, config.input_resolution, small_input=config.small_input, dilated=config.dilated,
                   **config.model_kwargs())
