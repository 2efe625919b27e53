"""Class 9: memory does not grow with classes, images or hostile sizes."""

import gzip
import time

import numpy as np
import pytest

from mobilecnn.cli import main
from mobilecnn.data.fashion_mnist import read_fashion_mnist
from mobilecnn.data.images import Preprocessing
from mobilecnn.deploy import predict as predict_mod
from mobilecnn.errors import DataError
from mobilecnn.plots import MAX_CONFUSION_CLASSES, plot_confusion


def test_confusion_figure_of_a_thousand_classes_stays_small(tmp_path):
    n = 1000
    cm = np.eye(n, dtype=np.int64) * 5
    cm[3, 7] = 9
    t0 = time.perf_counter()
    out = plot_confusion(cm.tolist(), [f"class {i}" for i in range(n)], tmp_path / "c.png")
    assert time.perf_counter() - t0 < 60
    assert out.stat().st_size < 2_000_000
    assert MAX_CONFUSION_CLASSES <= 50


def test_predict_streams_in_batches(tmp_path, folder_run, monkeypatch):
    from PIL import Image

    for i in range(10):
        Image.new("RGB", (40, 40), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
    predictor = predict_mod.load_predictor(folder_run)
    seen = []
    real = predict_mod.preprocess_image
    monkeypatch.setattr(predict_mod, "preprocess_image", lambda p, pr: (seen.append(p), real(p, pr))[1])
    stream = predict_mod.iter_predictions([tmp_path], predictor, topk=1, batch_size=4)
    first = next(stream)
    assert first.top and len(seen) == 4  # only the first batch was decoded
    assert len(list(stream)) == 9


def _idx_gz(path, dims, payload_bytes):
    header = (2051).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as fh:
        fh.write(header)
        chunk = bytes(1 << 20)
        for _ in range(payload_bytes >> 20):
            fh.write(chunk)


def test_gzip_bomb_dataset_is_refused_without_decompressing_it(tmp_path):
    _idx_gz(tmp_path / "train-images-idx3-ubyte.gz", (100000, 1000, 1000), 1 << 20)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress((2049).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x00"))
    with pytest.raises(DataError, match="announces"):
        read_fashion_mnist("train", tmp_path)


def test_payload_longer_than_its_header_is_refused_early(tmp_path):
    _idx_gz(tmp_path / "train-images-idx3-ubyte.gz", (1, 28, 28), 64 << 20)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress((2049).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x00"))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="more than 784"):
        read_fashion_mnist("train", tmp_path)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("resolution", [10**6, 0, -3, "224", 2.5])
def test_sidecar_resolution_out_of_range_is_refused(resolution):
    with pytest.raises(DataError, match="resolution"):
        Preprocessing.from_dict({"resolution": resolution, "in_chans": 3, "mean": [0.5], "std": [0.5]})


def test_train_threads_beyond_the_cpus_is_refused(capsys):
    assert main(["train", "--model", "mobilenet_v1_x0_25", "--threads", "1000", "--out", "/nonexistent/x"]) == 2
    assert "--threads 1000" in capsys.readouterr().err


def test_auto_batch_is_bounded_before_anything_is_loaded(tmp_path):
    from mobilecnn.deploy.run_export import MAX_AUTO_BATCH, export_run
    from mobilecnn.errors import UsageError

    with pytest.raises(UsageError, match=rf"--batch 1000000 is not accepted: it must be an integer in \[1, "
                                         rf"{MAX_AUTO_BATCH}\]"):
        export_run(tmp_path / "no-run", "auto", batch=1_000_000)
