"""Segmentation training speed, paired against a plain torchvision loop (issue 22 aim).

Aim: training img/s of mobilecnn's ``deeplabv3_mobilenet_v2_x1_0`` at least 1.0x a plain training loop over
torchvision's DeepLabV3 assembled from torchvision's ``mobilenet_v2`` with the same head (same batch,
resolution and threads).

The two models (same architecture; parameter counts and every layer's shape are asserted equal before timing):

* mobilecnn: ``create_model("deeplabv3_mobilenet_v2_x1_0", num_classes=21, small_input=False)`` then, as the
  trainer does (``train/loop.py``), ``.to(memory_format=torch.channels_last)`` and channels_last inputs:
  MobileNetV2 cut at its 320-channel output (no 1280 conv), dilated to output stride 16 by TF-slim's rule;
  head = image pooling (GAP, 1x1 conv 256 BN ReLU, upsample) + 1x1 conv 256 BN ReLU, concat, 1x1 projection 256
  BN ReLU, dropout 0.1, 1x1 logits; bilinear upsampling to the input.
* torchvision: ``torchvision.models.mobilenet_v2(weights=None).features`` taken up to block 17 (the 320-channel
  block) by ``torchvision.models._utils.IntermediateLayerGetter(features, {"17": "out"})``, as torchvision's
  ``deeplabv3_mobilenet_v3_large`` takes its backbone, so the 1280 conv is left out; output stride 16 by
  dilation: the last stride-2 stage's first depthwise conv (block 14) set to stride 1, the depthwise convs
  after it (blocks 15-17) to dilation 2, padding 2 (TF-slim's rule, as ours; torchvision's own MobileNetV3
  ``dilated=True`` also dilates the de-strided block itself, which costs the same but is another layer).
  Head: ``torchvision.models.segmentation.deeplabv3.ASPP(320, atrous_rates=(), 256)`` (a 1x1 branch and the
  pooling branch, concatenated in that order; 1x1 projection 256 BN ReLU; its dropout set from 0.5 to 0.1)
  and a 1x1 logits conv with bias, in ``torchvision.models.segmentation.DeepLabV3`` (which upsamples
  bilinearly to the input). torchvision's ``DeepLabHead`` is not used: it adds a 3x3 conv 256 after ASPP.

One timed unit = one training step on the same fixed batch for both: forward, per-pixel cross-entropy with
``ignore_index=255`` on random-but-fixed masks (about 10% of pixels 255), backward, SGD (momentum 0.9) step,
``zero_grad``; both models in train mode, the same torch threads, channels_last for both or neither. The two
steps are interleaved with :func:`mobilecnn.deploy.timing.paired_times`: rounds of ``--calls`` steps each in
a freshly shuffled order, a round dropped when other processes used more than ``--max-other-load`` cores
during it; the ratio ours/torchvision (img/s) is the median of per-round ratios with a bootstrap 95% interval.

Writes ``benchmarks/results/seg_train_speed.json`` and ``.md`` next to it (``--out``).

Measurement (idle machine; about 3 min on 2 cores)::

    .venv/bin/python benchmarks/seg_train_speed.py --threads 2 --batch 8 --resolution 256 --rounds 60 --calls 3

Smoke run (shows it works; not for the results folder)::

    .venv/bin/python benchmarks/seg_train_speed.py --rounds 2 --calls 1 --warmup 1 --resolution 128 --batch 4 \
        --max-other-load 100 --out /tmp/seg_smoke.json

Usage: ``python benchmarks/seg_train_speed.py [--quick] [--threads N] [--batch B] [--resolution R] [--rounds N]
[--calls N] [--warmup N] [--max-other-load L] [--[no-]channels-last] [--num-classes C] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.segmentation import DeepLabV3 as TVDeepLabV3
from torchvision.models.segmentation.deeplabv3 import ASPP

from mobilecnn import create_model
from mobilecnn.deploy.timing import bootstrap_ratio, machine_info, paired_times
from mobilecnn.files import atomic_write_text

MODEL = "deeplabv3_mobilenet_v2_x1_0"
OURS, PLAIN = "mobilecnn deeplabv3_mobilenet_v2_x1_0", "torchvision DeepLabV3(mobilenet_v2)"
AIM = 1.0
IGNORE_INDEX = 255
HEAD_DROPOUT = 0.1


# ------------------------------------------------------------------------------------- the two models
def torchvision_deeplab(num_classes: int) -> nn.Module:
    """torchvision's DeepLabV3 on torchvision's MobileNetV2 (module docstring): OS 16, MNV2* head."""
    features = torchvision.models.mobilenet_v2(weights=None).features
    # blocks 1-17 are InvertedResiduals; 14-16: the c=160 stage (first one stride 2); 17: c=320; 18: the 1280 conv
    depthwise = {i: _depthwise(b) for i, b in enumerate(features) if isinstance(b, InvertedResidual)}
    last_stage = [i for i, dw in depthwise.items() if dw.stride == (2, 2)][-1]
    assert last_stage == 14 and max(depthwise) == 17, (last_stage, max(depthwise))
    depthwise[last_stage].stride = (1, 1)  # TF-slim: the de-strided block keeps rate 1
    for i in range(last_stage + 1, 18):
        depthwise[i].dilation, depthwise[i].padding = (2, 2), (2, 2)
    backbone = IntermediateLayerGetter(features, return_layers={"17": "out"})  # stops after block 17
    aspp = ASPP(320, atrous_rates=(), out_channels=256)  # [1x1 branch, pooling branch] -> project
    dropout = aspp.project[-1]
    assert isinstance(dropout, nn.Dropout)
    dropout.p = HEAD_DROPOUT
    classifier = nn.Sequential(aspp, nn.Conv2d(256, num_classes, 1))
    return TVDeepLabV3(backbone, classifier, aux_classifier=None)


def _depthwise(block: nn.Module) -> nn.Conv2d:
    """The 3x3 depthwise conv of a torchvision InvertedResidual."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(convs) == 1
    return convs[0]


