"""Issue 23 aims: the deployed SSDLite detector from ``export --format auto`` (decoding and NMS included) at most
0.55x the plain ONNX fp32 export with torchvision's post-processing, and MobileNetV2 SSDLite at most 0.74x
MobileNet V1 SSDLite (the paper's 200 vs 270 ms), batch 1, 1 thread, 320 px, paired on one machine.

The runs: ``--run-v2`` (a trained ``ssdlite_mobilenet_v2_x1_0``) and ``--run-v1`` (``ssdlite_mobilenet_v1_x1_0``),
else each is trained here for ``--train-steps`` steps (``mobilecnn.train.train``, default ``fast_detection``
recipe at ``--resolution`` 320 on the default scenes) into a scratch folder. A given file's network latency does
not depend on its weights (the same layers run whatever their values); the post-processing's work is bounded
by its caps (at most 100 candidates per class into NMS, 100 kept): an untrained head passes the 1e-8 score
threshold everywhere and fills them, a trained one may leave some classes fewer candidates, so its
post-processing can only be as costly or cheaper. What does depend on the weights is which file auto keeps,
through its bf16/int8 accuracy gate: on a run trained for a few steps both fp32 and int8
score an mAP near 0, the gate passes anything, and auto may keep an int8 file that a trained run's mAP check
would refuse. The JSON records the fp32 mAP the gate saw (``gate_fp32_map``) and the report says when it was
under 1 point; for the aims' final figures pass trained runs (e.g. ``mobilecnn train --model
ssdlite_mobilenet_v2_x1_0 --resolution 320``, and the same for v1).

``auto`` goes the user's road: :func:`mobilecnn.deploy.run_export.export_run` with ``fmt="auto"`` (every installed
runtime x precision, each verified against PyTorch by its detections, bf16/int8 judged by their COCO mAP drop on
the run's val images, the fastest kept); its file is loaded with :func:`mobilecnn.deploy.formats.load_runtime`
and its raw outputs decoded by :func:`mobilecnn.models.ssd_boxes.detect` with ``PostProcess()`` defaults (score
1e-8, NMS IoU 0.6, 100 per class, 100 kept) and the anchors of the file's sidecar, as ``predict`` does. The plain
path is ``torch.onnx.export`` of the same trained model as it is (BN unfolded, no mobilecnn transform) in an
onnxruntime session with default options (1 thread), its raw outputs decoded the way torchvision's
``SSD.postprocess_detections`` does it: ``BoxCoder(weights=(10, 10, 5, 5)).decode_single`` on the anchors in
pixel ``x1, y1, x2, y2``, ``clip_boxes_to_image``, softmax, a loop over the classes keeping the scores above the
threshold and their top k, then ``batched_nms`` and the best kept, with the same four settings as ours (so both
do the same work; the two post-processings are checked to give the same detections on the plain file's
outputs). Every timed call is one image, runtime and post-processing together.

Timed paired (:func:`mobilecnn.deploy.timing.paired_times`, rounds with other load above ``--max-other-load``
cores dropped): the two auto files, the two plain files, a second plain copy of v2 as the control (its ratio
to the first shows the resolution of a file-vs-file ratio), and the two post-processings alone on v2's raw
outputs (how much of each call is decoding and NMS, which the aims include on both sides). Ratios are medians
of per-round ratios with a bootstrap 95% interval; an aim is held when the upper bound is at most the aim.

Writes ``benchmarks/results/det_deploy_speed.json`` and ``.md`` next to it (``--out``).

Measurement (idle machine; about 15-20 min on 2 cores, an estimate: two 20-step trainings at 320 px with a
64-image validation, under a minute each; two ``--format auto`` exports over every installed runtime x precision
with the mAP check on the 500 val scenes, ~6 min each -- 4-6 min each with 16 check images at 128 px in the
smoke run on a loaded machine --; 7 x 20 s of paired timing)::

    .venv/bin/python benchmarks/det_deploy_speed.py --seconds 20

or, with trained runs (the aims' final figures)::

    .venv/bin/python benchmarks/det_deploy_speed.py --run-v2 RUN_V2 --run-v1 RUN_V1 --seconds 20

Smoke run (shows it works; not for the results folder)::

    .venv/bin/python benchmarks/det_deploy_speed.py --resolution 128 --train-steps 1 --seconds 1 \
        --auto-seconds 0.3 --check-count 16 --calibration-count 32 --candidates onnx --max-other-load 100 \
        --out /tmp/det_deploy_smoke.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_convert, clip_boxes_to_image

from mobilecnn.data.detection import load_detection
from mobilecnn.data.images import Preprocessing
from mobilecnn.data.names import detection_folder
from mobilecnn.deploy.boxes import facts_anchors
from mobilecnn.deploy.formats import SIDECAR_SUFFIX, load_runtime
from mobilecnn.deploy.run_export import export_run
from mobilecnn.deploy.timing import bootstrap_ratio, machine_info, paired_times
from mobilecnn.files import atomic_write_text
from mobilecnn.models.ssd_boxes import BOX_WEIGHTS, PostProcess, detect
from mobilecnn.runs.rundir import load_trained
from mobilecnn.train import TrainConfig, train

AIM_PLAIN, AIM_V1 = 0.55, 0.74
THREADS = 1
MODELS = {"v2": "ssdlite_mobilenet_v2_x1_0", "v1": "ssdlite_mobilenet_v1_x1_0"}
AUTO = {k: f"{k} auto + detect" for k in MODELS}
PLAIN = {k: f"{k} plain onnx fp32 + torchvision post" for k in MODELS}
CONTROL = "v2 plain onnx fp32, second copy + torchvision post"
POST_ALONE = {"ours": "v2 detect alone", "torchvision": "v2 torchvision post alone"}
GATE_MAP = 1.0  # below this fp32 mAP (points) the bf16/int8 accuracy gate decided nothing


# ------------------------------------------------------------------------------------- the runs
def scratch_run(name: str, out: Path, steps: int, resolution: int, seed: int) -> dict[str, Any]:
    """``name`` trained for ``steps`` steps on the default scenes (latency only: module docstring)."""
    t0 = time.time()
    result = train(TrainConfig(model=name, data="scenes", out=str(out), resolution=resolution, max_steps=steps,
                               epochs=1, val_subset=64, seed=seed))
    return {"trained_here": True, "steps": steps, "val_mAP": result.get("val_mAP"),
            "train_s": round(time.time() - t0, 1)}


def val_image(loaded: Any) -> tuple[np.ndarray, int]:
    """The first val image of the run's dataset, preprocessed the run's way: float32 (1, 3, R, R)."""
    pre = Preprocessing.for_dataset(loaded.data)
    _, val, _ = load_detection(detection_folder(str(loaded.data.get("name"))), batch_size=1,
                               resolution=pre.resolution, preprocessing=pre, workers=0)
    x, _ = next(iter(val.batches(0)))
    return np.ascontiguousarray(x.numpy(), dtype=np.float32), pre.resolution


# ------------------------------------------------------------------------------------- the two roads
def plain_onnx(model: torch.nn.Module, x: np.ndarray, path: Path):
    import onnxruntime as ort

    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=True, verbose=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda a: session.run(None, {name: a})[0]


class TorchvisionPost:
    """Raw outputs ``(1, A, 4 + C)`` -> detections, as torchvision's ``SSD.postprocess_detections`` does it for
    one image: its ``BoxCoder`` (10, 10, 5, 5) on pixel anchors, boxes clipped to the image, softmax, per class
    the scores above ``score_threshold`` and their best ``per_class``, ``batched_nms``, the best
    ``max_detections`` kept. ``anchors``: ours, ``cx, cy, w, h`` in [0, 1] of a ``size`` = (H, W) input."""

    def __init__(self, anchors: torch.Tensor, size: tuple[int, int], post: PostProcess) -> None:
        h, w = size
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        self.anchors = box_convert(anchors.float(), "cxcywh", "xyxy") * scale
        self.coder, self.size, self.post = BoxCoder(weights=BOX_WEIGHTS), size, post

    def __call__(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        out = torch.from_numpy(np.asarray(raw, np.float32))[0]
        boxes = clip_boxes_to_image(self.coder.decode_single(out[:, :4], self.anchors), self.size)
        scores = F.softmax(out[:, 4:], dim=-1)
        kept_boxes, kept_scores, kept_labels = [], [], []
        for label in range(1, scores.shape[1]):
            score = scores[:, label]
            keep = score > self.post.score_threshold
            score, box = score[keep], boxes[keep]
            score, idx = score.topk(min(self.post.per_class, score.numel()))
            kept_boxes.append(box[idx])
            kept_scores.append(score)
            kept_labels.append(torch.full_like(idx, label))
        b, s, lab = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
        keep = batched_nms(b, s, lab, self.post.nms_iou)[:self.post.max_detections]
        return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}


def ours_post(raw: np.ndarray, anchors: torch.Tensor, post: PostProcess):
    return detect(torch.from_numpy(np.asarray(raw, np.float32)), anchors, post)[0]


def compare_posts(raw: np.ndarray, anchors: torch.Tensor, size: tuple[int, int], post: PostProcess) -> dict:
    """Both post-processings on the same raw outputs: the same number of detections, the same scores (sorted)
    and, for each of torchvision's detections, a box of ours of the same class within ``max_box_diff_px``."""
    mine, theirs = ours_post(raw, anchors, post), TorchvisionPost(anchors, size, post)(raw)
    h, w = size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    row = {"ours": len(mine), "torchvision": int(theirs["scores"].numel())}
    if row["ours"] == row["torchvision"] and row["ours"]:
        row["max_score_diff"] = float((mine.scores.sort().values - theirs["scores"].sort().values).abs().max())
        gap = (theirs["boxes"][:, None, :] - (mine.boxes * scale)[None]).abs().amax(-1)
        gap[theirs["labels"][:, None] != mine.labels[None]] = float("inf")
        row["max_box_diff_px"] = float(gap.min(dim=1).values.max())
    row["same"] = (row["ours"] == row["torchvision"] and row.get("max_score_diff", 0.0) < 1e-5
                   and row.get("max_box_diff_px", 0.0) < 1e-2)
    return row


