"""Child processes for ``export --format auto``: a runtime that crashes refuses one candidate, not the run.

Runtimes and exporters are native code. Loading several of them into one interpreter and timing them
side by side crashed it once (a segmentation fault at 2 threads, in CI), which took the caller down
with every other candidate. So ``auto``:

* exports and verifies each candidate in its own spawned process (:func:`call_in_child`): a crash
  or an abort there becomes :class:`ChildCrashed`, and that candidate is refused with the signal;
* loads each verified file in its own long-lived timing process (:class:`TimingWorker`). The parent
  asks one process at a time for a burst of calls, in a shuffled order each round, so the rounds stay
  paired (a background load hits every candidate alike) while no two runtimes share an interpreter.
  Only the asked process runs; the others wait on their pipe.

Processes are started with ``spawn`` (never ``fork``: a forked copy of a process that already holds
runtime thread pools can deadlock). Tensors passed to a child travel through shared memory
(``torch.multiprocessing``), so large calibration sets are not copied. A child's stdout and stderr go
to a log file whose tail is quoted when it dies.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as torch_mp

__all__ = ["ChildCrashed", "call_in_child", "TimingWorker", "shared_copy"]

_SPAWN = torch_mp.get_context("spawn")
_LOG_TAIL = 400


class ChildCrashed(RuntimeError):
    """The child process died (signal or exit status) or did not answer in time."""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not finish in time (killed)"
    if code < 0:
        try:
            return f"crashed with {signal.Signals(-code).name}"
        except ValueError:
            return f"crashed with signal {-code}"
    return f"exited with status {code}"


def _log_tail(log: Path | None) -> str:
    if log is None or not log.is_file():
        return ""
    text = log.read_bytes()[-_LOG_TAIL:].decode("utf-8", "replace").strip()
    return f"; last output: {' '.join(text.split())}" if text else ""


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this child when its parent dies (Linux ``PR_SET_PDEATHSIG``): a killed ``export``
    must not leave candidates being written or timed behind it. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _redirect_output(log: str | None) -> None:
    if log is None:
        return
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _call_main(conn: Any, log: str | None, torch_threads: int, fn: Callable[..., Any], args: tuple,
               kwargs: dict, parent: int) -> None:
    _die_with_parent(parent)
    _redirect_output(log)
    torch.set_num_threads(torch_threads)
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as text
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()[-2000:]))
    else:
        conn.send(("ok", result, None))
    conn.close()


def shared_copy(value: Any) -> Any:
    """``value`` ready to travel to a child through shared memory without touching the caller's own copy.

    Sending a tensor to a child moves its storage into shared memory and frees the old memory, which any numpy
    view the caller still holds points into (a segfault, seen): send a shared clone instead. Tensors and
    modules already in shared memory go as they are; anything else is pickled as usual.
    """
    if isinstance(value, torch.Tensor):
        return value if value.is_shared() else value.clone().share_memory_()
    if isinstance(value, torch.nn.Module):
        tensors = [*value.parameters(), *value.buffers()]
        return value if all(t.is_shared() for t in tensors) else copy.deepcopy(value).share_memory()
    return value


def _stop(proc: Any, grace: float = 5.0) -> None:
    proc.join(grace)
    if proc.is_alive():
        proc.kill()
        proc.join()


def call_in_child(fn: Callable[..., Any], *args: Any, log: str | Path | None = None, timeout: float | None = None,
                  **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a fresh spawned process; its return value must pickle (and not be a tensor:
    a shared tensor outlives the child that shared it only by a race). Tensor and module arguments travel as
    shared-memory copies (:func:`shared_copy`); the caller's own are left as they are.

    An exception in the child comes back as ``RuntimeError("<Type>: <message>")``; a child that dies or
    takes longer than ``timeout`` seconds raises :class:`ChildCrashed`. ``fn`` must be importable
    (a module-level function).
    """
    args = tuple(shared_copy(a) for a in args)
    kwargs = {k: shared_copy(v) for k, v in kwargs.items()}
    receiver, sender = _SPAWN.Pipe(duplex=False)
    proc = _SPAWN.Process(target=_call_main, args=(sender, str(log) if log else None, torch.get_num_threads(), fn,
                                                   args, kwargs, os.getpid()))
    proc.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            proc.kill()
            proc.join()
            raise ChildCrashed(_describe_exit(None) + _log_tail(Path(log) if log else None))
        status, value, _ = receiver.recv()
    except EOFError:
        proc.join()
        raise ChildCrashed(_describe_exit(proc.exitcode) + _log_tail(Path(log) if log else None)) from None
    finally:
        receiver.close()
        _stop(proc)
    if status == "error":
        raise RuntimeError(value)
    return value


def _timing_main(conn: Any, log: str | None, path: str, threads: int, parent: int) -> None:
    _die_with_parent(parent)
    _redirect_output(log)
    from .formats import load_runtime  # the child's own import: only this runtime lives here

    x = conn.recv()[1]
    try:
        runtime = load_runtime(path, threads=threads, trusted=True)
        runtime(x)
    except Exception as exc:  # noqa: BLE001
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        times = []
        for _ in range(msg[1]):
            t0 = time.perf_counter()
            runtime(x)
            times.append(time.perf_counter() - t0)
        conn.send(("ok", times))


class TimingWorker:
    """One exported file loaded in its own process; :meth:`burst` times ``n`` calls there.

    Raises :class:`ChildCrashed` when the process dies (on load or during a burst) and ``RuntimeError``
    when the file cannot be loaded.
    """

    def __init__(self, path: str | Path, *, threads: int, x: np.ndarray, log: str | Path | None = None,
                 timeout: float = 300.0) -> None:
        self.log = Path(log) if log else None
        self.timeout = timeout
        self._conn, child = _SPAWN.Pipe(duplex=True)
        self._proc = _SPAWN.Process(target=_timing_main, args=(child, str(log) if log else None, str(path), threads,
                                                               os.getpid()))
        self._proc.start()
        child.close()
        # The input goes through the connection, not the start arguments: multiprocessing writes those into a
        # pipe whose read end it holds itself until the write ends, so a child that dies while starting (an
        # unguarded ``__main__`` re-run by spawn, say) left the caller blocked forever on a large input.
        try:
            self._conn.send(("input", np.array(x, dtype=np.float32, copy=True)))
        except (BrokenPipeError, ConnectionError, OSError):
            self._proc.join()
            raise ChildCrashed(_describe_exit(self._proc.exitcode) + _log_tail(self.log)) from None
        status, detail = self._receive()
        if status == "error":
            self.close()
            raise RuntimeError(detail)

    def _receive(self) -> tuple[str, Any]:
        try:
            if not self._conn.poll(self.timeout):
                self._proc.kill()
                self._proc.join()
                raise ChildCrashed(_describe_exit(None) + _log_tail(self.log))
            return self._conn.recv()
        except (EOFError, ConnectionError, OSError):
            self._proc.join()
            raise ChildCrashed(_describe_exit(self._proc.exitcode) + _log_tail(self.log)) from None

    def burst(self, n: int) -> list[float]:
        """Seconds of each of ``n`` back-to-back calls."""
        try:
            self._conn.send(("run", n))
        except (BrokenPipeError, ConnectionError, OSError):
            self._proc.join()
            raise ChildCrashed(_describe_exit(self._proc.exitcode) + _log_tail(self.log)) from None
        return self._receive()[1]

    def close(self) -> None:
        try:
            self._conn.send(("stop", 0))
        except (BrokenPipeError, ConnectionError, OSError):
            pass
        self._conn.close()
        _stop(self._proc)

    def __enter__(self) -> TimingWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