def ours_deeplab(num_classes: int) -> nn.Module:
    return create_model(MODEL, num_classes=num_classes, small_input=False)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer(m: nn.Module) -> tuple | None:
    if isinstance(m, nn.Conv2d):
        return ("conv", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.dilation, m.padding, m.groups,
                m.bias is not None)
    if isinstance(m, nn.BatchNorm2d):
        return ("bn", m.num_features, m.eps)
    if isinstance(m, nn.Dropout):
        return ("dropout", m.p)
    if isinstance(m, (nn.ReLU, nn.ReLU6)):
        return (type(m).__name__,)
    return None


def layers(model: nn.Module) -> list[tuple]:
    return [sig for m in model.modules() if (sig := _layer(m)) is not None]


def _child(model: nn.Module, name: str) -> nn.Module:
    child = getattr(model, name)
    assert isinstance(child, nn.Module)
    return child


def check_same_architecture(ours: nn.Module, plain: nn.Module) -> dict:
    """Equal parameter counts, the same backbone layers in the same order, the same head layers (any order)."""
    counts = {OURS: n_params(ours), PLAIN: n_params(plain)}
    print(f"parameters: {OURS}: {counts[OURS]:,}; {PLAIN}: {counts[PLAIN]:,}", flush=True)
    assert counts[OURS] == counts[PLAIN], counts
    ours_bb, plain_bb = layers(_child(ours, "backbone")), layers(_child(plain, "backbone"))
    assert ours_bb == plain_bb, next(((i, a, b) for i, (a, b) in enumerate(zip(ours_bb, plain_bb)) if a != b),
                                     (len(ours_bb), len(plain_bb)))
    ours_head, plain_head = Counter(layers(_child(ours, "head"))), Counter(layers(_child(plain, "classifier")))
    # the head's ReLU: ours in place, torchvision's not -- the same function
    assert ours_head == plain_head, (ours_head - plain_head, plain_head - ours_head)
    return {"parameters": counts, "backbone_layers": len(ours_bb), "head_layers": sum(ours_head.values())}


