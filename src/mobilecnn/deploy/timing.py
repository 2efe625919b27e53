"""Latency measurement shared by ``bench`` and ``export --format auto``.

* :func:`time_callable`: one callable, warm-up then timed calls (``bench``'s rows);
* :func:`paired_rounds` / :func:`paired_times`: several candidates timed *paired*, in rounds of short
  bursts in a freshly shuffled order, so a background load hits all of them alike; ratios between them
  come with a bootstrap 95% interval over rounds (:func:`bootstrap_ratio`);
* :func:`machine_info`: where the numbers come from (CPU, versions, load average).

Medians moved +-30% between passes on a shared VM: only ratios measured in one run compare.
"""

from __future__ import annotations

import os
import platform
import random
import resource
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from .backends import cpu_flags
from .formats import FORMATS
from .workers import ChildCrashed

__all__ = ["time_callable", "paired_rounds", "paired_times", "bootstrap_ratio", "machine_info", "machine_label"]


def time_callable(fn: Callable[[], Any], *, warmup: int = 5, repeats: int = 30, min_time_s: float = 1.0,
                  max_runs: int = 10_000) -> list[float]:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then at least ``repeats`` timed calls and
    at least ``min_time_s`` of timed calls (at most ``max_runs``)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < repeats or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def _busy_s() -> float:
    """CPU seconds the whole machine has spent busy (``/proc/stat``; 0 where there is none)."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _self_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def paired_rounds(bursts: dict[str, Callable[[int], list[float]]], *, seconds: float = 2.0, min_rounds: int = 5,
                  max_rounds: int = 200, calls_per_round: int | None = None, burst_s: float = 0.03,
                  max_other_load: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Paired latency: each round asks every ``burst(n)`` (seconds of ``n`` calls) once, in a shuffled order.

    Each candidate's burst lasts about ``burst_s`` (5 to 50 calls; ``calls_per_round`` fixes it for all):
    the first calls after another process ran find the caches cold, so short bursts read slow
    (docs/deployment.md), and the fast candidates, those that decide, get the longest bursts.

    Returns ``{"rounds", "calls_per_round": {name: n}, "median_ms": {name: ...}, "per_round_ms": {name: [...]},
    "failed": {name: why}}``; a candidate's latency is the median over rounds of its per-round median.
    A burst that raises :class:`ChildCrashed` drops that candidate (its reason lands in ``failed``) and
    the others go on, their rounds still aligned. The budget is about ``seconds`` per candidate
    (``min_rounds == max_rounds`` fixes the count instead).

    Idle gating (in-process bursts only, :func:`paired_times`: another process's CPU time counts as load):
    with ``max_other_load`` a round in which other processes used more than that many cores is dropped,
    since it slowed whichever candidates it happened to hit; ``"dropped"`` counts them and ``"other_load"``
    lists every round's load.
    """
    live = list(bursts)
    failed: dict[str, str] = {}

    def run(name: str, n: int) -> list[float] | None:
        try:
            return bursts[name](n)
        except ChildCrashed as exc:
            failed[name] = str(exc)
            live.remove(name)
            return None

    probe = {}
    for name in list(live):
        out = run(name, 4)  # the first calls compile and allocate; the last one is the probe
        if out is not None:
            probe[name] = max(out[-1], 1e-6)
    if not live:
        return {"rounds": 0, "calls_per_round": {}, "median_ms": {}, "per_round_ms": {}, "failed": failed}
    per_round = {n: calls_per_round or max(5, min(50, round(burst_s / probe[n]))) for n in live}
    round_cost = sum(probe[n] * per_round[n] for n in live)
    rounds = int(min(max_rounds, max(min_rounds, seconds * len(live) / max(round_cost, 1e-6))))
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {n: [] for n in live}
    loads, dropped = [], 0
    for _ in range(rounds):
        order = live[:]
        rng.shuffle(order)
        busy, own, start = _busy_s(), _self_s(), time.perf_counter()
        this = {}
        for name in order:
            times = run(name, per_round[name])
            if times is not None:
                this[name] = 1e3 * statistics.median(times)
        wall = max(time.perf_counter() - start, 1e-9)
        loads.append(max(0.0, (_busy_s() - busy) - (_self_s() - own)) / wall)
        if max_other_load is not None and loads[-1] > max_other_load:
            dropped += 1
            continue
        for name, value in this.items():
            samples[name].append(value)
    samples = {n: v for n, v in samples.items() if n in live and v}
    return {"rounds": rounds, "dropped": dropped, "other_load": loads,
            "calls_per_round": {n: per_round[n] for n in live},
            "median_ms": {n: statistics.median(v) for n, v in samples.items()}, "per_round_ms": samples,
            "failed": failed}


def paired_times(fns: dict[str, Callable[[], Any]], **options: Any) -> dict[str, Any]:
    """:func:`paired_rounds` for in-process callables (each ``fn()`` is one call)."""
    def burst_of(fn: Callable[[], Any]) -> Callable[[int], list[float]]:
        def burst(n: int) -> list[float]:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return times
        return burst
    return paired_rounds({name: burst_of(fn) for name, fn in fns.items()}, **options)


def bootstrap_ratio(a: list[float], b: list[float], *, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of the paired per-round ratios a/b with a bootstrap 95% interval."""
    r = np.asarray(a) / np.asarray(b)
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(r, size=(reps, len(r)), replace=True), axis=1)
    return float(np.median(r)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def machine_label() -> str:
    """The CPU a timing was taken on, in one line: its model name, logical CPUs and native bf16 instructions
    (machines sold under one name differ by them, and in speed: timings from two labels do not compare)."""
    cpu = machine_info().get("cpu") or platform.processor() or "unknown CPU"
    bf16 = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return f"{cpu}, {os.cpu_count()} CPUs" + (f", {'+'.join(bf16)}" if bf16 else ", no bf16 instructions")


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU, versions, load average now."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:
        pass
    for mod in sorted({f.requires[0].split(".")[0] for f in FORMATS.values() if f.requires}):
        try:
            info[mod] = version(mod)
        except Exception:
            info[mod] = None
    return info
