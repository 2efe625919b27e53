"""What the sections of ``mobilecnn reproduce`` share: the batch-1 latency of a run's ONNX fp32 file in
onnxruntime (1 thread, median, at the side the run was trained at; every section), the latency of its best
verified file (``export --format auto``: every installed runtime x precision, verified, gated, timed), and the
verdict of a claim "variant A scores at least variant B (minus a margin)" over seeds (segmentation and
detection)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .deploy.bench import BenchSpec, benchmark
from .deploy.run_export import export_run
from .errors import MobileCNNError
from .plots import read_metrics
from .runs.layout import METRICS_FILE
from .runs.rundir import load_trained

__all__ = ["AutoLatency", "auto_latency", "onnx_latency", "training_seconds", "verdict"]


def training_seconds(run: str | Path) -> float:
    """A run's training time: the sum of its epochs' ``train_time_s`` (each record is one epoch's)."""
    path = Path(run) / METRICS_FILE
    return sum(float(r.get("train_time_s") or 0.0) for r in read_metrics(path)) if path.is_file() else 0.0


def onnx_latency(run: str | Path, resolution: int, repeats: int) -> float | None:
    """Batch-1 median latency (ms, 1 thread) of ``run``'s model exported to ONNX fp32, in onnxruntime;
    ``None`` when it could not be timed."""
    loaded = load_trained(run)
    rows = benchmark([loaded.model], BenchSpec(("onnxruntime",), resolution=resolution, repeats=repeats,
                                               references=False, min_time_s=0.3))
    ok = [r.median_ms for r in rows if r.median_ms]
    return ok[0] if ok else None


@dataclass(frozen=True)
class AutoLatency:
    """What ``export --format auto`` kept for a run: its batch-1 latency (None when no file was kept), "runtime
    precision" (or why none), and how long the whole search took."""

    latency_ms: float | None
    choice: str
    time_s: float


def auto_latency(run: str | Path, check_count: int, seconds: float,
                 formats: Sequence[str] | None = None) -> AutoLatency:
    """``export --format auto`` of ``run`` (batch 1, 1 thread, ``seconds`` of timing per candidate; bf16 and int8
    gated on ``check_count`` held-out images; every installed format, or ``formats``) into a temporary folder: the
    kept file's latency and choice."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = export_run(run, "auto", Path(tmp) / "m", check_count=check_count, seconds=seconds,
                                candidates=None if formats is None else list(formats))
        except (MobileCNNError, ValueError, ImportError) as exc:
            return AutoLatency(None, f"auto failed: {exc}", time.perf_counter() - started)
    best = result.get("best")
    if not best:
        return AutoLatency(None, "no verified file", time.perf_counter() - started)
    return AutoLatency(best["latency_ms"], f"{best['runtime']} {best['precision']}", time.perf_counter() - started)


def verdict(better: Sequence[float], worse: Sequence[float], margin: float = 0.0) -> str:
    """Held when the mean score of ``better`` (one value per seed) is above ``worse``'s minus ``margin``; with
    several seeds each, a sign claim (no margin) or a miss by less than 2 standard errors is seed noise."""
    diff = statistics.fmean(better) - statistics.fmean(worse)
    if margin and diff >= -margin:
        return f"**held** ({diff:+.2f} pt)"
    if len(better) > 1 and len(worse) > 1:
        se = (statistics.variance(better) / len(better) + statistics.variance(worse) / len(worse)) ** 0.5
        if abs(diff) < 2 * se:
            return f"within seed noise ({diff:+.2f} pt, 2 SE = {2 * se:.2f})"
    return f"**held** ({diff:+.2f} pt)" if diff >= -margin else f"**did not hold** ({diff:+.2f} pt)"
