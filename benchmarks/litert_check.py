"""LiteRT (.tflite) check: is mobilecnn's file as fast as a plain conversion, what do int8 and the
zero-padded max pool buy? Paired, interleaved rounds on one machine (batch 1, 224 px, one thread).

Groups (each path a file loaded side by side; random weights with trained-looking BN statistics):

* ``mobilenet_v2_x1_0``: ``ours_fp32`` (:func:`mobilecnn.deploy.litert.write_litert` of the deploy form,
  run by :class:`~mobilecnn.deploy.litert.LiteRTRuntime`) against ``plain_fp32`` (``litert_torch.convert``
  of torchvision's ``mobilenet_v2()``, run with bare ``Interpreter`` calls) and ``plain_copy`` (the same
  plain file loaded again: what an identical file reads, the resolution of the ratios);
  ``ours_fp32_linear_head`` (BN folded, the zoo's Linear head kept instead of the deploy form's 1x1-conv
  head); ``ours_int8`` (ai-edge-quantizer static int8, calibrated on 32 crops of scikit-image photos).
* ``shufflenet_v1_g3_x1_0``: ``deploy`` (the deploy form: max pool padded with -inf, a PADV2 outside
  XNNPACK), ``zero_pad`` (after :func:`~mobilecnn.deploy.litert.zero_pad_maxpool`: one partition),
  ``dw`` (the deploy form after :func:`~mobilecnn.deploy.fold.avgpool_to_depthwise`), ``dw_int8`` and
  ``zero_pad_dw_int8``.

Each round runs every path of a group ``--calls`` times in a freshly shuffled order and keeps the median;
``/proc/stat`` is read around the round and the other processes' CPU use is recorded (rounds are kept;
the load is reported). Ratios: median of the per-round ratios with a bootstrap 95% interval.

Writes ``benchmarks/results/litert_check.{json,md}``. About 2 minutes on two idle cores.

Usage: ``python benchmarks/litert_check.py [--rounds 40] [--calls 5] [--out-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"  # litert-torch's progress tree on stdout

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deploy_speed import _nontrivial_bn  # noqa: E402 - this folder's benchmark, beside this script
from mobilecnn import create_model  # noqa: E402
from mobilecnn.deploy.fold import avgpool_to_depthwise, deploy_form, fold_batchnorm  # noqa: E402
from mobilecnn.deploy.litert import LiteRTRuntime, write_litert, xnnpack_partitions, zero_pad_maxpool  # noqa: E402

RES = 224


def calibration_images(n: int = 32) -> torch.Tensor:
    """Random 224 px crops of scikit-image's photos, ImageNet-normalised (random noise without it)."""
    try:
        from skimage import data
    except ImportError:
        return torch.randn(n, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        y, x = rng.integers(0, img.shape[0] - RES), rng.integers(0, img.shape[1] - RES)
        out.append(img[y:y + RES, x:x + RES].astype(np.float32) / 255.0)
    arr = (np.stack(out) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).astype(np.float32).copy())


def plain_interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def run(a: np.ndarray) -> np.ndarray:
        it.set_tensor(i, a)
        it.invoke()
        return it.get_tensor(o)
    run.partitions = xnnpack_partitions(it)[0]
    return run


def _busy_s() -> float:
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _self_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def paired_rounds(paths: dict, x: np.ndarray, rounds: int, calls: int, seed: int = 0) -> dict:
    names = list(paths)
    for fn in paths.values():
        for _ in range(5):
            fn(x)
    rng = random.Random(seed)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    for _ in range(rounds):
        order = names[:]
        rng.shuffle(order)
        b0, s0, t0 = _busy_s(), _self_s(), time.perf_counter()
        for n in order:
            ts = []
            for _ in range(calls):
                a = time.perf_counter()
                paths[n](x)
                ts.append(time.perf_counter() - a)
            per_round[n].append(1e3 * statistics.median(ts))
        wall = time.perf_counter() - t0
        loads.append(max(0.0, (_busy_s() - b0) - (_self_s() - s0)) / max(wall, 1e-9))
    return {"per_round_ms": per_round, "other_load": loads}


