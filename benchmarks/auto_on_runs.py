"""Issue 15: does ``export --format auto`` return a verified file for every trained run of ``reproduce --quick``?

For every run directory under ``RUNS`` (default ``runs/demo/runs``, what ``make demo`` trains), this calls
:func:`mobilecnn.deploy.run_export.export_run` with ``fmt="auto"`` (every installed runtime x precision,
verified on real held-out Fashion-MNIST images with ``--max-drop``, timed, fastest kept) and records which
candidate was kept, its latency beside the fastest fp32 file, and every refusal with its reason.

Aim: a verified file for every model, none refused.

Writes ``benchmarks/results/auto_on_runs.{json,md}``.

Usage: ``python benchmarks/auto_on_runs.py [RUNS] [--threads T] [--max-drop P] [--seconds S] [--out-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from mobilecnn.deploy.run_export import export_run
from mobilecnn.files import atomic_write_text


def one_run(run: Path, work: Path, threads: int, max_drop: float, seconds: float) -> dict:
    t0 = time.time()
    result = export_run(str(run), "auto", out=str(work / run.name / "auto"), threads=threads, max_drop=max_drop,
                        seconds=seconds)
    rows = result["candidates"]
    best = result.get("best") or {}
    fp32 = [r for r in rows if r.get("precision") == "fp32" and "latency_ms" in r]
    fastest_fp32 = min(fp32, key=lambda r: r["latency_ms"]) if fp32 else None
    return {"run": run.name, "model": result.get("model"), "kept": best.get("candidate"),
            "kept_latency_ms": best.get("latency_ms"), "kept_top1": best.get("top1"), "kept_drop": best.get("drop"),
            "fastest_fp32": fastest_fp32["candidate"] if fastest_fp32 else None,
            "fastest_fp32_ms": fastest_fp32["latency_ms"] if fastest_fp32 else None,
            "refused": [{"candidate": r["candidate"], "why": r.get("why")} for r in rows if r["status"] == "refused"],
            "candidates": len(rows), "seconds": round(time.time() - t0, 1)}


def markdown(meta: dict, results: list[dict]) -> str:
    lines = ["# auto_on_runs (issue 15): `export --format auto` on the runs of `reproduce --quick`", "",
             f"{meta['cpu']}; {meta['threads']} thread(s), batch 1, max drop {meta['max_drop']} pt; load average "
             f"at start {meta['loadavg']}; runs from `{meta['runs']}`.", "",
             "| run | kept | latency (ms) | top-1 (drop) | fastest fp32 (ms) | refused | s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        acc = f"{r['kept_top1']:.2f} ({r['kept_drop']:+.2f})" if r.get("kept_top1") is not None else "-"
        lat = f"{r['kept_latency_ms']:.3f}" if r.get("kept_latency_ms") else "-"
        fp = f"{r['fastest_fp32']} {r['fastest_fp32_ms']:.3f}" if r.get("fastest_fp32") else "-"
        refused = "; ".join(f"{x['candidate']}: {(x['why'] or '')[:120]}" for x in r["refused"]) or "none"
        lines.append(f"| {r['run']} | {r['kept'] or 'NOTHING'} | {lat} | {acc} | {fp} | {refused.replace('|', '/')} | "
                     f"{r['seconds']} |")
    met = all(r["kept"] for r in results) and results
    none_refused = all(not r["refused"] for r in results)
    lines += ["", f"Aim: a verified file for every model: **{'met' if met else 'NOT met'}**; "
              f"no candidate refused: **{'yes' if none_refused else 'no'}**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=Path, default=Path("runs/demo/runs"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    runs = sorted(p for p in args.runs.iterdir() if (p / "config.json").is_file()) if args.runs.is_dir() else []
    if not runs:
        print(f"no runs under {args.runs}: run `make demo` first", file=sys.stderr)
        return 2
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    meta = {"cpu": cpu, "threads": args.threads, "max_drop": args.max_drop, "seconds": args.seconds,
            "runs": str(args.runs), "loadavg": open("/proc/loadavg").read().split()[:3]}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            results.append(one_run(run, Path(tmp), args.threads, args.max_drop, args.seconds))
            print(f"{run.name}: kept {results[-1]['kept']} in {results[-1]['seconds']} s", file=sys.stderr)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "auto_on_runs.json", json.dumps({"meta": meta, "results": results}, indent=2,
                                                                     default=str) + "\n")
    text = markdown(meta, results)
    atomic_write_text(args.out_dir / "auto_on_runs.md", text)
    print(text)
    return 0 if all(r["kept"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
