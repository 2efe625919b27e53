import os

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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A Fashion-MNIST run trained for a few steps (shared by predict/export tests)."""
    from pathlib import Path

    from mobilecnn.train import TrainConfig, train

    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file() and not os.environ.get(
            "MOBILECNN_DATA_DIR"):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(TrainConfig(model="shufflenet_v1_g3_x0_5", out=str(out), subset=1024, val_subset=500, batch_size=64,
                      epochs=1, threads=1, seed=0))
    return out
