"""Channel shuffle's share of a ShuffleNet 1x g=3 forward (batch 1 and 32, NCHW and channels_last).

Two measurements, interleaved so machine noise hits both alike:

* isolated: every shuffle of the forward replayed on tensors of the same shapes and layout, timed
  alone, divided by the time of the whole forward;
* A/B: the forward with the shuffle against the same weights with the shuffle removed.

Aim (issue 2): under 5%. Usage: ``python benchmarks/shuffle_cost.py [--threads N] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from mobilecnn import create_model
from mobilecnn.files import atomic_write_text
from mobilecnn.layers import ChannelShuffle, channel_shuffle


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs (after warm-up)."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def measure(batch: int, channels_last: bool, resolution: int, repeats: int) -> dict:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model("shufflenet_v1_g3_x1_0").eval().to(memory_format=fmt)
    plain = create_model("shufflenet_v1_g3_x1_0", shuffle=False).eval().to(memory_format=fmt)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(batch, 3, resolution, resolution).contiguous(memory_format=fmt)
    captured: list[tuple[torch.Tensor, int]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: captured.append((inp[0].clone(memory_format=torch.preserve_format), mod.groups)))
             for m in model.modules() if isinstance(m, ChannelShuffle)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()

    def shuffles():
        for t, g in captured:
            channel_shuffle(t, g)

    rounds = {"forward": [], "forward_no_shuffle": [], "shuffles": []}
    with torch.no_grad():
        for _ in range(5):  # interleave the three measurements
            rounds["forward"].append(timed(lambda: model(x), repeats))
            rounds["forward_no_shuffle"].append(timed(lambda: plain(x), repeats))
            rounds["shuffles"].append(timed(shuffles, repeats))
    fwd = min(rounds["forward"])
    no_shuffle = min(rounds["forward_no_shuffle"])
    shuf = min(rounds["shuffles"])
    return {
        "batch": batch,
        "memory_format": "channels_last" if channels_last else "nchw",
        "shuffle_calls": len(captured),
        "forward_ms": round(fwd * 1e3, 3),
        "forward_without_shuffle_ms": round(no_shuffle * 1e3, 3),
        "shuffles_alone_ms": round(shuf * 1e3, 3),
        "share_isolated_percent": round(100 * shuf / fwd, 2),
        "share_ab_percent": round(100 * (fwd - no_shuffle) / fwd, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "shuffle_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(b, cl, args.resolution, args.repeats if b == 1 else max(3, args.repeats // 4))
            for b in (1, 32) for cl in (False, True)]
    result = {
        "benchmark": "channel shuffle share of shufflenet_v1_g3_x1_0 forward",
        "threads": args.threads,
        "resolution": args.resolution,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "aim_percent": 5.0,
        "rows": rows,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"{'batch':>5} {'format':>14} {'forward ms':>11} {'shuffles ms':>12} {'isolated %':>11} {'A/B %':>7}")
    for r in rows:
        print(f"{r['batch']:>5} {r['memory_format']:>14} {r['forward_ms']:>11.2f} {r['shuffles_alone_ms']:>12.3f} "
              f"{r['share_isolated_percent']:>11.2f} {r['share_ab_percent']:>7.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
