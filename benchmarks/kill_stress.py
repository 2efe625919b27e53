"""Fault injection: ``kill -9`` of ``mobilecnn train`` at random moments, then ``--resume``.

Each trial starts a small training (``mobilecnn train``, tiny model, 512 Fashion-MNIST images,
batch 64, 2 epochs, a checkpoint every 2 steps, 1 thread, fixed seed) and sends it SIGKILL:

* ``random``: after a random delay anywhere in the run (start-up included);
* ``checkpoint``: the moment the k-th checkpoint's temporary directory ``checkpoints/.step-*.tmp-*``
  appears, plus 0-3 ms, so the process dies inside the checkpoint write (safetensors files half
  written, before the rename, before ``LATEST`` is replaced...);
* ``training``: 0-0.45 s after a new checkpoint is complete (mid-epoch, during evaluation...).

After every kill the run directory must hold only complete checkpoints, ``load_trained(run)`` must
load (or, before the first checkpoint, refuse with ``CheckpointError``), and ``--resume`` must finish
(in some trials the resume is killed too, then resumed again) with weights bitwise equal to one
uninterrupted reference run.

    .venv/bin/python benchmarks/kill_stress.py [--trials 20] [--seed 0] [--keep]

Writes ``benchmarks/results/kill_stress.json``; exits 1 when any trial fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mobilecnn.train import TrainConfig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: The training every trial runs (and the reference run, uninterrupted).
CONFIG: dict[str, Any] = {
    "model": "mobilenet_v1_x0_25",
    "subset": 512,
    "val_subset": 256,
    "batch_size": 64,
    "epochs": 2,
    "checkpoint_every": 2,
    "threads": 1,
    "seed": 7,
}


def train_command(out: Path, cfg: dict[str, Any] | None = None, resume: bool = False) -> list[str]:
    """The ``mobilecnn train`` command line for ``cfg`` into ``out``."""
    cfg = {**CONFIG, **(cfg or {})}
    cmd = [sys.executable, "-m", "mobilecnn.cli", "train", "--out", str(out)]
    for key, value in cfg.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd + (["--resume"] if resume else [])


def train_config(out: Path, cfg: dict[str, Any] | None = None) -> TrainConfig:
    """The same training as :func:`train_command`, as a ``TrainConfig`` for an in-process run."""
    from mobilecnn.train import TrainConfig

    return TrainConfig(out=str(out), **{**CONFIG, **(cfg or {})})


def final_weights(run: Path) -> dict[str, Any]:
    """Tensors of ``model.safetensors`` in the run's latest checkpoint."""
    from safetensors.torch import load_file

    from mobilecnn.runs.checkpoints import latest_checkpoint

    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise RuntimeError(f"{run} holds no checkpoint")
    return load_file(str(ckpt / "model.safetensors"))


def compare_weights(got: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Names of tensors that are not bitwise equal (or missing on either side)."""
    import torch

    bad = sorted(set(got) ^ set(expected))
    bad += [k for k in sorted(set(got) & set(expected)) if not torch.equal(got[k], expected[k])]
    return bad


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _leftovers(run: Path, pid: int, before: set[str] = frozenset()) -> list[str]:
    """Temporary files/directories a process with ``pid`` left in the checkpoint folder (it died writing)."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name not in before and (
        (p.name.startswith(".step-") and p.name.endswith(f".tmp-{pid}")) or
        (p.name.startswith(".LATEST.") and p.name.endswith(".tmp"))))


def check_run_dir(run: Path) -> list[str]:
    """Problems of a run directory after a crash: incomplete checkpoints that look complete, unloadable latest."""
    from safetensors.torch import load_file

    from mobilecnn.errors import CheckpointError
    from mobilecnn.runs.checkpoints import LATEST, latest_checkpoint
    from mobilecnn.runs.rundir import load_trained

    problems: list[str] = []
    root = run / "checkpoints"
    if root.is_dir():
        for ckpt in sorted(root.glob("step-*")):
            if not (ckpt / "state.json").is_file():
                continue  # not complete, and not taken for complete either
            for name in ("model.safetensors", "state.safetensors"):
                try:
                    load_file(str(ckpt / name))
                except Exception as exc:  # noqa: BLE001 - any failure is a finding
                    problems.append(f"{ckpt.name}/{name} looks complete but does not load: {type(exc).__name__}: {exc}")
            try:
                json.loads((ckpt / "state.json").read_text())
            except ValueError as exc:
                problems.append(f"{ckpt.name}/state.json unreadable: {exc}")
        pointer = root / LATEST
        if pointer.is_file() and not (root / pointer.read_text().strip() / "state.json").is_file():
            problems.append(f"LATEST points at {pointer.read_text().strip()!r}, which is not a complete checkpoint")
    if latest_checkpoint(run) is not None:
        try:
            load_trained(run)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"load_trained failed: {type(exc).__name__}: {exc}")
    else:
        try:
            load_trained(run)
            problems.append("load_trained loaded a run without a checkpoint")
        except CheckpointError:
            pass
        except Exception as exc:  # noqa: BLE001
            problems.append(f"load_trained without checkpoint raised {type(exc).__name__} instead of CheckpointError: {exc}")
    return problems


