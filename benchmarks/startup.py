"""Start-up time of the command line against ``python -c "import torch"``, measured interleaved.

Each round runs every command once, in a fresh process, in a shuffled order, beside ``import torch`` itself; a
command's overhead is its time minus ``import torch``'s in the same round (median over rounds), so a change of
load during the run shifts both. Aims (issue 25): ``mobilecnn --help`` under 1 s (it loads no torch), every other
command within 0.5 s of ``import torch``.

    .venv/bin/python benchmarks/startup.py --rounds 7 --out benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS: dict[str, list[str]] = {
    "import torch": [sys.executable, "-c", "import torch"],
    "mobilecnn --help": [str(BIN / "mobilecnn"), "--help"],
    "mobilecnn list": [str(BIN / "mobilecnn"), "list"],
    "mobilecnn profile mobilenet_v2_x1_0": [str(BIN / "mobilecnn"), "profile", "mobilenet_v2_x1_0", "--json"],
    **{f"mobilecnn {c} --help": [str(BIN / "mobilecnn"), *c.split(), "--help"]
       for c in ("profile", "tables", "train", "eval", "reproduce", "export", "bench", "predict", "data scenes",
                 "weights import", "weights get")},
    "mobilecnn export (missing run)": [str(BIN / "mobilecnn"), "export", "/nonexistent/run", "--format", "onnx"],
}


def _time(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def measure(rounds: int, seed: int = 0) -> dict[str, dict[str, float]]:
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {k: [] for k in COMMANDS}
    over: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(rounds):
        order = list(COMMANDS)
        rng.shuffle(order)
        this = {k: _time(COMMANDS[k]) for k in order}
        for k, v in this.items():
            samples[k].append(v)
            over[k].append(v - this["import torch"])
    return {k: {"median_s": statistics.median(samples[k]), "min_s": min(samples[k]),
                "over_import_torch_s": statistics.median(over[k])} for k in COMMANDS}


def _markdown(result: dict) -> str:
    lines = [f"# Start-up of the command line ({result['rounds']} interleaved rounds)", "",
             f"Machine: {result['machine']}; load average before: {result['load_before']}.", "",
             "Aims: `mobilecnn --help` under 1 s; every other command within 0.5 s of `import torch` (its median "
             "overhead over `import torch` in the same round).", "",
             "| command | median (s) | min (s) | over `import torch` (s) | aim |", "|---|---:|---:|---:|---|"]
    for k, r in result["commands"].items():
        if k == "import torch":
            aim = "-"
        elif k == "mobilecnn --help":
            aim = "held" if r["median_s"] < 1.0 else "missed"
        else:
            aim = "held" if r["over_import_torch_s"] <= 0.5 else "missed"
        lines.append(f"| `{k}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['over_import_torch_s']:+.2f} | {aim} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/startup.json")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    result = {"rounds": args.rounds, "load_before": round(load, 2),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
                         f"{platform.python_version()}",
              "commands": measure(args.rounds)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
