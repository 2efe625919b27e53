"""Child processes for ``auto``: values and errors come back, crashes and hangs become ChildCrashed."""

import operator
import os
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from mobilecnn.deploy.auto import AutoConfig, auto_export
from mobilecnn.deploy.export import ExportImages
from mobilecnn.deploy.timing import paired_rounds
from mobilecnn.deploy.workers import ChildCrashed, TimingWorker, call_in_child


def test_call_in_child_returns_the_value_and_shares_tensors():
    assert call_in_child(operator.add, 2, 3) == 5
    big = torch.arange(1_000_000, dtype=torch.float32)
    assert call_in_child(torch.Tensor.tolist, big)[-1] == 999_999.0  # the argument went through shared memory


def test_the_callers_tensors_and_their_numpy_views_are_left_alone():
    # sending a tensor moves its storage into shared memory and frees the old one: a numpy view of it would dangle
    images = torch.randn(8, 3, 224, 224)
    view = images[:1].numpy()
    model = torch.nn.Conv2d(3, 4, 3)
    assert call_in_child(torch.Tensor.tolist, images[0, 0, 0])[:2] == images[0, 0, 0, :2].tolist()
    call_in_child(operator.attrgetter("in_channels"), model)
    assert not images.is_shared() and not model.weight.is_shared()
    assert view.ctypes.data == images.data_ptr() and float(view.sum()) == pytest.approx(float(images[:1].sum()), rel=1e-5)


def test_call_in_child_reports_an_error_by_type_and_message():
    with pytest.raises(RuntimeError, match="ValueError: invalid literal"):
        call_in_child(int, "not a number")


def test_a_crash_or_an_exit_status_is_named(tmp_path):
    log = tmp_path / "child.log"
    with pytest.raises(ChildCrashed, match="SIGABRT"):
        call_in_child(os.abort, log=log)
    with pytest.raises(ChildCrashed, match="exited with status 3"):
        call_in_child(os._exit, 3)


def test_a_hang_is_killed_after_the_timeout():
    t0 = time.monotonic()
    with pytest.raises(ChildCrashed, match="did not finish"):
        call_in_child(time.sleep, 60, timeout=1)
    assert time.monotonic() - t0 < 30


def test_timing_worker_times_a_real_file_and_refuses_a_broken_one(tmp_path):
    pytest.importorskip("onnxruntime")
    from mobilecnn.deploy.export import ExportConfig, export_model
    from mobilecnn.models import create_model

    model = create_model("shufflenet_v1_g3_x0_5", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    path = tmp_path / "m.onnx"
    export_model(model, path, ExportImages(x, x), ExportConfig("onnx"))
    with TimingWorker(path, threads=1, x=x[:1].numpy()) as worker:
        times = worker.burst(3)
    assert len(times) == 3 and all(t > 0 for t in times)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx at all")
    with pytest.raises(RuntimeError, match="broken.onnx"):
        TimingWorker(broken, threads=1, x=x[:1].numpy())


def test_a_timing_child_that_dies_while_starting_does_not_hang_the_caller(tmp_path):
    # An unguarded script: spawn re-runs it in the child, which dies while starting. With a large input in the
    # start arguments the caller used to block forever writing them.
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from mobilecnn.deploy.workers import TimingWorker
        TimingWorker("missing.onnx", threads=1, x=np.zeros((4, 3, 512, 512), np.float32), timeout=60)
    """))
    import subprocess
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "ChildCrashed: exited with status 1" in done.stderr, done.stderr[-2000:]


def test_paired_rounds_drops_a_crashing_candidate_and_keeps_the_others_aligned():
    calls = {"n": 0}

    def crashes_in_round_two(n):
        calls["n"] += 1
        if calls["n"] > 2:
            raise ChildCrashed("crashed with SIGSEGV")
        return [0.001] * n

    t = paired_rounds({"good": lambda n: [0.002] * n, "other": lambda n: [0.003] * n,
                       "bad": crashes_in_round_two}, seconds=0.01, min_rounds=6)
    assert t["failed"] == {"bad": "crashed with SIGSEGV"}
    assert set(t["per_round_ms"]) == {"good", "other"}
    assert len(t["per_round_ms"]["good"]) == len(t["per_round_ms"]["other"]) == t["rounds"] >= 6
    assert t["median_ms"]["good"] == pytest.approx(2.0)


_ABORTING_MODEL = textwrap.dedent('''
    import os
    from torch import nn

    class AbortsWhenRun(nn.Module):
        """A stand-in for a runtime or exporter that dies natively: any forward kills the process."""
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
        def forward(self, x):
            os.abort()
''')


def test_auto_survives_a_candidate_that_crashes_its_process(tmp_path, monkeypatch):
    (tmp_path / "aborting_model.py").write_text(_ABORTING_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))  # the spawned child imports the model's class from here
    import aborting_model

    x = torch.randn(2, 1, 8, 8)
    result = auto_export(aborting_model.AbortsWhenRun(), tmp_path / "out" / "m", ExportImages(x, x),
                         AutoConfig(seconds=0.1, candidates=(("torchscript", "fp32"),)))
    (row,) = result["candidates"]
    assert row["status"] == "refused" and "SIGABRT" in row["why"] and "export process" in row["why"]
    assert result["kept"] is None and result["best"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.auto.refused.json", "m.auto.refused.md"]
    sys.modules.pop("aborting_model", None)
