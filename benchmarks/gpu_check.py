"""The GPU check of issue 13: one prepared run (under 8 minutes on one GPU) that measures what the CPU
machines cannot, against a plain PyTorch loop in the same run. Run it through ``benchmarks/gpu_check.sh``.

Measured (at 224 px, batch 256, on one CUDA device):

1. Training img/s of ``mobilenet_v2_x1_0`` and ``shufflenet_v1_g3_x1_0`` through mobilecnn's own
   ``train_one_epoch`` (AMP, channels_last, and ``torch.compile`` where it is faster):
   a. synthetic data kept on the device (the in-memory path: uint8 images on the GPU, batched crop/flip
      there), against a plain loop (torchvision ``mobilenet_v2``, fp32, NCHW, SGD, ``loss.item()`` per
      step) on a fixed on-device batch;
   b. a real JPEG folder (Fashion-MNIST upscaled to 224, about 2,000 files) through mobilecnn's folder
      loader (DataLoader workers, pinned memory, non-blocking copies, persistent workers), against the
      plain loop fed by torchvision ``ImageFolder`` + ``DataLoader`` with the same workers; GPU
      utilisation is sampled while mobilecnn trains from the folder.
2. Eval img/s (``mobilecnn.train.evaluate`` over on-device data, AMP, channels_last).
3. Batch-1 and batch-64 inference latency, eager and compiled, against torchvision's ``mobilenet_v2``.
4. GPU memory peak of each training; JPEG decode speed on the CPU (one thread) and with
   ``torchvision.io.decode_jpeg(device="cuda")``.

``--smoke`` runs every part on the CPU with tiny sizes (what the test suite does so this script cannot
rot); its output is not a measurement and is never written to benchmarks/results.
Cudnn autotuning is on (``deterministic=False``) for every training measured here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from torch import nn

from mobilecnn.data import load_data
from mobilecnn.data.memory import TensorBatches
from mobilecnn.deploy.bench import _device_fn
from mobilecnn.deploy.timing import time_callable
from mobilecnn.device import device_summary, resolve_device, set_deterministic, synchronize
from mobilecnn.errors import UsageError
from mobilecnn.files import atomic_write_text
from mobilecnn.train.config import TrainConfig, resolve
from mobilecnn.train.distributed import DistContext
from mobilecnn.train.loop import EpochStats, _setup, evaluate, train_one_epoch

MODELS = ("mobilenet_v2_x1_0", "shufflenet_v1_g3_x1_0")
RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"


class Sizes:
    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.resolution = 32 if smoke else 224
        self.batch = 8 if smoke else 256
        self.jpegs = 48 if smoke else 2048  # training images written (plus val)
        self.val_jpegs = 16 if smoke else 256
        self.synthetic = 32 if smoke else 8192  # on-device synthetic dataset (1.2 GiB of uint8 at 224)
        self.warm_steps = 1 if smoke else 5
        self.steps = 2 if smoke else 30
        self.folder_epochs = 2 if smoke else 4  # the first is warm-up
        self.latency_batches = (1, 4) if smoke else (1, 64)
        self.repeats = 3 if smoke else 50
        self.compile = not smoke  # inductor on the CPU takes minutes: not in the smoke run
        self.workers = 2 if smoke else max(2, min(14, (os.cpu_count() or 4) - 2))


# ---------------------------------------------------------------------------------------------- data


def write_jpeg_folder(root: Path, sizes: Sizes) -> dict[str, Any]:
    """``root/{train,val}/<class>/*.jpg``: Fashion-MNIST images upscaled to the resolution (RGB JPEGs),
    or random images when Fashion-MNIST is not installed."""
    from PIL import Image

    try:
        from mobilecnn.data import read_fashion_mnist

        images, labels = read_fashion_mnist("train", None)
        source = "fashion-mnist upscaled"
    except Exception:  # noqa: BLE001 - only the pixels' origin changes
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (sizes.jpegs + sizes.val_jpegs, 1, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.arange(images.shape[0]) % 10
        source = "random pixels (Fashion-MNIST not installed)"
    r = sizes.resolution
    count = 0
    for i in range(sizes.jpegs + sizes.val_jpegs):
        split = "train" if i < sizes.jpegs else "val"
        path = root / split / f"c{int(labels[i])}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(images[i, 0].numpy(), "L").resize((r, r), Image.BICUBIC).convert("RGB")
        im.save(path, quality=90)
        count += 1
    for split in ("train", "val"):  # every class present in both splits
        for c in range(10):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            if not any((root / split / f"c{c}").iterdir()):
                shutil.copy(next((root / "train").rglob("*.jpg")), root / split / f"c{c}" / "pad.jpg")
    return {"files": count, "source": source, "resolution": r}


def synthetic_batches(sizes: Sizes, device: torch.device, train: bool) -> TensorBatches:
    g = torch.Generator().manual_seed(1)
    n = sizes.synthetic if train else max(sizes.batch * 8, 16)
    images = torch.randint(0, 256, (n, 3, sizes.resolution, sizes.resolution), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return TensorBatches(images, labels, sizes.batch, train=train, mean=[0.5] * 3, std=[0.25] * 3, seed=0,
                         pad=4, channels_last=True, device=device)


# ---------------------------------------------------------------------------------------------- timing


class Utilisation:
    """GPU utilisation (%) sampled every ``period`` seconds in a thread (NVML through torch, else nvidia-smi)."""

    def __init__(self, device: torch.device, period: float = 0.2) -> None:
        self.device, self.period, self.samples = device, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.source: str | None = None

    def _read(self) -> float | None:
        if self.device.type != "cuda":
            return None
        with contextlib.suppress(Exception):
            value = float(torch.cuda.utilization(self.device))
            self.source = "nvml"
            return value
        if shutil.which("nvidia-smi"):
            index = self.device.index or 0
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  f"--id={index}"], capture_output=True, text=True, timeout=5)
            with contextlib.suppress(ValueError):
                self.source = "nvidia-smi"
                return float(out.stdout.strip().splitlines()[0])
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> "Utilisation":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"mean_pct": None, "samples": 0, "note": "no GPU utilisation reading on this device"}
        s = sorted(self.samples)
        return {"mean_pct": sum(s) / len(s), "median_pct": s[len(s) // 2], "min_pct": s[0], "samples": len(s),
                "source": self.source}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------- mobilecnn


def library_run(model: str, folder: Path, device: torch.device, sizes: Sizes, *, compile: bool, work: Path,
                amp: bool = True) -> Any:
    """A mobilecnn training set up exactly as ``mobilecnn train`` does (``_setup``), on the JPEG folder."""
    out = Path(tempfile.mkdtemp(prefix=f"{model}-", dir=work))
    cfg = TrainConfig(model=model, data=str(folder), resolution=sizes.resolution, batch_size=sizes.batch,
                      epochs=1000, amp=amp, compile=compile, device=str(device), deterministic=False,
                      workers=sizes.workers, checkpoint_every=10**9, out=str(out), small_input=False)
    set_deterministic(device, False)
    run, val, _, _ = _setup(cfg, resolve(cfg), DistContext(), out, lambda event, info: None, device)
    return run


def time_library_epochs(run: Any, loader: Any, epochs: int, max_steps: int | None, device: torch.device,
                        util: Utilisation | None = None) -> dict[str, Any]:
    """Train ``epochs`` passes of ``loader`` with ``train_one_epoch``; the first is warm-up. img/s of the rest."""
    run.train_loader = loader
    seen = elapsed = 0.0
    for epoch in range(epochs):
        stats = EpochStats()
        run.stop_at = run.step + (max_steps or len(loader))
        if epoch == 1 and util is not None:
            util.__enter__()
        train_one_epoch(run, epoch, 0, stats)
        synchronize(device)
        if epoch >= 1:
            seen += stats.seen
            elapsed += stats.train_time
    if util is not None:
        util.__exit__()
    return {"img_per_s": seen / max(elapsed, 1e-9), "images": seen, "seconds": elapsed,
            "compile_time_s": run.compile_time_s if run.cfg.compile else None}


# ---------------------------------------------------------------------------------------------- plain loop


def plain_model(device: torch.device) -> nn.Module:
    return torchvision.models.mobilenet_v2(num_classes=10).to(device)


def plain_synthetic(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """The loop a PyTorch user writes first: fp32, NCHW, SGD, ``loss.item()`` each step, one fixed batch."""
    model = plain_model(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.batch, 3, sizes.resolution, sizes.resolution, generator=g).to(device)
    y = torch.randint(0, 10, (sizes.batch,), generator=g).to(device)
    reset_peak(device)
    t0 = 0.0
    for i in range(sizes.warm_steps + sizes.steps):
        if i == sizes.warm_steps:
            synchronize(device)
            t0 = time.perf_counter()
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        loss.item()
    synchronize(device)
    elapsed = time.perf_counter() - t0
    return {"img_per_s": sizes.steps * sizes.batch / elapsed, "peak_memory_gib": peak_gib(device)}


def plain_folder(folder: Path, device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """torchvision ImageFolder + DataLoader (same workers, pinned memory) + the plain loop."""
    from torchvision.transforms import v2

    tf = v2.Compose([v2.RandomResizedCrop(sizes.resolution, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)])
    ds = torchvision.datasets.ImageFolder(str(folder / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=sizes.batch, shuffle=True, drop_last=True,
                                         num_workers=sizes.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=sizes.workers > 0)
    model = plain_model(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    seen, elapsed = 0, 0.0
    for epoch in range(sizes.folder_epochs):
        t0 = time.perf_counter()
        n = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            loss.item()
            n += len(y)
        synchronize(device)
        if epoch >= 1:
            seen += n
            elapsed += time.perf_counter() - t0
    return {"img_per_s": seen / max(elapsed, 1e-9), "images": seen, "seconds": elapsed}


# ---------------------------------------------------------------------------------------------- parts


def measure_latency(device: torch.device, sizes: Sizes, budget: Callable[[], bool]) -> list[dict[str, Any]]:
    from mobilecnn.deploy.bench import REFERENCE_BACKEND, _reference_model
    from mobilecnn.models import create_model

    rows = []
    entries = [(m, create_model(m, num_classes=1000).eval(), "eager") for m in MODELS]
    entries.append(("torchvision.mobilenet_v2", _reference_model("torchvision.mobilenet_v2"), REFERENCE_BACKEND))
    for name, module, eager_backend in entries:
        for backend in (eager_backend, "compiled"):
            if backend == "compiled" and not sizes.compile:
                continue
            for batch in sizes.latency_batches:
                row: dict[str, Any] = {"model": name, "backend": backend, "batch": batch}
                if backend == "compiled" and not budget():
                    row["note"] = "skipped: time budget"
                    rows.append(row)
                    continue
                x = torch.randn(batch, 3, sizes.resolution, sizes.resolution)
                try:
                    t0 = time.perf_counter()
                    fn = _device_fn(module, x, backend, device)
                    if backend == "compiled":
                        row["compile_time_s"] = time.perf_counter() - t0
                    samples = sorted(time_callable(fn, warmup=3, repeats=sizes.repeats, min_time_s=0.2 if sizes.smoke
                                                   else 1.0))
                    row.update({"median_ms": 1e3 * samples[len(samples) // 2], "min_ms": 1e3 * samples[0],
                                "img_per_s": batch / samples[len(samples) // 2]})
                except Exception as exc:  # noqa: BLE001 - a failed row is reported, not fatal
                    row["note"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
                rows.append(row)
    return rows


def measure_decode(folder: Path, device: torch.device, sizes: Sizes) -> dict[str, Any]:
    from torchvision.io import decode_jpeg, read_file

    files = sorted((folder / "train").rglob("*.jpg"))
    data = [read_file(str(p)) for p in files]
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    for d in data:
        decode_jpeg(d)
    cpu_s = time.perf_counter() - t0
    torch.set_num_threads(saved)
    out: dict[str, Any] = {"files": len(files), "cpu_one_thread_img_per_s": len(files) / cpu_s}
    if device.type == "cuda":
        try:
            decode_jpeg(data[: sizes.batch], device=device)  # warm-up (nvJPEG handles)
            synchronize(device)
            t0 = time.perf_counter()
            for i in range(0, len(data), sizes.batch):
                decode_jpeg(data[i:i + sizes.batch], device=device)
            synchronize(device)
            out["gpu_img_per_s"] = len(files) / (time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001
            out["gpu_note"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    out["workers_equivalent_cpu_img_per_s"] = out["cpu_one_thread_img_per_s"] * sizes.workers
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="every part on the CPU with tiny sizes (not a measurement)")
    ap.add_argument("--out", default=None, help=f"JSON output (default {RESULTS}; --smoke: none unless given)")
    ap.add_argument("--device", default=None, help="default cuda (--smoke: cpu)")
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="compile steps are skipped once this is near (training compiles after 45%%, the folder "
                         "run's after 60%%, latency compiles after 100%%); the JSON is saved after every part")
    args = ap.parse_args(argv)
    sizes = Sizes(args.smoke)
    try:
        device = resolve_device(args.device or ("cpu" if args.smoke else "cuda"))
    except UsageError as exc:
        print(f"gpu_check: {exc}; use --smoke to exercise the script on the CPU", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.smoke:
        print("gpu_check: measures a CUDA device; use --smoke to exercise the script on the CPU", file=sys.stderr)
        return 2
    if args.smoke:  # one thread: an oversubscribed CPU runs torch orders of magnitude slower
        torch.set_num_threads(1)
    started = time.perf_counter()
    def budget(fraction: float = 1.0) -> bool:
        return time.perf_counter() - started < fraction * args.budget_s
    report: dict[str, Any] = {
        "meta": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "smoke": args.smoke,
                 "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                 "torchvision": torchvision.__version__, "cpus": os.cpu_count(), **device_summary(device),
                 "resolution": sizes.resolution, "batch": sizes.batch, "workers": sizes.workers,
                 "note": "SMOKE RUN ON THE CPU: tiny sizes, not a measurement" if args.smoke else
                 "measured by benchmarks/gpu_check.sh"},
        "train_synthetic": [], "train_folder": [], "eval": [],
    }

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    out = args.out or (None if args.smoke else str(RESULTS))

    def save(complete: bool = False) -> None:
        """Saved after every part: a run stopped by the script's timeout keeps what it measured."""
        report["meta"]["complete"] = complete
        report["meta"]["wall_s"] = time.perf_counter() - started
        if out:
            atomic_write_text(Path(out), json.dumps(report, indent=1, default=str) + "\n")

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        folder = work / "jpegs"
        report["jpeg_folder"] = write_jpeg_folder(folder, sizes)
        log(f"wrote {report['jpeg_folder']['files']} JPEGs ({report['jpeg_folder']['source']})")
        syn_train, syn_val = synthetic_batches(sizes, device, True), synthetic_batches(sizes, device, False)

        plain = plain_synthetic(device, sizes)
        report["train_synthetic"].append({"model": "torchvision.mobilenet_v2", "mode": "plain loop fp32 NCHW", **plain})
        log(f"plain loop, synthetic: {plain['img_per_s']:.0f} img/s")
        save()
        best_mode: dict[str, bool] = {}
        for model in MODELS:
            results = {}
            for compiled in ((False, True) if sizes.compile else (False,)):
                if compiled and not budget(0.45):
                    report["train_synthetic"].append({"model": model, "mode": "amp channels_last compiled",
                                                      "note": "skipped: time budget"})
                    continue
                run = library_run(model, folder, device, sizes, compile=compiled, work=work)
                reset_peak(device)
                r = time_library_epochs(run, syn_train, 2, sizes.steps, device)  # pass 1 warms up (and compiles)
                r["peak_memory_gib"] = peak_gib(device)
                r["compile_time_s"] = run.compile_time_s if compiled else None
                mode = "amp channels_last" + (" compiled" if compiled else "")
                report["train_synthetic"].append({"model": model, "mode": mode, **r})
                results[compiled] = r["img_per_s"]
                log(f"{model} {mode}, synthetic on device: {r['img_per_s']:.0f} img/s")
                save()
                if not compiled:
                    evaluate(run.model, syn_val, channels_last=True, amp=True, num_classes=10)
                    synchronize(device)
                    t0 = time.perf_counter()
                    ev = evaluate(run.model, syn_val, channels_last=True, amp=True, num_classes=10)
                    synchronize(device)
                    report["eval"].append({"model": model, "mode": "amp channels_last",
                                           "img_per_s": ev["samples"] / (time.perf_counter() - t0)})
                del run
            best_mode[model] = bool(results.get(True, 0) > results.get(False, 0))

        for model in MODELS:
            compiled = best_mode[model] and budget(0.6)
            run = library_run(model, folder, device, sizes, compile=compiled, work=work)
            train_loader = run.train_loader
            reset_peak(device)
            util = Utilisation(device)
            r = time_library_epochs(run, train_loader, sizes.folder_epochs, None, device, util)
            r.update({"peak_memory_gib": peak_gib(device), "gpu_utilisation": util.summary()})
            mode = "amp channels_last" + (" compiled" if compiled else "")
            report["train_folder"].append({"model": model, "mode": mode, **r})
            log(f"{model} {mode}, JPEG folder: {r['img_per_s']:.0f} img/s, GPU util {util.summary()['mean_pct']}")
            save()
            del run, train_loader
        pf = plain_folder(folder, device, sizes)
        report["train_folder"].append({"model": "torchvision.mobilenet_v2",
                                       "mode": "plain loop fp32 NCHW, ImageFolder + DataLoader", **pf})
        log(f"plain loop, JPEG folder: {pf['img_per_s']:.0f} img/s")

        report["latency"] = measure_latency(device, sizes, budget)
        log("latency done")
        save()
        report["decode"] = measure_decode(folder, device, sizes)
        log(f"decode: {report['decode']}")

    best_syn = max((r.get("img_per_s") or 0) for r in report["train_synthetic"] if r["model"] == "mobilenet_v2_x1_0")
    best_folder = next(r for r in report["train_folder"] if r["model"] == "mobilenet_v2_x1_0")
    report["aims"] = {
        "train_speedup_vs_plain_synthetic": best_syn / plain["img_per_s"],
        "train_speedup_vs_plain_folder": best_folder["img_per_s"] / max(pf["img_per_s"], 1e-9),
        "aim_speedup": 1.3,
        "folder_gpu_utilisation_mean_pct": best_folder["gpu_utilisation"].get("mean_pct"),
        "aim_gpu_utilisation_pct": 90,
    }
    save(complete=True)
    print(json.dumps(report, indent=1, default=str))
    if out:
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
