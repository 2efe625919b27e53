"""Issue 15: is any mobilecnn deployment path slower than a plain export? Paired, on one machine.

For each architecture, every path is timed in the same *rounds*: each round runs every path a few
times (batch 1 by default, one thread) in a freshly shuffled order, and ``/proc/stat`` is read around
the round; a round in which other processes used more than ``--max-other-load`` of a core is dropped
(it slows whichever paths it happened to hit). Ratios are per-round paired ratios of medians, with a
bootstrap 95% interval over the kept rounds.

Plain counterparts (what a user gets without mobilecnn):

* ``mobilenet_v2_x1_0`` -- torchvision's ``mobilenet_v2`` (same architecture) in eager mode and
  through each runtime's default converter (``torch.onnx.export`` dynamo, ``ov.convert_model`` of the
  torch module, ``torch.export`` + XNNPACK lowering, ``litert_torch.convert``), BatchNorm statistics
  made non-trivial;
* ``shufflenet_v1_g3_x1_0`` and ``mobilenet_v1_x1_0`` -- our own model (BN unfolded) through each
  runtime's default converter.

Controls: every plain path is exported and loaded twice; the second copy's ratio to the first is what
an identical file reads (code and weights placed at other addresses), the resolution of the other ratios.

mobilecnn paths: eager, and :func:`mobilecnn.deploy.export.export_model` per format (fp32), plus
``auto`` (the fastest verified file of ``export --format auto``; here latency only -- random weights,
so the int8/bf16 accuracy check is not run: the Fashion-MNIST runs of ``reproduce --quick`` check it).

Aims (upper 95% bound of the paired ratio): every mobilecnn path <= 1.02x its plain counterpart;
``auto`` of mobilenet_v2_x1_0 <= 0.55x the best plain fp32 path; ``auto`` of shufflenet_v1_g3_x1_0
<= 0.6x ``auto`` of mobilenet_v2_x1_0 (the two kept files timed against each other in their own paired
rounds after the per-model groups).

Writes ``benchmarks/results/deploy_speed.{json,md}``. ``--quick``: two models, 8 rounds (~5-10 min on
two busy cores) to show it works; the full run (3 models, 100 rounds, ~20 min) wants an idle machine.

Usage: ``python benchmarks/deploy_speed.py [--quick] [--rounds N] [--threads T] [--batch B] [--out-dir DIR]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mobilecnn import create_model  # noqa: E402
from mobilecnn.deploy.auto import AutoConfig, auto_export  # noqa: E402
from mobilecnn.deploy.backends import bf16_supported  # noqa: E402
from mobilecnn.deploy.export import ExportConfig, ExportImages, export_model  # noqa: E402
from mobilecnn.deploy.formats import FORMATS as TABLE  # noqa: E402
from mobilecnn.deploy.formats import load_runtime  # noqa: E402
from mobilecnn.deploy.timing import bootstrap_ratio, paired_times  # noqa: E402
from mobilecnn.files import atomic_write_text  # noqa: E402

MODELS = ["mobilenet_v2_x1_0", "shufflenet_v1_g3_x1_0", "mobilenet_v1_x1_0"]
QUICK_MODELS = ["mobilenet_v2_x1_0", "shufflenet_v1_g3_x1_0"]
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "executorch": ".pte", "litert": ".tflite"}
AIM_PATH, AIM_AUTO_VS_PLAIN, AIM_SHUFFLE_VS_V2 = 1.02, 0.55, 0.6


def _nontrivial_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking BN statistics (running mean/var, affine) so no conv folds to something trivial."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


def _quiet():
    warnings.filterwarnings("ignore")


# ------------------------------------------------------------------------------------- plain exports
def plain_onnx(model: nn.Module, x: torch.Tensor, path: Path):
    import onnxruntime as ort
    with torch.no_grad():
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda a: s.run(None, {name: a})[0]


def plain_openvino(model: nn.Module, x: torch.Tensor, precision: str = "f32"):
    import openvino as ov
    with torch.no_grad():
        m = ov.convert_model(model, example_input=x)
    c = ov.Core().compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": THREADS, "NUM_STREAMS": 1,
                                           "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision})
    r = c.create_infer_request()
    return lambda a: r.infer({0: a})


def plain_executorch(model: nn.Module, x: torch.Tensor, path: Path):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings import portable_lib as p
    prog = torch.export.export(model, (x,))
    buf = to_edge_transform_and_lower(prog, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    path.write_bytes(buf)
    p._unsafe_reset_threadpool(THREADS)
    m = p._load_for_executorch(str(path))
    return lambda a: m.forward((torch.from_numpy(a),))


def plain_litert(model: nn.Module, x: torch.Tensor, path: Path):
    """litert-torch's default conversion, run by the LiteRT Interpreter (XNNPACK, one thread)."""
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    with torch.no_grad():
        path.write_bytes(bytes(litert_torch.convert(model.eval(), (x,)).model_content()))
    interp = Interpreter(model_path=str(path), num_threads=THREADS)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def run(a: np.ndarray):
        interp.set_tensor(inp, a)
        interp.invoke()
        return interp.get_tensor(outp)

    return run


