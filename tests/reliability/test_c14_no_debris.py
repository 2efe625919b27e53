"""Class 14: SIGTERM unwinds like Ctrl-C, and staging folders of dead exports are swept."""

import os
import signal
import subprocess
import sys

import pytest

from mobilecnn.cli.app import _interrupt_on_sigterm
from mobilecnn.deploy.run_export import export_run

pytest.importorskip("onnxruntime")


def test_sigterm_raises_keyboard_interrupt():
    saved = signal.getsignal(signal.SIGTERM)
    try:
        _interrupt_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
    finally:
        signal.signal(signal.SIGTERM, saved)


def test_stale_staging_folder_of_a_dead_export_is_swept(tmp_path, folder_run):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".m.onnx.{pid}.abc123.export"
    stale.mkdir()
    (stale / "m.onnx").write_bytes(b"x" * 1000)
    live = tmp_path / f".m.onnx.{os.getpid()}.zzz999.export"
    live.mkdir()
    export_run(folder_run, "onnx", tmp_path / "m.onnx")
    assert not stale.exists()
    assert live.exists()


def test_sigterm_during_export_leaves_no_staging_folder(tmp_path, folder_run):
    out = tmp_path / "exp"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "mobilecnn.cli", "export", str(folder_run), "--format", "onnx",
                             "--out", str(out / "m.onnx")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    import time
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".export") for p in out.iterdir()):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert not [p for p in out.iterdir() if p.name.endswith(".export")]
