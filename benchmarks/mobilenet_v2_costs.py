"""The timing claims of the MobileNetV2 section at the full plan's settings, without its training: the
depthwise-separable cost (every MobileNet V1 layer shape in every installed runtime), ShuffleNet 0.5x vs AlexNet
and Table 4's latency (each network's best file over every installed runtime x precision, timed paired).

These are the parts of ``mobilecnn reproduce --full --task mobilenet_v2`` that measure untrained networks, so
they can be run and committed on their own; Figure 6 and Table 4's accuracy need the full plan's training.

    .venv/bin/python benchmarks/mobilenet_v2_costs.py --out benchmarks/results/mobilenet_v2_costs.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from mobilecnn.reproduce_alexnet import ALEXNET_FULL, alexnet_markdown, run_alexnet
from mobilecnn.reproduce_cost import COST_FULL, cost_markdown, run_cost
from mobilecnn.reproduce_mobilenet_v2 import V2_FULL, run_table4, table4_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/mobilenet_v2_costs.json")
    parser.add_argument("--parts", nargs="+", default=["cost", "alexnet", "table4"],
                        choices=["cost", "alexnet", "table4"])
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def say(event: str, info: dict) -> None:
        print(f"{time.perf_counter() - started:7.1f} s  {event} {str(info)[:100]}", flush=True)

    result: dict = {"load_before": os.getloadavg()}
    texts = []
    if "cost" in args.parts:
        result["cost"] = run_cost(COST_FULL, say)
        texts.append(cost_markdown(result["cost"]))
    if "alexnet" in args.parts:
        result["alexnet"] = run_alexnet(ALEXNET_FULL, say)
        texts.append(alexnet_markdown(result["alexnet"]))
    if "table4" in args.parts:
        result["table4"] = run_table4(V2_FULL, {}, say)
        texts.append(table4_markdown(result["table4"], V2_FULL))
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    head = (f"# MobileNetV2 section: the timing claims at the full plan's settings\n\nRegenerate: `.venv/bin/python "
            f"benchmarks/mobilenet_v2_costs.py --out {out}` ({result['elapsed_s'] / 60:.1f} min; load average "
            f"before {result['load_before'][0]:.2f}). Table 4's top-1 lines need the full plan's training and say "
            "so.\n\n")
    out.with_suffix(".md").write_text(head + "\n\n".join(texts) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":  # auto_export's worker processes re-import the main module
    main()
