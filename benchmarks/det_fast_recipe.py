"""Issue 23 aim: the fast detection recipe's val mAP on the scenes after about 10 minutes on 2 cores.

Trains ``ssdlite_mobilenet_v2_x1_0`` with the default ``fast_detection`` recipe (as
``mobilecnn.train.config.RECIPES`` holds it when the script runs: its description and the run's resolved
settings are written into the JSON and the Markdown) on the default Fashion-MNIST detection scenes (2,000 train
/ 500 val images of 128 px), evaluating the whole val set (COCO box mAP and AP50) after every epoch, and records
the curve: wall-clock minutes (training only, and training + validation) against val mAP.

How many epochs: ``--epochs N``, or ``--minutes M`` (default 10) for a budget. With a budget a probe first trains
a throwaway run of the same settings for ``--probe-steps`` steps and validates it once on the whole val set; from
its step times (the median gap between consecutive steps after the first two; the first step's extra time, the
loader starting, counted once per epoch) and its validation time (with the checkpoint written after it) it picks
the most whole epochs whose training and validations fit in M minutes (at least 1). The recipe's schedule is set
for that many epochs, so it ends at the budget (as well as the probe predicts it: the JSON records the real wall
time); the probe's time is not part of the budget and is recorded.

    python benchmarks/det_fast_recipe.py [--minutes 10 | --epochs N] [--threads 2]
        [--out benchmarks/results/det_fast_recipe.json]

Writes the JSON, a Markdown table beside it and ``docs/images/det_fast_recipe.png`` (``--figure``: val mAP and
AP50 against wall-clock minutes).

Measurement (idle machine; about 11 min on 2 cores: the probe ~0.5 min, then the 10-minute budget)::

    .venv/bin/python benchmarks/det_fast_recipe.py --minutes 10 --threads 2

Smoke run (shows it works; not for the results folder or docs/images)::

    .venv/bin/python benchmarks/det_fast_recipe.py --minutes 0.3 --probe-steps 3 --subset 32 --val-subset 16 \
        --out /tmp/det_fast_smoke.json --figure /tmp/det_fast_smoke.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mobilecnn.deploy.timing import machine_info  # noqa: E402
from mobilecnn.files import atomic_write, atomic_write_text  # noqa: E402
from mobilecnn.train import RECIPES, TrainConfig, train  # noqa: E402

MODEL = "ssdlite_mobilenet_v2_x1_0"


def config(args: argparse.Namespace, out: Path, epochs: float, max_steps: int | None = None) -> TrainConfig:
    return TrainConfig(model=MODEL, data="scenes", out=str(out), epochs=epochs, seed=args.seed, threads=args.threads,
                       subset=args.subset, val_subset=args.val_subset, max_steps=max_steps)


def probe(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Seconds per training step and per validation of these settings, from a throwaway run (module docstring)."""
    stamps: list[float] = []
    info: dict[str, Any] = {}

    def on_event(event: str, data: dict) -> None:
        if event == "start":
            info["steps_per_epoch"] = data["steps_per_epoch"]
            stamps.append(time.perf_counter())
        elif event == "step":
            stamps.append(time.perf_counter())
        elif event == "epoch":
            info["validation_s"] = time.perf_counter() - stamps[-1]

    started = time.perf_counter()
    train(config(args, tmp / "probe", 1, args.probe_steps), callback=on_event)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]  # gaps[0]: the start to the first step's end
    step_s = statistics.median(gaps[2:] or gaps)
    # the first step of an epoch also waits for the loader's workers to start and fill: once per epoch
    info.update(steps=len(gaps), step_s=step_s, epoch_start_s=max(0.0, gaps[0] - step_s),
                wall_s=time.perf_counter() - started)
    info["epoch_s"] = info["epoch_start_s"] + info["steps_per_epoch"] * step_s
    return info