# ------------------------------------------------------------------------------------- report
def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio_text(r: dict) -> str:
    return f"**{r['median']:.3f}** [95% CI {r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"


def markdown(result: dict) -> str:
    a, b = result["auto_v2_vs_plain_v2"], result["auto_v2_vs_auto_v1"]
    medians = ", ".join(f"{k} {v:.2f}" for k, v in result["median_ms"].items())
    lines = [f"# Detection deploy speed: SSDLite at {result['resolution']} px, batch 1, {THREADS} thread, decoding and "
             "NMS included", "",
             f"{result['machine'].get('cpu')}; load average at start {result['loadavg_start'][0]:.2f}; "
             f"{result['rounds']} paired rounds ({result['rounds_dropped']} dropped for other load). "
             f"Command: `{result['command']}`.", ""]
    for key, run in result["runs"].items():
        gate = run.get("gate_fp32_map")
        lines.append(f"- {key} ({run['model']}): auto kept **{run['auto_choice']}** after {run['auto_seconds']:.0f} s; "
                     + (f"trained here for {run['steps']} steps" if run.get("trained_here") else f"run {run['run']}")
                     + (f"; the bf16/int8 gate saw an fp32 mAP of {gate:.2f} (under {GATE_MAP:g}: it decided "
                        "nothing, a trained run may refuse int8)" if gate is not None and gate < GATE_MAP else
                        (f"; fp32 mAP {gate:.2f}" if gate is not None else "")))
    lines += [f"- median ms per call: {medians}",
              f"- (a) v2 auto / v2 plain ONNX fp32: {_ratio_text(a)}; aim <= {AIM_PLAIN}: "
              f"{'held' if result['aim_plain_held'] else 'not held'}",
              f"- (b) v2 auto / v1 auto: {_ratio_text(b)}; aim <= {AIM_V1}: "
              f"{'held' if result['aim_v1_held'] else 'not held'}",
              f"- reference: v2 plain / v1 plain (both ONNX fp32): {_ratio_text(result['plain_v2_vs_plain_v1'])}",
              f"- control (second plain copy / plain): {_ratio_text(result['control'])}",
              f"- post-processing alone (v2's raw outputs, no runtime): ours (detect) "
              f"{result['median_ms'].get(POST_ALONE['ours'], float('nan')):.2f} ms, torchvision's "
              f"{result['median_ms'].get(POST_ALONE['torchvision'], float('nan')):.2f} ms",
              f"- post-processing check on the plain v2 outputs: ours {result['post_check']['ours']} detections, "
              f"torchvision's {result['post_check']['torchvision']}; "
              + ("the same" if result["post_check"]["same"] else "NOT the same") + ".", ""]
    for key, run in result["runs"].items():
        lines += [f"## {key}: {run['model']} auto candidates", "",
                  "| candidate | status | latency (ms) | mAP (%) | fp32 mAP (%) | drop (pt) | why |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for row in run["candidates"]:
            lines.append(f"| {row['candidate']} | {row['status']} | {_num(row.get('latency_ms'))} | "
                         f"{_num(row.get('map'))} | {_num(row.get('fp32_map'))} | {_num(row.get('drop'))} | "
                         f"{(row.get('why') or '')[:80]} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-v2", type=Path, help="a trained ssdlite_mobilenet_v2_x1_0 run (default: train one)")
    parser.add_argument("--run-v1", type=Path, help="a trained ssdlite_mobilenet_v1_x1_0 run (default: train one)")
    parser.add_argument("--train-steps", type=int, default=20, help="steps of the runs trained here")
    parser.add_argument("--resolution", type=int, default=320, help="input side of the runs trained here")
    parser.add_argument("--seconds", type=float, default=20.0, help="paired timing budget per candidate")
    parser.add_argument("--auto-seconds", type=float, default=1.0, help="auto's timing budget per candidate")
    parser.add_argument("--check-count", type=int, default=None, help="auto's mAP check images (default: "
                        "export's, every val image up to 2000; smoke runs only)")
    parser.add_argument("--calibration-count", type=int, default=None, help="auto's int8 calibration images "
                        "(default: export's 512; smoke runs only)")
    parser.add_argument("--candidates", nargs="+", default=None, help="auto's formats (default: every installed "
                        "one; smoke runs only)")
    parser.add_argument("--max-other-load", type=float, default=0.15, help="drop a round in which other processes "
                        "used more than this many cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/det_deploy_speed.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    start_load = os.getloadavg()
    options: dict[str, Any] = {"threads": THREADS, "seconds": args.auto_seconds}
    for key in ("check_count", "calibration_count", "candidates"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    post = PostProcess()
    runs: dict[str, dict[str, Any]] = {}
    fns: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, name in MODELS.items():
            path = getattr(args, f"run_{key}")
            info: dict[str, Any] = {"model": name}
            if path is None:
                path = Path(tmp) / f"run_{key}"
                info.update(scratch_run(name, path, args.train_steps, args.resolution, args.seed))
            info["run"] = str(path)
            runs[key] = info
        torch.set_num_threads(THREADS)
        loaded = {k: load_trained(info["run"]) for k, info in runs.items()}
        for k, ld in loaded.items():
            if ld.model_name != MODELS[k]:
                raise SystemExit(f"--run-{k} is a {ld.model_name} run, not {MODELS[k]}")
        a, side = val_image(loaded["v2"])
        if val_image(loaded["v1"])[0].shape != a.shape:
            raise SystemExit("the two runs have other input sizes; train both at the same --resolution")
        size = (side, side)
        for k, info in runs.items():
            t0 = time.time()
            auto = export_run(info["run"], "auto", Path(tmp) / f"auto_{k}", **options)
            info["auto_seconds"] = round(time.time() - t0, 1)
            if not auto.get("kept"):
                raise SystemExit(f"{k}: auto kept no file: {auto.get('candidates')}")
            sidecar = json.loads(Path(auto["kept"] + SIDECAR_SUFFIX).read_text())
            anchors = facts_anchors(sidecar["detection"], auto["kept"] + SIDECAR_SUFFIX)
            best = auto.get("best") or {}
            info.update(auto_choice=best.get("candidate"), auto_file=Path(auto["kept"]).name,
                        candidates=[{c: r.get(c) for c in ("candidate", "status", "latency_ms", "map", "fp32_map",
                                                           "drop", "why")} for r in auto["candidates"]])
            gate = [r["fp32_map"] for r in info["candidates"] if r.get("fp32_map") is not None]
            info["gate_fp32_map"] = max(gate) if gate else None
            runtime = load_runtime(Path(auto["kept"]), threads=THREADS, trusted=True)
            fns[AUTO[k]] = lambda rt=runtime, an=anchors: ours_post(rt(a), an, post)
            model = loaded[k].model.eval()
            session = plain_onnx(model, a, Path(tmp) / f"plain_{k}.onnx")
            with torch.no_grad():
                info["plain_max_abs_diff"] = float(np.abs(session(a) - model(torch.from_numpy(a)).numpy()).max())
            tv_post = TorchvisionPost(model.anchors(side, side), size, post)
            fns[PLAIN[k]] = lambda s=session, p=tv_post: p(s(a))
            if k == "v2":
                raw = session(a)
                post_check = compare_posts(raw, anchors, size, post)
                control = plain_onnx(model, a, Path(tmp) / "plain_v2_copy.onnx")
                fns[CONTROL] = lambda s=control, p=tv_post: p(s(a))
                fns[POST_ALONE["ours"]] = lambda an=anchors: ours_post(raw, an, post)
                fns[POST_ALONE["torchvision"]] = lambda p=tv_post: p(raw)
        t = paired_times(fns, seconds=args.seconds, max_other_load=args.max_other_load, seed=args.seed)
    if t["failed"]:
        raise SystemExit(f"timing failed: {t['failed']}")
    per = t["per_round_ms"]

    def ratio(num: str, den: str) -> dict:
        med, lo, hi = bootstrap_ratio(per[num], per[den])
        return {"median": med, "ci95": [lo, hi]}

    command = "python benchmarks/det_deploy_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"resolution": side, "threads": THREADS, "post": dataclasses.asdict(post), "runs": runs,
              "rounds": t["rounds"], "rounds_dropped": t["dropped"], "median_ms": t["median_ms"],
              "calls_per_round": t["calls_per_round"],
              "auto_v2_vs_plain_v2": ratio(AUTO["v2"], PLAIN["v2"]),
              "auto_v2_vs_auto_v1": ratio(AUTO["v2"], AUTO["v1"]),
              "plain_v2_vs_plain_v1": ratio(PLAIN["v2"], PLAIN["v1"]),
              "control": ratio(CONTROL, PLAIN["v2"]), "post_check": post_check,
              "per_round_ms": per, "command": command.strip(),
              "loadavg_start": start_load, "loadavg_end": os.getloadavg(), "machine": machine_info()}
    result["aim_plain_held"] = result["auto_v2_vs_plain_v2"]["ci95"][1] <= AIM_PLAIN
    result["aim_v1_held"] = result["auto_v2_vs_auto_v1"]["ci95"][1] <= AIM_V1
    atomic_write_text(args.out, json.dumps(result, indent=2, default=str) + "\n")
    text = markdown(result)
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
