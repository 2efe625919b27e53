"""The one table of deployable formats: name, file suffixes, runtime, int8 scheme.

Export, the runtimes, ``predict`` and ``bench`` all read :data:`FORMATS`; nothing else maps a format
to a suffix or a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

__all__ = ["Format", "FORMATS", "SIDECAR_SUFFIX", "format_named", "format_for_path", "format_for_runtime"]

#: Written beside every exported file: model, labels, preprocessing, verification numbers.
SIDECAR_SUFFIX = ".mobilecnn.json"


@dataclass(frozen=True)
class Format:
    """One deployable format. ``suffixes[0]`` is the default; ``companions`` are written beside the file."""

    name: str
    suffixes: tuple[str, ...]
    runtime: str
    int8_scheme: str | None = None
    companions: tuple[str, ...] = ()

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    @property
    def int8(self) -> bool:
        return self.int8_scheme is not None

    def files(self, path: Path) -> list[Path]:
        """Every file this format writes for ``path`` (the main file last)."""
        return [path.with_suffix(c) for c in self.companions] + [path]


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", (".onnx",), "onnxruntime",
           "onnxruntime quantize_static QDQ: u8 activations (percentile calibration), s8 per-channel weights"),
    Format("torchscript", (".pt", ".ts"), "torchscript"),
    Format("openvino", (".xml",), "openvino",
           "NNCF quantize, PERFORMANCE preset (symmetric s8 per-channel weights, u8/s8 activations as NNCF picks)",
           companions=(".bin",)),
    Format("executorch", (".pte",), "executorch",
           "PT2E XNNPACKQuantizer: s8 per-channel symmetric weights, static s8 per-tensor activations"),
)}


def format_named(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise UsageError(f"unknown export format {name!r}; accepted: {', '.join(FORMATS)}") from None


def format_for_path(path: str | Path) -> Format:
    """The format of a model file, from its suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    accepted = ", ".join(f"{s} ({f.runtime})" for f in FORMATS.values() for s in f.suffixes)
    raise UsageError(f"{path}: unknown model file suffix {suffix!r}; accepted: {accepted}")


def format_for_runtime(runtime: str) -> Format:
    for fmt in FORMATS.values():
        if fmt.runtime == runtime:
            return fmt
    raise UsageError(f"unknown runtime {runtime!r}; accepted: {', '.join(f.runtime for f in FORMATS.values())}")