def plot(curve: list[dict], threads: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    minutes = [p["wall_min"] for p in curve]  # measured points only (no assumed origin)
    ax.plot(minutes, [p["val_mAP"] for p in curve], "o-", label="val mAP@[.5:.95]")
    ax.plot(minutes, [p["val_AP50"] for p in curve], "s--", label="val AP50")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("wall-clock minutes (training + validation after each epoch)")
    ax.set_ylabel("COCO box AP (%)")
    ax.set_title(f"fast_detection: {MODEL} on the scenes, {threads} threads", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget; the epochs are picked by a probe")
    how.add_argument("--epochs", type=int, default=None, help="train this many epochs instead (no probe)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-steps", type=int, default=12, help="training steps of the probe run")
    parser.add_argument("--subset", type=int, default=None, help="train images (smoke runs only)")
    parser.add_argument("--val-subset", type=int, default=None, help="val images (smoke runs only)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/det_fast_recipe.json"))
    parser.add_argument("--figure", type=Path, default=Path("docs/images/det_fast_recipe.png"))
    args = parser.parse_args(argv)
    start_load = os.getloadavg()
    curve: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        measured = None
        epochs = args.epochs
        if epochs is None:
            measured = probe(args, Path(tmp))
            epochs = max(1, math.floor(args.minutes * 60 / (measured["epoch_s"] + measured["validation_s"])))
            print(f"probe: {measured['step_s']:.3f} s/step x {measured['steps_per_epoch']} steps/epoch + "
                  f"{measured['validation_s']:.1f} s validation -> {epochs} epoch(s) in {args.minutes:g} min",
                  flush=True)
        started = time.perf_counter()

        def on_event(event: str, info: dict) -> None:
            if event == "epoch":
                curve.append({"epoch": info["epoch"], "wall_min": (time.perf_counter() - started) / 60,
                              "train_min": info["train_time_s"] / 60, "val_mAP": info.get("val_mAP"),
                              "val_AP50": info.get("val_AP50"), "val_loss": info.get("val_loss"),
                              "train_loss": info["train_loss"]})

        run = Path(tmp) / "run"
        result = train(config(args, run, epochs), callback=on_event)
        wall_min = (time.perf_counter() - started) / 60
        recorded = json.loads((run / "config.json").read_text())
    train_total = 0.0
    for point in curve:  # train_time_s restarts every epoch: the cumulative training minutes
        train_total += point["train_min"]
        point["train_min"] = train_total
    plot(curve, args.threads, args.figure)
    data = recorded["data"]
    payload = {"model": MODEL, "data": f"scenes ({data['train_size']} train / {data['val_size']} val, "
                                      f"{data['resolution']} px input)",
               "minutes": None if args.epochs is not None else args.minutes, "epochs": epochs, "probe": measured,
               "threads": args.threads, "seed": args.seed,
               "recipe": RECIPES[recorded["settings"]["recipe"]].description, "settings": recorded["settings"],
               "curve": curve,
               "final_val_mAP": result.get("val_mAP"), "final_val_AP50": result.get("val_AP50"), "wall_min": wall_min,
               "loadavg_start": start_load, "loadavg_end": os.getloadavg(), "machine": machine_info()}
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    budget = f"--epochs {epochs}" if args.epochs is not None else f"--minutes {args.minutes:g}"
    lines = [f"# Fast detection recipe: {MODEL} on the scenes, {args.threads} threads", "",
             f"{payload['machine'].get('cpu', '')}; load average at start {start_load[0]:.2f}, at end "
             f"{payload['loadavg_end'][0]:.2f}. Command: `python benchmarks/det_fast_recipe.py {budget} "
             f"--threads {args.threads}`"
             + (f" ({epochs} epochs picked by the probe: {measured['step_s']:.3f} s/step, "
                f"{measured['validation_s']:.1f} s/validation)" if measured else "") + ".", "",
             f"Data: {payload['data']}; recipe {recorded['settings']['recipe']} ({payload['recipe']}); lr "
             f"{recorded['settings']['lr']:g}, {recorded['settings']['steps_per_epoch']} steps/epoch.", "",
             "| epoch | training (min) | wall incl. validation (min) | val mAP (%) | val AP50 (%) | val loss "
             "| train loss |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for p in curve:
        lines.append(f"| {p['epoch']:g} | {p['train_min']:.2f} | {p['wall_min']:.2f} | {_pct(p['val_mAP'])} | "
                     f"{_pct(p['val_AP50'])} | {_pct(p['val_loss'])} | {p['train_loss']:.3f} |")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
