"""Runs on disk: the run directory (its layout, lock, config and the trained model) and its training checkpoints.

The weights-file format itself (safetensors with a model description) is :mod:`mobilecnn.models.weights_file`;
atomic writes are :mod:`mobilecnn.files`.
"""

from .checkpoints import LATEST, latest_checkpoint, load_training_state, save_training_checkpoint
from .rundir import LoadedModel, append_jsonl, load_trained, prepare_run_dir, read_config, run_lock, write_config

__all__ = ["LATEST", "latest_checkpoint", "load_training_state", "save_training_checkpoint", "LoadedModel",
           "load_trained", "run_lock", "prepare_run_dir", "append_jsonl", "write_config", "read_config"]
