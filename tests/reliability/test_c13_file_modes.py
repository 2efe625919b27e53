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
