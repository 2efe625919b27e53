"""``mobilecnn bench``'s rows and outputs: each row, the rows as JSON (with where they were measured),
Markdown and a PNG."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..files import atomic_write_text
from .timing import machine_info

__all__ = ["BenchRow", "bench_markdown", "check_output_dir", "write_bench_outputs"]


@dataclass
class BenchRow:
    """One (model, backend, threads, batch) measurement; times in ms, ``macs`` per image."""

    model: str
    backend: str
    threads: int
    batch: int
    resolution: int
    median_ms: float | None
    p90_ms: float | None
    min_ms: float | None
    throughput_img_s: float | None
    macs: int
    params: int
    loadavg: tuple[float, ...] | None = None
    runs: int = 0
    ratio_to_reference: float | None = None
    reference: bool = False
    accuracy: float | None = None
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"  # where the eager/compiled rows ran (exported files always run on the CPU)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def bench_markdown(rows: Sequence[BenchRow]) -> str:
    """The rows as a Markdown table (times in ms, MACs in millions)."""
    has_acc = any(r.accuracy is not None for r in rows)
    head = ["model", "backend", "threads", "batch", "res", "median ms", "p90 ms", "min ms", "img/s", "MMACs",
            "params (M)", "x ref", "load avg"] + (["accuracy"] if has_acc else []) + ["notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.model + (" (ref)" if r.reference else ""), r.backend,
                 str(r.threads), str(r.batch), str(r.resolution), _fmt(r.median_ms), _fmt(r.p90_ms), _fmt(r.min_ms),
                 _fmt(r.throughput_img_s, 1), f"{r.macs / 1e6:.1f}", f"{r.params / 1e6:.2f}",
                 _fmt(r.ratio_to_reference, 3), "/".join(f"{v:.2f}" for v in r.loadavg) if r.loadavg else "-"]
        if has_acc:
            cells.append(_fmt(r.accuracy))
        cells.append("; ".join(r.notes).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_output_dir(out_dir: str | Path) -> Path:
    """``out_dir`` must be a directory (or not exist yet) that can be written; checked before any work."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a directory for bench.json, bench.md and bench.png")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {probe} is not writable")
    return out


def write_bench_outputs(rows: Sequence[BenchRow], out_dir: str | Path, *, stem: str = "bench",
                        meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<stem>.json`` (rows + machine info), ``<stem>.md`` (table) and ``<stem>.png`` (latency vs
    MACs; accuracy vs latency when rows carry ``accuracy``) into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {**machine_info(), **(meta or {})}
    payload = {"meta": info, "rows": [r.to_dict() for r in rows]}
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    atomic_write_text(paths["json"], json.dumps(payload, indent=1, default=_json_default) + "\n")
    header = (f"# Benchmark ({info.get('cpu') or 'CPU'}, torch {info['torch']}, load average at write "
              f"{'/'.join(f'{v:.2f}' for v in info['loadavg'])})\n\n"
              "Times per batch; `x ref` = median / torchvision mobilenet_v2 eager (BN unfolded) median at the "
              "same threads and batch.\n\n")
    atomic_write_text(paths["md"], header + bench_markdown(rows))
    from ..plots import plot_bench  # matplotlib only for the commands that draw

    plot_bench(rows, paths["png"])
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
