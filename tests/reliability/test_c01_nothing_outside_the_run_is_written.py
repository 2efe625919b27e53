"""Class 1: a refused ``train`` writes nothing, and the lock never writes through a link."""

from pathlib import Path

import pytest

from mobilecnn.cli import main
from mobilecnn.errors import TrainError
from mobilecnn.runs.rundir import run_lock

ARGS = ["train", "--model", "mobilenet_v1_x0_25", "--epochs", "1", "--max-steps", "1", "--threads", "1"]


def test_lock_symlink_to_a_user_file_is_refused_and_the_file_untouched(tmp_path, folder_data):
    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(precious)
    code = main([*ARGS, "--data", str(folder_data), "--resolution", "32", "--workers", "0", "--out", str(run)])
    assert code == 2
    assert precious.read_text() == "do not touch"
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


def test_run_lock_refuses_a_link(tmp_path):
    target = tmp_path / "target"
    target.write_text("x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(target)
    with pytest.raises(TrainError, match="symbolic link"):
        with run_lock(tmp_path / "run"):
            pass
    assert target.read_text() == "x"


def test_refused_out_root_leaves_no_lock(capsys):
    existed = Path("/.lock").exists()
    assert main([*ARGS, "--subset", "64", "--out", "/"]) == 2
    assert "holds no mobilecnn run" in capsys.readouterr().err
    assert Path("/.lock").exists() == existed


def test_data_error_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert main([*ARGS, "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert not out.exists() and not (tmp_path / "new").exists()


def test_out_that_is_a_file_is_named(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main([*ARGS, "--subset", "64", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "x"