def bootstrap_ratio(a: list[float], b: list[float], reps: int = 2000, seed: int = 0) -> list[float]:
    """Median of the paired per-round ratios a/b with a bootstrap 95% interval."""
    r = np.asarray(a) / np.asarray(b)
    boots = np.median(np.random.default_rng(seed).choice(r, size=(reps, len(r)), replace=True), axis=1)
    return [float(np.median(r)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def build_mobilenet(work: Path, x: torch.Tensor, calib: torch.Tensor) -> tuple[dict, dict]:
    import litert_torch
    import torchvision

    zoo = _nontrivial_bn(create_model("mobilenet_v2_x1_0"))
    ours = deploy_form(zoo)
    plain = _nontrivial_bn(torchvision.models.mobilenet_v2())
    notes = {"ours_fp32": write_litert(ours, x, work / "mv2_fp32.tflite"),
             "ours_fp32_linear_head": write_litert(fold_batchnorm(zoo), x, work / "mv2_linear.tflite"),
             "ours_int8": write_litert(ours, x, work / "mv2_int8.tflite", calibration=calib)}
    with torch.no_grad():
        litert_torch.convert(plain, (x,)).export(str(work / "mv2_plain.tflite"))
    paths = {"ours_fp32": LiteRTRuntime(work / "mv2_fp32.tflite", 1, trusted=True),
             "plain_fp32": plain_interpreter(work / "mv2_plain.tflite"),
             "plain_copy": plain_interpreter(work / "mv2_plain.tflite"),
             "ours_fp32_linear_head": LiteRTRuntime(work / "mv2_linear.tflite", 1, trusted=True),
             "ours_int8": LiteRTRuntime(work / "mv2_int8.tflite", 1, trusted=True)}
    with torch.no_grad():
        ref, ref_plain = ours(x).numpy(), plain(x).numpy()
    info = {"notes": notes, "rel_diff_fp32": rel(paths["ours_fp32"](x.numpy()), ref),
            "rel_diff_linear_head": rel(paths["ours_fp32_linear_head"](x.numpy()), ref),
            "rel_diff_plain": rel(paths["plain_fp32"](x.numpy()), ref_plain),
            "partitions": {k: v.partitions for k, v in paths.items()}}
    return paths, info


def build_shufflenet(work: Path, x: torch.Tensor, calib: torch.Tensor) -> tuple[dict, dict]:
    model = _nontrivial_bn(create_model("shufflenet_v1_g3_x1_0"))
    nets = {k: deploy_form(model) for k in ("deploy", "zero_pad", "dw", "zero_pad_dw")}
    replaced = {k: zero_pad_maxpool(nets[k]) for k in ("zero_pad", "zero_pad_dw")}
    replaced |= {f"{k} depthwise": avgpool_to_depthwise(nets[k], x) for k in ("dw", "zero_pad_dw")}
    with torch.no_grad():
        ref = model(x).numpy()
        equal = {k: float(np.abs(n(x).numpy() - ref).max()) for k, n in nets.items()}
    notes, paths = {}, {}
    for name, int8 in (("deploy", False), ("zero_pad", False), ("dw", False), ("dw", True), ("zero_pad_dw", True)):
        key = name + ("_int8" if int8 else "")
        notes[key] = write_litert(nets[name], x, work / f"sn_{key}.tflite", calibration=calib if int8 else None)
        paths[key] = LiteRTRuntime(work / f"sn_{key}.tflite", 1, trusted=True)
    info = {"notes": notes, "replaced": replaced, "max_abs_diff_vs_pytorch_eager": equal,
            "rel_diff_litert": {k: rel(paths[k](x.numpy()), ref) for k in ("deploy", "zero_pad", "dw")},
            "partitions": {k: v.partitions for k, v in paths.items()},
            "undelegated": {k: v.undelegated for k, v in paths.items()}}
    return paths, info


RATIOS = {"mobilenet_v2_x1_0": [("ours_fp32", "plain_fp32"), ("plain_copy", "plain_fp32"),
                                ("ours_fp32_linear_head", "plain_fp32"), ("ours_int8", "ours_fp32")],
          "shufflenet_v1_g3_x1_0": [("zero_pad", "deploy"), ("dw", "deploy"), ("dw_int8", "dw"),
                                    ("zero_pad_dw_int8", "dw_int8")]}


def markdown(meta: dict, groups: dict) -> str:
    lines = ["# LiteRT check", "", f"CPU: {meta['cpu']}; batch 1, {RES} px, 1 thread; {meta['rounds']} rounds x "
             f"{meta['calls']} calls; load average before {meta['loadavg_before']}, after {meta['loadavg_after']}.",
             f"Versions: {meta['versions']}.", ""]
    for model, g in groups.items():
        lines += [f"## {model}", "", "| path | median ms | XNNPACK partitions |", "| --- | ---: | ---: |"]
        for path, ms in g["median_ms"].items():
            lines.append(f"| {path} | {ms:.2f} | {g['info']['partitions'].get(path)} |")
        lines += ["", "| ratio | median | 95% interval |", "| --- | ---: | --- |"]
        for key, (m, lo, hi) in g["ratios"].items():
            lines.append(f"| {key} | {m:.3f} | [{lo:.3f}, {hi:.3f}] |")
        lines += ["", f"Other processes' CPU use per round (cores): median {g['other_load_median']:.2f}, "
                  f"max {g['other_load_max']:.2f}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, calib = torch.randn(1, 3, RES, RES), calibration_images()
    meta = {"cpu": platform.processor() or platform.machine(), "rounds": args.rounds, "calls": args.calls,
            "loadavg_before": [round(v, 2) for v in os.getloadavg()],
            "versions": {p: version(p) for p in ("torch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer")}}
    with open("/proc/cpuinfo") as fh:
        meta["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), meta["cpu"])
    groups = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, build in (("mobilenet_v2_x1_0", build_mobilenet), ("shufflenet_v1_g3_x1_0", build_shufflenet)):
            paths, info = build(Path(tmp), x, calib)
            timing = paired_rounds(paths, x.numpy(), args.rounds, args.calls)
            pr = timing["per_round_ms"]
            groups[model] = {"info": info, "per_round_ms": pr, "other_load": timing["other_load"],
                             "median_ms": {k: statistics.median(v) for k, v in pr.items()},
                             "ratios": {f"{a} / {b}": bootstrap_ratio(pr[a], pr[b]) for a, b in RATIOS[model]},
                             "other_load_median": statistics.median(timing["other_load"]),
                             "other_load_max": max(timing["other_load"])}
            print(model, {k: [round(v, 3) for v in r] for k, r in groups[model]["ratios"].items()}, file=sys.stderr)
    meta["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "litert_check.json").write_text(json.dumps({"meta": meta, "groups": groups}, indent=1) + "\n")
    (args.out_dir / "litert_check.md").write_text(markdown(meta, groups))
    print(markdown(meta, groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
