"""What the sections of ``mobilecnn reproduce`` share: a Fashion-MNIST classifier trained the same way by every
section that needs one; the batch-1 latency of a run's ONNX fp32 file in onnxruntime (1 thread, median, at the
side the run was trained at; every section); the latency of its best verified file (``export --format auto``:
every installed runtime x precision, verified, gated, timed); the best files of several untrained networks timed
against each other, paired (the cost claims and Table 4); and the verdict of a claim "variant A scores at least
variant B (minus a margin)" over seeds."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .deploy.auto import AutoConfig, auto_candidates, auto_export
from .deploy.bench import BenchSpec, benchmark
from .deploy.export import ExportConfig, ExportImages, export_model
from .deploy.formats import FORMATS, load_runtime
from .deploy.run_export import export_run
from .deploy.timing import paired_times
from .errors import MobileCNNError
from .plots import read_metrics
from .runs.layout import CONFIG_FILE, METRICS_FILE
from .runs.rundir import load_trained
from .train import TrainConfig, train

__all__ = ["AutoLatency", "auto_latency", "onnx_latency", "training_seconds", "verdict", "train_classifier",
           "FilesPlan", "best_files_paired"]

#: What a candidate that cannot be exported or timed raises: it becomes a row with the reason, not a crash.
_FAILURES = (MobileCNNError, ValueError, ImportError, RuntimeError, OSError)


def train_classifier(run_dir: str | Path, model: str, seed: int, options: dict[str, Any],
                     model_kwargs: dict[str, Any] | None = None,
                     notify: Callable[[str, dict], None] | None = None) -> dict[str, Any]:
    """Train ``model`` on Fashion-MNIST (32 px, small-input stem, the fast recipe) into ``run_dir`` with
    ``options`` (:class:`~mobilecnn.train.TrainConfig` fields: epochs, subset, batch_size, lr, ...); a finished run
    is resumed as it is. Checkpoints only at the end: these runs are short."""
    run_dir = Path(run_dir)
    cfg = TrainConfig(model=model, out=str(run_dir), seed=seed, checkpoint_every=10**9,
                      resume=(run_dir / CONFIG_FILE).exists(), model_kwargs=dict(model_kwargs or {}), **options)
    say = notify or (lambda event, info: None)
    return train(cfg, callback=lambda event, info: say("train:" + event, info))


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


@dataclass(frozen=True)
class FilesPlan:
    """How :func:`best_files_paired` finds each network's best file (``export --format auto`` among ``formats`` x
    ``precisions``, None: every installed one; ``seconds`` of timing per candidate) and times the best files
    against each other (``pair_seconds`` each), at batch 1 on ``threads`` threads, ``resolution`` px inputs; int8
    calibrated on ``calibration_images`` random images."""

    formats: tuple[str, ...] | None = None
    precisions: tuple[str, ...] | None = None
    seconds: float = 1.0
    pair_seconds: float = 2.0
    threads: int = 1
    calibration_images: int = 64
    resolution: int = 224


def _best_file(name: str, net: nn.Module, work: Path, images: ExportImages, plan: FilesPlan) -> dict[str, Any]:
    """``export --format auto`` of one untrained network (latency only): the kept file and every candidate's row."""
    candidates = [c for c in auto_candidates(list(plan.formats) if plan.formats is not None else None)
                  if plan.precisions is None or c[1] in plan.precisions]
    if len(candidates) == 1:  # nothing to choose: the one file, exported here (auto's worker processes cost ~15 s)
        return _only_file(name, net, work, images, plan, candidates[0])
    config = AutoConfig(threads=plan.threads, batch=1, seconds=plan.seconds, candidates=tuple(candidates),
                        check_accuracy=False, keep=True)
    try:
        found = auto_export(net, work / name, images, config, {"model": name})
    except _FAILURES as exc:
        return {"kept": None, "best": None, "why": f"{type(exc).__name__}: {str(exc)[:300]}", "candidates": []}
    rows = [{k: r.get(k) for k in ("candidate", "status", "latency_ms", "why") if r.get(k) is not None}
            for r in found["candidates"]]
    best = found["best"]
    return {"kept": found["kept"], "best": best["candidate"] if best else None,
            "best_latency_ms": best["latency_ms"] if best else None, "candidates": rows,
            "why": None if found["kept"] else "no candidate was verified and timed"}


def _only_file(name: str, net: nn.Module, work: Path, images: ExportImages, plan: FilesPlan,
               candidate: tuple[str, str]) -> dict[str, Any]:
    """The one candidate's file, exported and verified against PyTorch in this process (latency only)."""
    fmt, precision = candidate
    label = f"{FORMATS[fmt].runtime} {precision}"
    path = work / f"{name}{FORMATS[fmt].suffix}"
    try:
        given = images if precision != "fp32" else ExportImages(images.example, images.verify)
        export_model(net, path, given, ExportConfig(fmt, precision, threads=plan.threads, check_accuracy=False))
    except _FAILURES as exc:
        why = f"{type(exc).__name__}: {str(exc)[:300]}"
        return {"kept": None, "best": None, "why": why, "candidates": [{"candidate": label, "status": "failed",
                                                                       "why": why}]}
    return {"kept": str(path), "best": label, "best_latency_ms": None, "why": None,
            "candidates": [{"candidate": label, "status": "kept (the only candidate)"}]}


def best_files_paired(nets: dict[str, nn.Module], plan: FilesPlan,
                      notify: Callable[[str, dict], None] | None = None) -> dict[str, Any]:
    """Each network's best file (untrained: fp32 verified against PyTorch, bf16/int8 timed but not judged), then
    all the best files timed paired and interleaved. Returns ``{"models": {name: {best, best_latency_ms,
    candidates, why, paired_median_ms}}, "rounds", "per_round_ms": {name: [...]}}``; compare two networks with
    :func:`mobilecnn.deploy.timing.bootstrap_ratio` of their ``per_round_ms``."""
    say = notify or (lambda event, info: None)
    gen = torch.Generator().manual_seed(0)  # random-normal images: untrained networks, latency only
    side = plan.resolution
    images = ExportImages(*(torch.randn(n, 3, side, side, generator=gen)
                            for n in (1, 2, plan.calibration_images)))
    info: dict[str, dict[str, Any]] = {}
    saved = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="mobilecnn-best-files-") as tmp:
            for name, net in nets.items():
                say("best_file", {"model": name})
                info[name] = _best_file(name, net, Path(tmp), images, plan)
            kept = {n: i.pop("kept") for n, i in info.items()}  # the temporary folder is about to go
            runtimes = {n: load_runtime(path, threads=plan.threads, trusted=True) for n, path in kept.items() if path}
            if len(runtimes) < 2:
                return {"models": info, "rounds": 0, "per_round_ms": {}}
            x = images.verify[:1].numpy().copy()
            say("paired", {"files": {n: i["best"] for n, i in info.items()}})
            timing = paired_times({n: (lambda rt: lambda: rt(x))(rt) for n, rt in runtimes.items()},
                                  seconds=plan.pair_seconds)
    finally:
        torch.set_num_threads(saved)
    for name, ms in timing["median_ms"].items():
        info[name]["paired_median_ms"] = ms
    return {"models": info, "rounds": int(timing["rounds"]), "per_round_ms": dict(timing["per_round_ms"])}
