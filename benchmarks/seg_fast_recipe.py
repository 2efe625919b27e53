"""Issue 22 aim: the fast segmentation recipe's mIoU on the scenes val set after about 5 minutes on 2 cores.

Trains ``deeplabv3_mobilenet_v2_x1_0`` (OS 16, no ASPP) with the default ``fast_segmentation`` recipe on the
default Fashion-MNIST scenes (2,000 train / 500 val, 128 px) for ``--epochs`` epochs (7: the poly schedule ends
near the 5-minute mark on an idle 2-core EPYC), evaluating the whole val set after every epoch, and records the
curve: wall-clock minutes (training only, and training + validation) against val mIoU.

    python benchmarks/seg_fast_recipe.py [--epochs 7] [--threads 2] [--out benchmarks/results/seg_fast_recipe.json]

Writes the JSON, a Markdown table beside it and ``docs/images/seg_fast_recipe.png`` (the run's curves).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from mobilecnn.deploy.timing import machine_info
from mobilecnn.files import atomic_write_text
from mobilecnn.train import TrainConfig, train

MODEL = "deeplabv3_mobilenet_v2_x1_0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/seg_fast_recipe.json"))
    parser.add_argument("--figure", type=Path, default=Path("docs/images/seg_fast_recipe.png"))
    args = parser.parse_args()
    start_load = os.getloadavg()
    started = time.perf_counter()
    curve: list[dict] = []

    def on_event(event: str, info: dict) -> None:
        if event == "epoch":
            curve.append({"epoch": info["epoch"], "wall_min": (time.perf_counter() - started) / 60,
                          "train_min": info["train_time_s"] / 60, "val_miou": info.get("val_miou"),
                          "val_pixel_accuracy": info.get("val_pixel_accuracy"), "train_loss": info["train_loss"]})

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        result = train(TrainConfig(model=MODEL, data="scenes", out=str(run), epochs=args.epochs, seed=args.seed,
                                   threads=args.threads), callback=on_event)
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "curves.png", args.figure)
        settings = json.loads((run / "config.json").read_text())["settings"]
    train_total = 0.0
    for point in curve:  # train_time_s restarts every epoch: the cumulative training minutes
        train_total += point["train_min"]
        point["train_min"] = train_total
    payload = {"model": MODEL, "data": "scenes (2000 train / 500 val, 128 px)", "epochs": args.epochs,
               "threads": args.threads, "seed": args.seed, "settings": settings, "curve": curve,
               "final_val_miou": result.get("val_miou"), "wall_min": (time.perf_counter() - started) / 60,
               "loadavg_start": start_load, "loadavg_end": os.getloadavg(), "machine": machine_info()}
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    lines = [f"# Fast segmentation recipe: {MODEL} on the scenes, {args.threads} threads", "",
             f"{payload['machine'].get('cpu', '')}; load average at start {start_load[0]:.2f}, at end "
             f"{payload['loadavg_end'][0]:.2f}. Command: `python benchmarks/seg_fast_recipe.py "
             f"--epochs {args.epochs:g} --threads {args.threads}`.", "",
             "| epoch | training (min) | wall incl. validation (min) | val mIoU (%) | val pixel acc. (%) "
             "| train loss |",
             "|---:|---:|---:|---:|---:|---:|"]
    for p in curve:
        lines.append(f"| {p['epoch']:g} | {p['train_min']:.2f} | {p['wall_min']:.2f} | {p['val_miou']:.2f} | "
                     f"{p['val_pixel_accuracy']:.2f} | {p['train_loss']:.3f} |")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