def eager(model: nn.Module):
    def run(a: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(a))
    return run


# ------------------------------------------------------------------------------------- timing
def paired_rounds(paths: dict, x: np.ndarray, rounds: int, calls: int, max_other: float, seed: int = 0) -> dict:
    """The library's paired, idle-gated rounds (:func:`mobilecnn.deploy.timing.paired_times`) over ``paths``."""
    fns = {name: (lambda fn=fn: fn(x)) for name, fn in paths.items()}
    t = paired_times(fns, min_rounds=rounds, max_rounds=rounds, calls_per_round=calls, max_other_load=max_other,
                     seed=seed)
    kept = {n: t["per_round_ms"].get(n, []) for n in paths}
    return {"kept": rounds - t["dropped"], "dropped": t["dropped"], "other_load": t["other_load"],
            "per_round_ms": kept}


def ratio(t: dict, a: str, b: str) -> list[float] | None:
    pr = t["per_round_ms"]
    if not pr.get(a) or not pr.get(b):
        return None
    return list(bootstrap_ratio(pr[a], pr[b]))


# ------------------------------------------------------------------------------------- one architecture
def measure(name: str, res: int, batch: int, rounds: int, calls: int, max_other: float, work: Path,
            auto_seconds: float) -> dict:
    torch.manual_seed(0)
    ours = _nontrivial_bn(create_model(name))
    if name.startswith("mobilenet_v2"):
        import torchvision
        plain = _nontrivial_bn(torchvision.models.mobilenet_v2(weights=None))
        plain_label = "torchvision mobilenet_v2"
    else:
        plain = copy.deepcopy(ours)
        plain_label = f"{name} (BN unfolded), default converters"
    x = torch.randn(batch, 3, res, res)
    images = torch.randn(64, 3, res, res)
    paths: dict[str, object] = {}
    pairs: list[tuple[str, str]] = []
    notes: list[str] = []
    controls: list[tuple[str, str]] = []  # (second copy, plain): the resolution of a file-vs-file ratio
    if name.startswith("mobilenet_v2"):
        paths["plain eager"], paths["mobilecnn eager"] = eager(plain), eager(ours)
        paths["plain eager, second copy"] = eager(copy.deepcopy(plain))
        pairs.append(("mobilecnn eager", "plain eager"))
        controls.append(("plain eager, second copy", "plain eager"))
    for fmt, suffix in FORMATS.items():
        try:
            label = TABLE[fmt].runtime
            for copy_tag, file_tag in (("", ""), (", second copy", "2")):  # the same plain model, twice
                if fmt == "onnx":
                    run = plain_onnx(plain, x, work / f"{name}_plain{file_tag}.onnx")
                elif fmt == "openvino":
                    run = plain_openvino(plain, x)
                elif fmt == "litert":
                    run = plain_litert(plain, x, work / f"{name}_plain{file_tag}.tflite")
                else:
                    run = plain_executorch(plain, x, work / f"{name}_plain{file_tag}.pte")
                paths[f"plain {label}{copy_tag}"] = run
            controls.append((f"plain {label}, second copy", f"plain {label}"))
            out = work / f"{name}_ours{suffix}"
            ex = x if TABLE[fmt].static_batch else x[:1]
            export_model(ours, out, ExportImages(ex, images[:8]), ExportConfig(fmt))
            rt = load_runtime(out, threads=THREADS, trusted=True)
            paths[f"mobilecnn {label}"] = rt
            pairs.append((f"mobilecnn {label}", f"plain {label}"))
        except Exception as exc:  # noqa: BLE001 - a missing runtime skips its pair
            notes.append(f"{fmt}: {type(exc).__name__}: {str(exc)[:200]}")
    if bf16_supported():
        paths["plain openvino bf16"] = plain_openvino(plain, x, "bf16")
    t0 = time.time()
    auto = auto_export(ours, work / f"{name}_auto", ExportImages(x[:1], images[:8], images),
                       AutoConfig(check_accuracy=False, threads=THREADS, batch=batch, seconds=auto_seconds))
    auto_s = time.time() - t0
    if auto["kept"]:
        paths["mobilecnn auto"] = load_runtime(auto["kept"], threads=THREADS, trusted=True)
    t = paired_rounds(paths, x.numpy(), rounds, calls, max_other)
    med = {n: (statistics.median(v) if v else None) for n, v in t["per_round_ms"].items()}
    second_copies = {a for a, _ in controls}
    plain_fp32 = [n for n in med if n.startswith("plain") and "bf16" not in n and n not in second_copies
                  and med[n] is not None]
    best_plain = min(plain_fp32, key=lambda n: med[n]) if plain_fp32 else None
    result = {"model": name, "plain": plain_label, "resolution": res, "batch": batch,
              "rounds_kept": t["kept"], "rounds_dropped": t["dropped"],
              "other_load_median": statistics.median(t["other_load"]) if t["other_load"] else None,
              "median_ms": med, "pairs": {a: {"vs": b, "ratio": ratio(t, a, b)} for a, b in pairs},
              "controls": {a: {"vs": b, "ratio": ratio(t, a, b)} for a, b in controls},
              "best_plain_fp32": best_plain,
              "auto": {"choice": (auto.get("best") or {}).get("candidate"), "seconds": round(auto_s, 1),
                       "vs_best_plain_fp32": ratio(t, "mobilecnn auto", best_plain) if best_plain else None,
                       "candidates": [{k: r.get(k) for k in ("candidate", "status", "latency_ms", "why")}
                                      for r in auto["candidates"]]},
              "notes": notes, "_auto_kept": auto["kept"]}
    return result