# ------------------------------------------------------------------------------------- one training step
def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 0.01) -> tuple[Callable[[], None],
                                                                                               list[float]]:
    """One SGD step (forward, CE ignore 255, backward, step, zero_grad) as a callable; also the last loss."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    last: list[float] = [float("nan")]

    def step() -> None:
        out = model(x)
        if isinstance(out, dict):
            out = out["out"]
        loss = F.cross_entropy(out, y, ignore_index=IGNORE_INDEX)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last[0] = float(loss.detach())

    return step, last


def batch(n: int, resolution: int, num_classes: int, channels_last: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, resolution, resolution, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (n, resolution, resolution), generator=g)
    y[torch.rand(y.shape, generator=g) < 0.1] = IGNORE_INDEX
    return x, y


# ------------------------------------------------------------------------------------- report
def markdown(result: dict) -> str:
    s, r = result["setting"], result["result"]
    m = result["machine"]
    lines = ["# seg_train_speed (issue 22): mobilecnn DeepLabv3 training vs a plain torchvision loop, paired", "",
             f"{m.get('cpu')}; torch {m.get('torch')}; {s['threads']} thread(s); batch {s['batch']}, "
             f"{s['resolution']} px, {s['num_classes']} classes, channels_last {'on' if s['channels_last'] else 'off'} "
             f"(both); {s['rounds']} rounds x {s['calls_per_round']} steps per model; rounds with other load > "
             f"{s['max_other_load']} core dropped ({r['rounds_dropped']} dropped); load average at start "
             f"{result['load_average_start']}, end {result['load_average_end']}."
             + (" **--quick run: too few rounds for final figures.**" if s["quick"] else ""), "",
             f"Same architecture: {result['architecture']['parameters'][OURS]:,} parameters each; "
             f"{result['architecture']['backbone_layers']} backbone layers equal in order, "
             f"{result['architecture']['head_layers']} head layers equal.", "",
             "| model | ms / step (median over rounds) | img/s |", "|---|---|---|"]
    for name in (OURS, PLAIN):
        ms = r["median_ms_per_step"].get(name)
        ips = r["img_per_s"].get(name)
        lines.append(f"| {name} | {'-' if ms is None else f'{ms:.1f}'} | {'-' if ips is None else f'{ips:.2f}'} |")
    lines.append("")
    v = r["ratio_ours_over_torchvision"]
    if v:
        lines += [f"Ratio ours / torchvision (img/s, paired per round): **{v[0]:.3f}** [95% CI {v[1]:.3f}, {v[2]:.3f}]",
                  "", f"Aim >= {AIM}x: {'held' if r['aim_held'] else 'NOT held'} (median); lower 95% bound "
                  f"{'>=' if r['aim_held_at_lower_95'] else '<'} {AIM}."]
    else:
        lines.append("No ratio: no round was kept.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both models)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (default 60, --quick 3)")
    parser.add_argument("--calls", type=int, default=3, help="training steps per model per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model before the rounds (the "
                        "timing also runs 4 untimed probe steps each)")
    parser.add_argument("--max-other-load", type=float, default=0.15, help="drop a round in which other processes "
                        "used more than this many cores")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels_last model and inputs for both (default on: mobilecnn's trainer default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "seg_train_speed.json"))
    args = parser.parse_args(argv)
    if args.batch < 2:
        parser.error("--batch must be >= 2 (the image-pooling BatchNorm sees one value per channel and image)")
    rounds = args.rounds or (3 if args.quick else 60)
    torch.set_num_threads(args.threads)
    result: dict = {"torch": torch.__version__, "torchvision": torchvision.__version__, "machine": machine_info(),
                    "threads": args.threads, "load_average_start": os.getloadavg()}

    torch.manual_seed(args.seed)
    ours = ours_deeplab(args.num_classes)
    plain = torchvision_deeplab(args.num_classes)
    result["architecture"] = check_same_architecture(ours, plain)
    if args.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
        plain = plain.to(memory_format=torch.channels_last)
    x, y = batch(args.batch, args.resolution, args.num_classes, args.channels_last, args.seed)
    with torch.no_grad():  # same output shape (and so the same output stride)
        ours.eval()
        plain.eval()
        assert ours(x).shape == plain(x)["out"].shape == (args.batch, args.num_classes, args.resolution,
                                                          args.resolution)
    steps = {OURS: train_step(ours, x, y), PLAIN: train_step(plain, x, y)}
    for _ in range(args.warmup):
        for fn, _last in steps.values():
            fn()
    t = paired_times({name: fn for name, (fn, _) in steps.items()}, min_rounds=rounds, max_rounds=rounds,
                     calls_per_round=args.calls, max_other_load=args.max_other_load, seed=args.seed)
    if t["failed"]:
        raise RuntimeError(f"timing failed: {t['failed']}")
    pr = {n: t["per_round_ms"].get(n, []) for n in (OURS, PLAIN)}
    med = {n: (statistics.median(v) if v else None) for n, v in pr.items()}
    ips = {n: (args.batch / (m / 1e3) if m else None) for n, m in med.items()}
    # img/s ratio ours/torchvision = per-round time ratio torchvision/ours
    ratio = list(bootstrap_ratio(pr[PLAIN], pr[OURS])) if pr[OURS] and pr[PLAIN] else None
    losses = {n: last[0] for n, (_, last) in steps.items()}
    result["setting"] = {"model": MODEL, "batch": args.batch, "resolution": args.resolution,
                         "num_classes": args.num_classes, "channels_last": args.channels_last,
                         "threads": args.threads, "rounds": rounds, "calls_per_round": args.calls,
                         "warmup": args.warmup, "max_other_load": args.max_other_load, "quick": args.quick,
                         "step": "forward, cross_entropy(ignore_index=255), backward, SGD(momentum=0.9).step, "
                                 "zero_grad(set_to_none=True); train mode; one fixed batch"}
    result["result"] = {
        "rounds_kept": rounds - t["dropped"], "rounds_dropped": t["dropped"],
        "other_load_median": statistics.median(t["other_load"]) if t["other_load"] else None,
        "median_ms_per_step": med, "img_per_s": {n: (round(v, 2) if v else None) for n, v in ips.items()},
        "ratio_ours_over_torchvision": ratio, "aim": AIM,
        "aim_held": bool(ratio and ratio[0] >= AIM), "aim_held_at_lower_95": bool(ratio and ratio[1] >= AIM),
        "last_loss": losses, "per_round_ms": pr,
    }
    result["load_average_end"] = os.getloadavg()
    summary = {k: v for k, v in result["result"].items() if k != "per_round_ms"}
    print(json.dumps(summary, indent=2), flush=True)
    if not all(v == v and abs(v) < float("inf") for v in losses.values()):
        print(f"warning: a loss is not finite: {losses}", file=sys.stderr)
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
