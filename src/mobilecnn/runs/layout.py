"""The names inside a run directory, written once (read by the run, its checkpoints, eval and reproduce)::

    RUN/
      config.json          CONFIG_FILE: model, data description, every argument (rundir.write_config)
      metrics.jsonl        METRICS_FILE: one line per epoch
      curves.png           CURVES_FILE
      .lock                LOCK_FILE: held by the training process
      eval/                EVAL_DIR: what `mobilecnn eval` writes by default
      checkpoints/         CHECKPOINTS_DIR
        LATEST             LATEST: the name of the last complete checkpoint
        step-00001234/     checkpoint_name(step)
          model.safetensors  MODEL_WEIGHTS
          ema.safetensors    EMA_WEIGHTS (when EMA is on)
          state.safetensors  STATE_TENSORS: optimizer tensors and RNG state
          state.json         STATE_FILE: epoch, step, the optimizer's other state; written last
"""

from __future__ import annotations

import re

__all__ = ["CONFIG_FILE", "METRICS_FILE", "CURVES_FILE", "LOCK_FILE", "EVAL_DIR", "CHECKPOINTS_DIR", "LATEST",
           "MODEL_WEIGHTS", "EMA_WEIGHTS", "STATE_TENSORS", "STATE_FILE", "STEP_NAME", "checkpoint_name"]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
LOCK_FILE = ".lock"
EVAL_DIR = "eval"
CHECKPOINTS_DIR = "checkpoints"
LATEST = "LATEST"
MODEL_WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
STATE_TENSORS = "state.safetensors"
STATE_FILE = "state.json"
#: A checkpoint directory's name; only names of this form are ever followed or pruned.
STEP_NAME = re.compile(r"step-\d{8,}")


def checkpoint_name(step: int) -> str:
    """``step-00001234``: zero-padded so that names sort in step order."""
    return f"step-{step:08d}"
