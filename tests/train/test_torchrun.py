"""torchrun on this machine: two "nodes" on 127.0.0.1 (c10d rendezvous), and elastic fault tolerance (a worker
killed by SIGKILL mid-epoch; torchrun --max-restarts restarts the group, --resume auto picks up the last
checkpoint, and the run ends with the weights of an uninterrupted one, bitwise)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilecnn.runs.checkpoints import latest_checkpoint

FASHION = Path(os.environ.get("MOBILECNN_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
SRC = str(Path(__file__).resolve().parents[2] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "") if e.get("PYTHONPATH") else SRC
    e["OMP_NUM_THREADS"] = "1"
    return e


def train_args(out: str, **extra: str) -> list[str]:
    args = {"--model": "mobilenet_v1_x0_25", "--out": out, "--subset": "1536", "--val-subset": "200",
            "--batch-size": "64", "--epochs": "1", "--threads": "1", "--seed": "7", "--checkpoint-every": "4",
            "--device": "cpu", **extra}
    return ["-m", "mobilecnn.cli", "train"] + [x for kv in args.items() for x in kv]


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


@pytest.mark.slow
@needs_fashion
def test_two_nodes_on_localhost_c10d(tmp_path):
    """Two torchrun launches (node ranks 0 and 1, one process each) meet through a c10d rendezvous on
    127.0.0.1 and train one model; each writes to a relative --out in its own working directory, so the
    directory that gets the run shows which process wrote: exactly one (global rank 0)."""
    port = free_port()
    procs = []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        cmd = TORCHRUN + ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                          "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "mobilecnn-test"] + train_args(
                              "run", **{"--subset": "1024", "--checkpoint-every": "100"})
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two-node run did not finish in 240 s")
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    written = [tmp_path / f"node{n}" / "run" for n in (0, 1) if (tmp_path / f"node{n}" / "run").exists()]
    assert len(written) == 1, f"expected one writer, found {written}"
    config = json.loads((written[0] / "config.json").read_text())
    assert config["settings"]["world_size"] == 2 and config["settings"]["device"] == "cpu"
    # global batch kept: 1024 images / 64 = 16 steps, each process 32 images per step
    assert json.loads((written[0] / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 16


@pytest.mark.slow
@needs_fashion
def test_elastic_restart_after_sigkill_ends_with_the_uninterrupted_weights(tmp_path):
    """mobilenet_v1 has dropout: each rank's RNG must come back from the checkpoint, not rank 0's."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    base = TORCHRUN + ["--nproc-per-node", "2", "--max-restarts", "3", "--monitor-interval", "0.2",
                       "--rdzv-backend", "c10d"]
    ref = subprocess.Popen(base + ["--rdzv-endpoint", f"127.0.0.1:{free_port()}"] + train_args(str(reference)),
                           env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = subprocess.Popen(base + ["--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
                           + train_args(str(killed), **{"--resume": "auto"}),
                           env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # once a mid-epoch checkpoint exists (24 steps, one every 4), SIGKILL one worker
        victim = None
        deadline = time.time() + 180
        while time.time() < deadline and run.poll() is None:
            ckpt = latest_checkpoint(killed) if killed.exists() else None
            if ckpt is not None and 8 <= int(ckpt.name.split("-")[1]) < 20:
                workers = children(run.pid)
                if len(workers) == 2:
                    victim = max(workers)
                    os.kill(victim, signal.SIGKILL)
                    break
            time.sleep(0.05)
        assert victim is not None, "the run ended or stalled before a mid-epoch checkpoint could be waited for"
        out_run = run.communicate(timeout=240)[0]
        out_ref = ref.communicate(timeout=240)[0]
    finally:
        for p in (ref, run):
            if p.poll() is None:
                p.kill()
    assert ref.returncode == 0, out_ref[-3000:]
    assert run.returncode == 0, out_run[-3000:]
    assert "resuming from" in out_run, out_run[-3000:]  # the restarted group resumed, did not start over
    assert json.loads((killed / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 24
    want, got = final_weights(reference), final_weights(killed)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_a_segmenter_trains_under_torchrun_and_its_miou_counts_every_val_image(tmp_path, seg_scenes):
    """Two processes: each takes half of the global batch and half of the val scenes; the confusion matrices are
    summed, so the logged mIoU equals one process's evaluation of the same weights over the whole set."""
    from mobilecnn.evaluate import evaluate_run

    out = tmp_path / "seg"
    cmd = TORCHRUN + ["--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                      f"127.0.0.1:{free_port()}", "-m", "mobilecnn.cli", "train", "--model",
                      "deeplabv3_mobilenet_v2_x0_35", "--data", str(seg_scenes), "--out", str(out), "--batch-size", "8",
                      "--epochs", "1", "--threads", "1", "--workers", "0", "--device", "cpu"]
    done = subprocess.run(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["world_size"] == 2 and config["settings"]["steps_per_epoch"] == 6
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    alone = evaluate_run(out, out_dir=tmp_path / "ev", batch_size=4)
    assert logged["val_miou"] == pytest.approx(alone["miou"], abs=1e-9)
    assert logged["val_loss"] == pytest.approx(alone["loss"], rel=1e-5)


@pytest.mark.slow
def test_a_detector_trains_under_torchrun_and_its_map_scores_every_val_image(tmp_path, det_scenes):
    """Two processes detect on halves of the val scenes; their COCO results are gathered, so the logged mAP equals
    one process's evaluation of the same weights over the whole set."""
    from mobilecnn.evaluate import evaluate_run

    out = tmp_path / "det"
    cmd = TORCHRUN + ["--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                      f"127.0.0.1:{free_port()}", "-m", "mobilecnn.cli", "train", "--model",
                      "ssdlite_mobilenet_v2_x0_35", "--data", str(det_scenes), "--out", str(out), "--batch-size", "8",
                      "--epochs", "1", "--resolution", "64", "--threads", "1", "--workers", "0", "--device", "cpu"]
    done = subprocess.run(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["world_size"] == 2 and config["settings"]["steps_per_epoch"] == 6
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    alone = evaluate_run(out, out_dir=tmp_path / "ev", batch_size=4)
    assert alone["images"] == 12
    assert logged["val_mAP"] == pytest.approx(alone["mAP"], abs=1e-9)
    assert logged["val_loss"] == pytest.approx(alone["loss"], rel=1e-5)


@needs_fashion
def test_a_refusal_on_rank_0_ends_every_rank_cleanly(tmp_path):
    """A directory that holds something else is refused by rank 0 and, with its message, by every rank, before
    any collective: no rank goes on into DDP set-up to die in gloo (or by torchrun's SIGTERM)."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("not a run")
    done = subprocess.run([*TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()),
                           *train_args(str(out))], env=env(), capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode != 0
    assert text.count("is not empty and holds no mobilecnn run; choose another --out") == 2, text[-3000:]
    assert "gloo" not in text.lower() and "KeyboardInterrupt" not in text
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written
