"""What this machine can run: importable backends and the CPU's bf16 instructions.

The format table (:mod:`mobilecnn.deploy.formats`) names the modules each format needs; this module only
answers whether they import and what the CPU offers.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ..errors import MissingBackendError

__all__ = ["require_backend", "importable", "bf16_supported", "cpu_flags"]

def require_backend(module: str, purpose: str, extra: str = "deploy") -> Any:
    """Import ``module`` or raise :class:`MissingBackendError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingBackendError(f"{purpose} needs the Python package {module!r}, which is not importable "
                                  f"({exc}); install it with: pip install 'mobilecnn[{extra}]'") from exc


def importable(*modules: str) -> bool:
    """Whether every module in ``modules`` is installed here, found without importing it (importing LiteRT's
    converter loads jax: seconds of start-up for a question about the installation)."""
    try:
        return all(importlib.util.find_spec(module) is not None for module in modules)
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


_BF16: bool | None = None


def cpu_flags() -> set[str]:
    """The instruction-set flags /proc/cpuinfo lists (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_supported() -> bool:
    """Whether bf16 inference is worth offering here: OpenVINO is installed and lists ``BF16`` among its
    CPU capabilities, and the CPU has native bf16 instructions (``avx512_bf16`` or ``amx_bf16``; without
    them OpenVINO emulates bf16, slower than fp32)."""
    global _BF16
    if _BF16 is None:
        try:
            import openvino as ov
            caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except Exception:  # noqa: BLE001 - not installed, or no CPU plugin
            caps = []
        flags = cpu_flags()
        _BF16 = "BF16" in caps and bool(flags & {"avx512_bf16", "amx_bf16"})
    return _BF16
