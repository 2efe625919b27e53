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


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_killed_writers_temporary_file_is_swept_by_the_next_write(tmp_path):
    import torch

    from mobilecnn.models.weights_file import save_weights

    dead = tmp_path / f".w.safetensors.{_dead_pid()}.k1ll3d_x.tmp"
    dead.write_bytes(b"half a file")
    live = tmp_path / f".w.safetensors.{os.getpid()}.wr1t1ng.tmp"  # a concurrent writer: left alone
    live.write_bytes(b"being written")
    other = tmp_path / f".other.bin.{_dead_pid()}.abc.tmp"  # another destination's: not ours to judge now
    other.write_bytes(b"x")
    save_weights(tmp_path / "w.safetensors", {"a": torch.zeros(2)})
    assert not dead.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "w.safetensors"])


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((line.split()[1] for line in fh if line.startswith("State:")), None)
    except FileNotFoundError:
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_process_dies_with_its_killed_parent(tmp_path):
    """The child is killed only once it runs its work (a child still starting would exit on its own when the
    pipe from its dead parent closes), so this fails without the kernel's parent-death signal."""
    import time

    pid_file = tmp_path / "child.pid"
    script = tmp_path / "parent.py"
    script.write_text(f"""
import os, signal, threading, time
from mobilecnn.deploy.workers import call_in_child

def work():
    open({str(pid_file)!r}, "w").write(str(os.getpid()))
    time.sleep(120)

def kill_parent():
    while not os.path.exists({str(pid_file)!r}):
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    threading.Thread(target=kill_parent, daemon=True).start()
    call_in_child(work)
""")
    parent = subprocess.run([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=120)  # no pipes: an orphaned child holding them would block the wait
    assert parent.returncode == -signal.SIGKILL
    child = int(pid_file.read_text())
    for _ in range(50):  # gone (or a zombie awaiting its reaper) within seconds, not 120 s
        if _state(child) in (None, "Z"):
            break
        time.sleep(0.1)
    state = _state(child)
    if state not in (None, "Z"):
        os.kill(child, signal.SIGKILL)
    assert state in (None, "Z")
