"""Runs on disk: atomic file writes, safetensors checkpoints, the run directory.

Import :mod:`mobilecnn.runs.rundir` explicitly: it builds models, and the model registry itself
reads weight files through :mod:`.checkpoints`.
"""

from .checkpoints import latest_checkpoint, load_training_state, load_weights, read_metadata, save_training_checkpoint, save_weights
from .files import atomic_write, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "latest_checkpoint", "load_training_state",
           "load_weights", "read_metadata", "save_training_checkpoint", "save_weights"]
