"""Small real-file fixtures for the reliability tests: an image-folder dataset and a run trained on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilecnn.train import TrainConfig, train

COLOURS = {"a": (200, 40, 40), "b": (40, 200, 40), "c": (40, 40, 200)}


def write_folder_dataset(root: Path, per_class: int = 4, classes: str = "abc", size: int = 40) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``: noisy images of one colour per class."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(np.array(COLOURS[cls]) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def train_tiny(data: Path, out: Path, model: str = "mobilenet_v1_x0_25", **kw) -> Path:
    cfg = dict(model=model, data=str(data), out=str(out), resolution=32, batch_size=4, epochs=1, max_steps=2,
               threads=1, workers=0, ema=0.0)
    cfg.update(kw)
    train(TrainConfig(**cfg))
    return out


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("folder") / "data")


@pytest.fixture(scope="session")
def folder_run(tmp_path_factory, folder_data) -> Path:
    return train_tiny(folder_data, tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture
def make_folder():
    """``make_folder(root, per_class=4, classes="abc", size=40)`` -> an image-folder dataset."""
    return write_folder_dataset


@pytest.fixture
def train_run():
    """``train_run(data, out, model=..., **TrainConfig fields)`` -> a run trained for 2 steps by default."""
    return train_tiny