def checkpoint_writes(cfg: dict[str, Any] | None = None) -> int:
    """How many checkpoints a run of ``cfg`` writes (one every ``checkpoint_every`` steps, one per epoch end)."""
    cfg = {**CONFIG, **(cfg or {})}
    per_epoch = int(cfg["subset"]) // int(cfg["batch_size"])
    total = int(per_epoch * float(cfg["epochs"]))
    every = int(cfg["checkpoint_every"])
    return len({s for s in range(every, total + 1, every)} | {per_epoch * (e + 1) for e in range(total // per_epoch)})


def run_and_kill(cmd: list[str], run: Path, mode: str, rng: random.Random, expected_wall: float,
                 log: Path, timeout: float = 300.0, writes: int = 8) -> dict[str, Any]:
    """Start ``cmd`` and SIGKILL it; describe the moment it died.

    ``mode``: ``random`` (a delay in [0, 0.95 ``expected_wall``]), ``checkpoint`` (inside the k-th
    checkpoint write) or ``training`` (0-0.45 s after a new checkpoint is complete).
    """
    root = run / "checkpoints"
    delay = rng.uniform(0.0, 0.95 * expected_wall)
    nth = rng.randint(1, writes)  # which checkpoint write to hit
    extra = rng.uniform(0.0, 0.003)  # a tiny model's checkpoint is written in a few ms
    after = rng.uniform(0.0, 0.45)
    before = set(os.listdir(root)) if root.is_dir() else set()
    first_latest = _read(root / "LATEST")
    with open(log, "ab") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh)
        seen: set[str] = set()
        killed = False
        while proc.poll() is None and time.perf_counter() - start < timeout:
            now = time.perf_counter() - start
            if mode == "random" and now >= delay:
                killed = True
            elif mode == "training" and _read(root / "LATEST") not in (None, first_latest):  # after a new checkpoint
                time.sleep(after)
                killed = True
            elif mode == "checkpoint":
                try:
                    names = [e.name for e in os.scandir(root) if e.name.startswith(".step-")]
                except OSError:
                    names = []
                seen.update(names)
                if len(seen) >= nth and names:
                    time.sleep(extra)
                    killed = True
            if killed:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001 if mode == "checkpoint" else 0.005)
        if proc.poll() is None and not killed:  # hang
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        t_kill = time.perf_counter() - start
    from mobilecnn.runs.checkpoints import latest_checkpoint

    latest = latest_checkpoint(run) if run.exists() else None
    left = _leftovers(run, proc.pid, before)
    return {
        "mode": mode, "killed": killed and rc == -signal.SIGKILL, "returncode": rc, "t_s": round(t_kill, 3),
        "planned": {"random": f"{delay:.3f} s", "checkpoint": f"checkpoint write #{nth} + {1000 * extra:.1f} ms",
                    "training": f"new checkpoint + {after:.3f} s"}[mode],
        "latest_checkpoint_after": latest.name if latest else None,
        "in_checkpoint_write": bool(left), "leftovers": left,
    }


def resume_until_done(run: Path, cfg: dict[str, Any], log: Path, timeout: float = 300.0) -> tuple[int, str]:
    """``--resume`` to the end (without ``--resume`` when the kill came before ``config.json``); (rc, stderr tail)."""
    cmd = train_command(run, cfg, resume=(run / "config.json").is_file())
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    with open(log, "a") as fh:
        fh.write(proc.stdout + proc.stderr)
    return proc.returncode, proc.stderr[-2000:]


def run_trial(index: int, rng: random.Random, work: Path, reference: dict[str, Any], expected_wall: float,
              cfg: dict[str, Any] | None = None, mode: str | None = None, kill_resume: bool | None = None,
              log: Path | None = None, resume: Any = None) -> dict[str, Any]:
    """One trial: kill the training (and maybe its resume), check the directory each time, resume, compare.

    ``resume(run, cfg, log) -> (returncode, stderr)`` finishes the run (default :func:`resume_until_done`,
    a subprocess; the test suite passes an in-process one).
    """
    cfg = {**CONFIG, **(cfg or {})}
    run = work / f"trial-{index:03d}"
    shutil.rmtree(run, ignore_errors=True)
    log = log or work / f"trial-{index:03d}.log"
    mode = mode or rng.choice(["random", "checkpoint", "training"])
    resume = resume or resume_until_done
    kill_resume = rng.random() < 0.35 if kill_resume is None else kill_resume
    kills: list[dict[str, Any]] = []
    failures: list[str] = []

    writes = checkpoint_writes(cfg)
    moment = run_and_kill(train_command(run, cfg), run, mode, rng, expected_wall, log, writes=writes)
    moment.update(trial=index, phase="train")
    kills.append(moment)
    failures += [f"after kill {len(kills)}: {p}" for p in check_run_dir(run)]
    if kill_resume and not failures:
        for _ in range(rng.randint(1, 2)):
            resume_mode = rng.choice(["random", "checkpoint", "training"])
            moment = run_and_kill(train_command(run, cfg, resume=(run / "config.json").is_file()), run, resume_mode, rng,
                                  expected_wall, log, writes=writes)
            moment.update(trial=index, phase="resume")
            kills.append(moment)
            failures += [f"after kill {len(kills)} (resume): {p}" for p in check_run_dir(run)]
    mismatched: list[str] = []
    if not failures:
        rc, err = resume(run, cfg, log)
        if rc != 0:
            failures.append(f"final --resume exited {rc}: {err.strip().splitlines()[-1] if err.strip() else ''}")
        else:
            failures += [f"after resume: {p}" for p in check_run_dir(run)]
            stale = sorted(p.name for p in (run / "checkpoints").glob(".*.tmp*"))
            if stale:
                failures.append(f"temporary checkpoint directories of killed runs left behind: {stale}")
            mismatched = compare_weights(final_weights(run), reference)
            if mismatched:
                failures.append(f"{len(mismatched)} tensors differ from the uninterrupted run (e.g. {mismatched[0]})")
    return {"trial": index, "mode": mode, "kills": kills, "survived": not failures, "mismatch": bool(mismatched),
            "failures": failures, "run": str(run)}


def reference_run(work: Path, cfg: dict[str, Any] | None = None) -> tuple[dict[str, Any], float]:
    """Weights of one uninterrupted run (CLI, same settings) and its wall time."""
    run = work / "reference"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(train_command(run, cfg), capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return final_weights(run), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    parser.add_argument("--out", default=str(RESULTS / "kill_stress.json"))
    args = parser.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kill_stress-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    reference, ref_wall = reference_run(work)
    print(f"reference run: {ref_wall:.1f} s", flush=True)
    trials = []
    try:
        for i in range(args.trials):
            result = run_trial(i, rng, work, reference, ref_wall)
            trials.append(result)
            moments = ", ".join(f"{k['phase']}/{k['mode']}@{k['t_s']:.2f}s"
                                f"{' in-ckpt-write' if k['in_checkpoint_write'] else ''}"
                                f"{'' if k['killed'] else ' (finished first)'}" for k in result["kills"])
            print(f"trial {i:2d}: {'ok' if result['survived'] else 'FAILED'}  {moments}", flush=True)
            for f in result["failures"]:
                print(f"    {f}", flush=True)
            if result["survived"] and not args.keep:
                shutil.rmtree(result["run"], ignore_errors=True)
    finally:
        moments = [k for t in trials for k in t["kills"]]
        summary = {
            "config": CONFIG,
            "trials": len(trials),
            "kills": sum(1 for k in moments if k["killed"]),
            "kill_attempts": len(moments),
            "kills_in_training": sum(1 for k in moments if k["killed"] and k["phase"] == "train"),
            "kills_in_resume": sum(1 for k in moments if k["killed"] and k["phase"] == "resume"),
            "kills_during_checkpoint_writes": sum(1 for k in moments if k["killed"] and k["in_checkpoint_write"]),
            "kills_before_first_checkpoint": sum(1 for k in moments if k["killed"] and k["latest_checkpoint_after"] is None),
            "survived": sum(1 for t in trials if t["survived"]),
            "mismatches": sum(1 for t in trials if t["mismatch"]),
            "failed_trials": [{"trial": t["trial"], "failures": t["failures"]} for t in trials if not t["survived"]],
            "kill_moments": moments,
            "reference_wall_s": round(ref_wall, 2),
            "wall_s": round(time.perf_counter() - t0, 1),
            "seed": args.seed,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
        if not args.keep and summary["survived"] == summary["trials"]:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{summary['trials']} trials, {summary['kills']} kills ({summary['kills_during_checkpoint_writes']} during "
          f"checkpoint writes), {summary['survived']} survived, {summary['mismatches']} mismatches -> {out}")
    return 0 if summary["survived"] == summary["trials"] and summary["trials"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
