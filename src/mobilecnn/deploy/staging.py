"""Staging folders: files are written beside their destination and moved into place only when verified.

A staging folder is named ``.NAME.PID.XXXX.KIND`` inside the destination folder, so a commit is an
``os.replace`` on one file system (a crash leaves the old file or the new one, never half of one), and a
folder left by a killed process (SIGKILL, power cut) is recognised by its dead PID and swept by the
next export into that folder; a live concurrent export's folder is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..files import mode_for, process_gone

__all__ = ["staging_folder", "commit", "sweep_stale"]

_NAME = re.compile(r"\..+\.(\d+)\.[^.]+\.(export|auto)")


def sweep_stale(out_dir: Path) -> None:
    """Remove staging folders of our naming in ``out_dir`` whose process is gone."""
    for entry in out_dir.glob(".*"):
        match = _NAME.fullmatch(entry.name)
        if match and not entry.is_symlink() and entry.is_dir() and process_gone(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def staging_folder(destination: Path, kind: str) -> Iterator[Path]:
    """A fresh staging folder for ``destination`` (swept of dead ones first), removed on exit."""
    out_dir = destination.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale(out_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{destination.name}.{os.getpid()}.", suffix=f".{kind}", dir=out_dir))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def commit(stage: Path, out_dir: Path, main_name: str) -> None:
    """Move the staged files into ``out_dir`` with ``os.replace``, fsynced; the main file (e.g. .xml) last."""
    files = sorted((p for p in stage.iterdir() if p.is_file()), key=lambda p: p.name == main_name)
    for f in files:  # writers and mkstemp make some files 0600: the umask's mode, or the replaced file's
        os.chmod(f, mode_for(out_dir / f.name))
        _fsync(f)
    for f in files:
        os.replace(f, out_dir / f.name)
    try:
        fd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
