"""Files written and read safely: atomic writes (a reader sees the old file or the new one, never half of
one), JSON objects read with an error naming the file, and file digests."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "read_bounded", "read_json_object", "sha256_of",
           "mode_for", "process_gone", "MAX_JSON_OBJECT_BYTES"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mode_for(path: Path) -> int:
    """The mode a file written to ``path`` gets: the existing file's (a replacement keeps it), else what ``open``
    would give a new file under the umask. Writers that create files 0600 (``mkstemp``, safetensors) are
    chmod-ed to it before they are moved into place."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_current_umask()


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists (one of another user, or a PID out of range, counts as present)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def _sweep_dead_temporaries(path: Path) -> None:
    """Remove ``.NAME.PID.XXXX.tmp`` files of :func:`atomic_write` for ``path`` whose process is gone (killed
    mid-write: SIGKILL, power cut); a live writer's file is left alone."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.\w+\.tmp")
    for entry in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.fullmatch(entry.name)
        if match and not entry.is_symlink() and entry.is_file() and process_gone(int(match.group(1))):
            with contextlib.suppress(OSError):
                entry.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a half-written file. On
    failure the temporary file is removed and the error propagates. The new file keeps the mode of
    the file it replaces, and otherwise gets the umask's (``mkstemp`` alone would make it 0600). The temporary
    file's name carries the writer's PID, so one left by a killed process is swept by the next write of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_dead_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode_for(path))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


#: The largest JSON object file read (configs, sidecars, results: kilobytes to a few megabytes).
MAX_JSON_OBJECT_BYTES = 64 << 20


def read_bounded(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes``; ``ValueError`` naming the file and
    ``what`` it should be otherwise (``/dev/zero``, a FIFO or a huge file are never read whole)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open: opening a FIFO blocks
            raise ValueError(f"{path} is not a regular file; it must be {what}")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ValueError(f"{path} is unreadable ({exc.strerror or exc}); it must be {what}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{path} is larger than {max_bytes >> 20 or 1} MiB; it must be {what}")
    return data


def read_json_object(path: str | os.PathLike, writer: str, error: type[Exception] = ValueError) -> dict:
    """The JSON object in ``path`` (a file ``writer`` wrote); ``error`` names the file when it is unreadable,
    not JSON, or not an object."""
    path = Path(path)
    try:
        raw = read_bounded(path, MAX_JSON_OBJECT_BYTES, f"the JSON object {writer} wrote")
    except ValueError as exc:
        raise error(str(exc)) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise error(f"{path} is unreadable ({exc}); it must be the JSON object {writer} wrote") from None
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not the object {writer} writes")
    return data


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
