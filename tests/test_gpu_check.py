"""benchmarks/gpu_check.sh cannot rot: its --smoke mode runs every part of it on the CPU with tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"


def _stamp(path: Path) -> float | None:
    return path.stat().st_mtime_ns if path.exists() else None


def test_gpu_check_smoke_runs_the_whole_script(tmp_path):
    out = tmp_path / "gpu_check.json"
    before = _stamp(RESULTS)
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["meta"]["smoke"] is True and "not a measurement" in report["meta"]["note"]
    assert report["meta"]["complete"] is True
    assert report["meta"]["device"] == "cpu"
    models = {r["model"] for r in report["train_synthetic"]}
    assert {"mobilenet_v2_x1_0", "shufflenet_v1_g3_x1_0", "torchvision.mobilenet_v2"} <= models
    assert all(r["img_per_s"] > 0 for r in report["train_synthetic"] + report["train_folder"] + report["eval"])
    assert {r["model"] for r in report["train_folder"]} == models
    assert any(r["model"] == "torchvision.mobilenet_v2" for r in report["latency"])
    assert all("median_ms" in r for r in report["latency"])
    assert report["decode"]["cpu_one_thread_img_per_s"] > 0
    assert {"train_speedup_vs_plain_synthetic", "train_speedup_vs_plain_folder",
            "folder_gpu_utilisation_mean_pct"} <= set(report["aims"])
    assert _stamp(RESULTS) == before  # a smoke run never touches the committed results


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_without_a_gpu_refuses_to_measure(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    assert gpu_check.main([]) == 2
    assert "--smoke" in capsys.readouterr().err
