import os
from pathlib import Path

import pytest
import torch

# MOBILECNN_TEST_THREADS=1 keeps the suite usable on a machine where another job holds a core
torch.set_num_threads(int(os.environ.get("MOBILECNN_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


@pytest.fixture
def one_thread():
    """One torch thread: the CI box has 2 cores shared with other jobs, and an oversubscribed torch
    runs orders of magnitude slower (MEASURED.md)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _skip_without_fashion_mnist() -> None:
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file() and not os.environ.get(
            "MOBILECNN_DATA_DIR"):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A Fashion-MNIST run trained for a few steps (shared by predict/export tests)."""
    from mobilecnn.train import TrainConfig, train

    _skip_without_fashion_mnist()
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(TrainConfig(model="shufflenet_v1_g3_x0_5", out=str(out), subset=1024, val_subset=500, batch_size=64,
                      epochs=1, threads=1, seed=0))
    return out


@pytest.fixture(scope="session")
def seg_scenes(tmp_path_factory):
    """A small Fashion-MNIST scenes folder (Pascal VOC layout: 48 train / 12 val scenes of 64 px)."""
    from mobilecnn.data.scenes import ScenesConfig, generate_scenes

    _skip_without_fashion_mnist()
    out = tmp_path_factory.mktemp("scenes") / "seg"
    generate_scenes(ScenesConfig(task="segmentation", out=str(out), train_count=48, val_count=12, size=64, seed=1))
    return out


@pytest.fixture(scope="session")
def det_scenes(tmp_path_factory):
    """A small Fashion-MNIST scenes folder (COCO layout: 48 train / 12 val scenes of 64 px)."""
    from mobilecnn.data.scenes import ScenesConfig, generate_scenes

    _skip_without_fashion_mnist()
    out = tmp_path_factory.mktemp("scenes") / "det"
    generate_scenes(ScenesConfig(task="detection", out=str(out), train_count=48, val_count=12, size=64, seed=1))
    return out


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory, seg_scenes):
    """A Mobile DeepLabv3 (MobileNetV2 x0.35) run trained for a few steps on :func:`seg_scenes`."""
    from mobilecnn.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "seg"
    train(TrainConfig(model="deeplabv3_mobilenet_v2_x0_35", data=str(seg_scenes), out=str(out), batch_size=8,
                      epochs=1, threads=1, seed=0, workers=0))
    return out
