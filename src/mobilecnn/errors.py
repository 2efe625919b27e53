"""Every error mobilecnn raises on purpose, and the one map from error to process exit code.

All derive from :class:`MobileCNNError`; each also derives from the built-in exception a Python user
would expect (``ValueError`` for bad input, ``ImportError`` for a missing package), so ``except
ValueError`` keeps working. Messages are one line that names what was wrong and what is accepted.
The CLI prints ``str(error)`` and exits with :func:`exit_code`; library code never prints.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MobileCNNError",
    "UsageError",
    "UnknownModelError",
    "DataError",
    "CheckpointError",
    "TrainError",
    "RunLockedError",
    "NonFiniteError",
    "NonFiniteLossError",
    "ExportVerificationError",
    "Int8AccuracyError",
    "MissingBackendError",
    "DownloadError",
    "EXIT_CODES",
    "exit_code",
]


class MobileCNNError(Exception):
    """Base of every error mobilecnn raises on purpose."""


class UsageError(MobileCNNError, ValueError):
    """An option or argument that is not accepted (the message says what is)."""


class UnknownModelError(UsageError):
    """A model name that is not registered; the message lists the closest names."""


class DataError(MobileCNNError, ValueError):
    """A problem with the data the user can fix; the message names the problem and the fix."""


class CheckpointError(MobileCNNError, ValueError):
    """A checkpoint or model file that is missing, unreadable, or belongs to another model."""


class TrainError(MobileCNNError, ValueError):
    """A training request that cannot run as given (bad option, directory holding another run...)."""


class RunLockedError(TrainError):
    """Another process is training into the same run directory."""


class NonFiniteError(MobileCNNError, ValueError):
    """A model produced NaN or infinite outputs: a result built on them would be meaningless."""


class NonFiniteLossError(MobileCNNError, RuntimeError):
    """The training loss became NaN or inf; the last good checkpoint is kept."""


class ExportVerificationError(MobileCNNError, ValueError):
    """The written file disagreed with PyTorch; it has been deleted. ``report`` holds the numbers."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class Int8AccuracyError(MobileCNNError, ValueError):
    """int8 lost more top-1 accuracy than allowed; the file was deleted. ``report`` holds the numbers."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class DownloadError(MobileCNNError, ValueError):
    """A published file could not be fetched or failed its hash check; nothing was left in the cache."""


class MissingBackendError(MobileCNNError, ImportError):
    """An optional deployment package (onnxruntime, openvino, executorch, ...) is not installed."""


#: Exit status of the CLI for each error class (the first matching class in this order wins).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (KeyboardInterrupt, 130),
    (NonFiniteLossError, 3),
    (MobileCNNError, 2),
    (ValueError, 2),  # argument checks of torch/numpy reached through our API
    (TypeError, 2),
    (FileNotFoundError, 2),
    (FileExistsError, 2),
    (IsADirectoryError, 2),
    (NotADirectoryError, 2),
    (PermissionError, 2),
    (OSError, 1),  # disk full, read-only output...
)


def exit_code(error: BaseException) -> int | None:
    """The CLI exit status for ``error``; ``None`` for an unexpected error (a bug: let it show)."""
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return None
