"""What every section of ``mobilecnn reproduce`` measures on a trained run beside its accuracy: the batch-1
latency of its ONNX fp32 file in onnxruntime (1 thread, median), at the side the run was trained at."""

from __future__ import annotations

from pathlib import Path

from .deploy.bench import BenchSpec, benchmark
from .runs.rundir import load_trained

__all__ = ["onnx_latency"]


def onnx_latency(run: str | Path, resolution: int, repeats: int) -> float | None:
    """Batch-1 median latency (ms, 1 thread) of ``run``'s model exported to ONNX fp32, in onnxruntime;
    ``None`` when it could not be timed."""
    loaded = load_trained(run)
    rows = benchmark([loaded.model], BenchSpec(("onnxruntime",), resolution=resolution, repeats=repeats,
                                               references=False, min_time_s=0.3))
    ok = [r.median_ms for r in rows if r.median_ms]
    return ok[0] if ok else None