def cross_auto(results: list[dict], res: int, batch: int, rounds: int, calls: int, max_other: float) -> dict | None:
    """The two ``auto`` files of the ShuffleNet-vs-MobileNetV2 aim, timed against each other in paired rounds."""
    by = {r["model"]: r.get("_auto_kept") for r in results}
    a, b = "shufflenet_v1_g3_x1_0", "mobilenet_v2_x1_0"
    if not by.get(a) or not by.get(b):
        return None
    paths = {f"auto {a}": load_runtime(Path(by[a]), threads=THREADS, trusted=True),
             f"auto {b}": load_runtime(Path(by[b]), threads=THREADS, trusted=True)}
    t = paired_rounds(paths, np.random.default_rng(0).standard_normal((batch, 3, res, res), dtype=np.float32),
                      rounds, calls, max_other)
    return {"rounds_kept": t["kept"], "rounds_dropped": t["dropped"],
            "median_ms": {n: (statistics.median(v) if v else None) for n, v in t["per_round_ms"].items()},
            "ratio": ratio(t, f"auto {a}", f"auto {b}")}


def summarise(results: list[dict], cross: dict | None) -> dict:
    aims = []
    for r in results:
        for a, p in r["pairs"].items():
            if p["ratio"]:
                aims.append({"aim": f"{r['model']}: {a} <= {AIM_PATH}x {p['vs']}", "value": p["ratio"],
                             "met": p["ratio"][2] <= AIM_PATH})
    by = {r["model"]: r for r in results}
    v2 = by.get("mobilenet_v2_x1_0")
    if v2 and v2["auto"]["vs_best_plain_fp32"]:
        val = v2["auto"]["vs_best_plain_fp32"]
        aims.append({"aim": f"mobilenet_v2_x1_0: auto <= {AIM_AUTO_VS_PLAIN}x best plain fp32 ({v2['best_plain_fp32']})",
                     "value": val, "met": val[2] <= AIM_AUTO_VS_PLAIN})
    if cross and cross["ratio"]:
        val = cross["ratio"]
        aims.append({"aim": f"auto shufflenet_v1_g3_x1_0 <= {AIM_SHUFFLE_VS_V2}x auto mobilenet_v2_x1_0 (paired)",
                     "value": val, "met": val[2] <= AIM_SHUFFLE_VS_V2})
    controls = [c["ratio"] for r in results for c in r.get("controls", {}).values() if c["ratio"]]
    spread = ([min(c[0] for c in controls), max(c[0] for c in controls), min(c[1] for c in controls),
               max(c[2] for c in controls)] if controls else None)
    return {"aims": aims, "all_met": all(a["met"] for a in aims) if aims else None, "control_spread": spread}


