"""Devices: which one a command runs on (``--device``), how many CPUs this process may use, and what the
device means for mixed precision, determinism and timing.

``--device auto`` picks the accelerator PyTorch reports (:mod:`torch.accelerator`: CUDA, or Apple MPS),
else the CPU. Under torchrun each process takes the accelerator of its ``LOCAL_RANK`` (one device per
process). A device that is not there is a :class:`~mobilecnn.errors.UsageError` whose one-line message
lists the devices that are.

AMP (``--amp``): bf16 autocast on the CPU and on accelerators that support bf16 (no gradient scaler
needed: bf16 has fp32's exponent range); fp16 autocast with a :class:`torch.amp.GradScaler` on
accelerators without bf16.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .errors import UsageError

__all__ = ["DEVICE_CHOICES", "available_cpus", "available_devices", "resolve_device", "amp_dtype", "grad_scaler",
           "set_deterministic", "synchronize", "device_summary"]

#: What ``--device`` accepts (``cuda:N`` for any N).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def available_cpus() -> int:
    """Logical CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def available_devices() -> list[str]:
    """The devices this machine offers, e.g. ``["cpu"]`` or ``["cpu", "cuda:0", "cuda:1"]``."""
    found = ["cpu"]
    found += [f"cuda:{i}" for i in range(_cuda_count())]
    if _mps_available():
        found.append("mps")
    return found


def _auto_accelerator() -> str | None:
    """The accelerator type PyTorch would use ("cuda", "mps", ...) or None."""
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        if acc.is_available():
            current = acc.current_accelerator()
            return current.type if current is not None else None
        return None
    if torch.cuda.is_available():  # torch < 2.6: no torch.accelerator
        return "cuda"
    return "mps" if _mps_available() else None


def _unavailable(spec: str | None, why: str) -> UsageError:
    return UsageError(f"--device {spec} is not available: {why}; available here: {', '.join(available_devices())} "
                      "(or auto)")


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """The :class:`torch.device` for ``spec`` (auto, cpu, cuda, cuda:N, mps).

    ``local_rank`` (torchrun's ``LOCAL_RANK``): ``auto``/``cuda`` take ``cuda:<local_rank>``, one device
    per process. Raises :class:`UsageError` naming the devices that are available.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        text = _auto_accelerator() or "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise _unavailable(spec, "this PyTorch build or machine has no Apple MPS")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        if text != "cuda" and not text[len("cuda:"):].isdigit():
            raise UsageError(f"--device {spec!r} is not accepted: use {', '.join(DEVICE_CHOICES)} "
                             f"(available here: {', '.join(available_devices())})")
        count = _cuda_count()
        if count == 0:
            why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
            raise _unavailable(spec, why)
        if text == "cuda":
            index = local_rank if local_rank is not None else torch.cuda.current_device()
            if index >= count:
                raise _unavailable(f"{spec} (LOCAL_RANK {local_rank})",
                                   f"{count} CUDA device(s) for more processes per node; start at most "
                                   f"--nproc-per-node {count}")
            return torch.device("cuda", index)
        index = int(text[len("cuda:"):])
        if local_rank is not None:
            raise UsageError(f"--device {spec} under torchrun would put every process on one GPU; pass --device cuda "
                             "(or auto): each process takes the GPU of its LOCAL_RANK")
        if index >= count:
            raise _unavailable(spec, f"there are {count} CUDA device(s)")
        return torch.device("cuda", index)
    if text in ("xpu", "npu", "hpu") and _auto_accelerator() == text:  # what torch.accelerator found
        return torch.device(text, local_rank or 0)
    raise UsageError(f"--device {spec!r} is not accepted: use {', '.join(DEVICE_CHOICES)} "
                     f"(available here: {', '.join(available_devices())})")


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of ``--amp`` on ``device``: bf16 where supported, otherwise fp16."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16  # bf16 on MPS needs macOS 14+; fp16 works everywhere MPS does
    return torch.bfloat16


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler | None:
    """A gradient scaler when ``--amp`` runs in fp16 (bf16 needs none), else None."""
    device = torch.device(device)
    if not amp or amp_dtype(device) != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def set_deterministic(device: torch.device, enabled: bool = True) -> None:
    """Deterministic algorithms on an accelerator where PyTorch has them (a warning names an op that has
    none: see docs/devices.md). The CPU kernels used by mobilecnn are deterministic already."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (before first use)
    torch.backends.cudnn.deterministic = bool(enabled)
    torch.backends.cudnn.benchmark = not enabled
    torch.use_deterministic_algorithms(bool(enabled), warn_only=True)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timings); nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_summary(device: torch.device) -> dict[str, Any]:
    """What ``config.json`` and benchmarks record about a device."""
    device = torch.device(device)
    info: dict[str, Any] = {"device": str(device), "type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                     "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                     "amp_dtype": str(amp_dtype(device)).replace("torch.", "")})
    elif device.type == "cpu":
        info["amp_dtype"] = "bfloat16"
    return info
