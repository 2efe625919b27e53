"""Class 13: atomic writes respect the umask and keep an existing file's mode."""

import os
import stat

from mobilecnn.cli import main
from mobilecnn.files import atomic_write_text


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_new_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        assert _mode(tmp_path / "a.json") == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
        assert _mode(tmp_path / "b.json") == 0o600
    finally:
        os.umask(old)


def test_replacing_keeps_the_existing_mode(tmp_path):
    target = tmp_path / "tables.md"
    target.write_text("old")
    os.chmod(target, 0o640)
    assert main(["tables", "--out", str(target)]) == 0
    assert _mode(target) == 0o640
    assert "ShuffleNet" in target.read_text()


def test_run_files_are_readable_by_others(folder_run):
    for name in ("config.json", "metrics.jsonl", "checkpoints/LATEST"):
        assert _mode(folder_run / name) & 0o044 == 0o044, name


def test_checkpoint_weights_follow_the_umask(folder_run):
    """safetensors writes 0600 whatever the umask: a run shared with a group must still be readable."""
    ckpts = [p for p in (folder_run / "checkpoints").iterdir() if p.is_dir()]
    for f in ckpts[-1].iterdir():
        assert _mode(f) & 0o044 == 0o044, f.name


def test_exported_files_follow_the_umask_and_keep_a_replaced_mode(tmp_path):
    import torch

    from mobilecnn import create_model
    from mobilecnn.deploy.export import ExportConfig, ExportImages, export_model

    model = create_model("mobilenet_v1_x0_25", num_classes=3, in_chans=1, small_input=True).eval()
    x = torch.randn(2, 1, 32, 32)
    out = tmp_path / "m.onnx"
    old = os.umask(0o022)
    try:
        export_model(model, out, ExportImages(x[:1], x), ExportConfig("onnx"), sidecar={"model": "m"})
        assert _mode(out) == 0o644 and _mode(str(out) + ".mobilecnn.json") == 0o644
        os.chmod(out, 0o640)
        export_model(model, out, ExportImages(x[:1], x), ExportConfig("onnx"), sidecar={"model": "m"})
        assert _mode(out) == 0o640
    finally:
        os.umask(old)