def markdown(meta: dict, results: list[dict], cross: dict | None, summary: dict) -> str:
    lines = ["# deploy_speed (issue 15): mobilecnn paths vs plain exports, paired", "",
             f"{meta['cpu']}; batch {meta['batch']}, {meta['threads']} thread(s), {meta['resolution']} px; "
             f"{meta['rounds']} rounds x {meta['calls']} calls per path; rounds with other load > "
             f"{meta['max_other_load']} core dropped; load average at start {meta['loadavg']}."
             + (" **--quick run: too few rounds for final figures.**" if meta["quick"] else ""), ""]
    for r in results:
        lines += [f"## {r['model']} (plain: {r['plain']})", "",
                  f"rounds kept {r['rounds_kept']}, dropped {r['rounds_dropped']}; auto chose "
                  f"**{r['auto']['choice']}** (auto took {r['auto']['seconds']} s)", "",
                  "| path | median (ms) | paired ratio vs plain [95% CI] |", "|---|---|---|"]
        for n, m in sorted(r["median_ms"].items(), key=lambda kv: kv[1] or 1e9):
            p = r["pairs"].get(n) or r.get("controls", {}).get(n)
            rr = p["ratio"] if p else (r["auto"]["vs_best_plain_fp32"] if n == "mobilecnn auto" else None)
            vs = (f" vs {p['vs']}" if p else (f" vs {r['best_plain_fp32']}" if rr else ""))
            txt = f"{rr[0]:.3f} [{rr[1]:.3f}, {rr[2]:.3f}]{vs}" if rr else "-"
            lines.append(f"| {n} | {'-' if m is None else f'{m:.3f}'} | {txt} |")
        for note in r["notes"]:
            lines.append(f"\nnote: {note}")
        lines.append("")
    if cross:
        lines += ["## auto shufflenet_v1_g3_x1_0 vs auto mobilenet_v2_x1_0", "",
                  f"rounds kept {cross['rounds_kept']}, dropped {cross['rounds_dropped']}", "",
                  "| kept file | median (ms) |", "|---|---|"]
        lines += [f"| {n} | {'-' if m is None else f'{m:.3f}'} |" for n, m in cross["median_ms"].items()]
        lines.append("")
    lines += ["## Aims", "", "| aim | value [95% CI] | met |", "|---|---|---|"]
    for a in summary["aims"]:
        v = a["value"]
        lines.append(f"| {a['aim']} | {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}] | {'yes' if a['met'] else 'NO'} |")
    spread = summary.get("control_spread")
    if spread:
        lines += ["", f"Resolution: the same plain model exported and loaded twice ('second copy' rows) read "
                      f"{spread[0]:.3f} to {spread[1]:.3f}x itself (interval bounds {spread[2]:.3f} to {spread[3]:.3f}): "
                      "a path-vs-plain ratio inside that band cannot be told from an identical file."]
    return "\n".join(lines) + "\n"


THREADS = 1


def main(argv: list[str] | None = None) -> int:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--calls", type=int, default=None, help="calls per path per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--max-other-load", type=float, default=0.15)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    _quiet()
    THREADS = args.threads
    torch.set_num_threads(args.threads)
    models = args.models or (QUICK_MODELS if args.quick else MODELS)
    rounds = args.rounds or (8 if args.quick else 100)
    calls = args.calls or (5 if args.quick else 10)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    meta = {"cpu": cpu, "threads": args.threads, "batch": args.batch, "resolution": args.resolution,
            "rounds": rounds, "calls": calls, "max_other_load": args.max_other_load, "quick": args.quick,
            "loadavg": open("/proc/loadavg").read().split()[:3], "bf16": bf16_supported(),
            "torch": torch.__version__, "python": sys.version.split()[0]}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            t0 = time.time()
            results.append(measure(name, args.resolution, args.batch, rounds, calls, args.max_other_load, Path(tmp),
                                   auto_seconds=1.0 if args.quick else 3.0))
            results[-1]["seconds"] = round(time.time() - t0, 1)
            print(f"{name}: done in {results[-1]['seconds']} s", file=sys.stderr)
        cross = cross_auto(results, args.resolution, args.batch, rounds, calls, args.max_other_load)
    for r in results:
        r.pop("_auto_kept", None)
    summary = summarise(results, cross)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "results": results, "auto_shufflenet_vs_mobilenet_v2": cross, "summary": summary}
    atomic_write_text(args.out_dir / "deploy_speed.json", json.dumps(data, indent=2, default=str) + "\n")
    text = markdown(meta, results, cross, summary)
    atomic_write_text(args.out_dir / "deploy_speed.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
