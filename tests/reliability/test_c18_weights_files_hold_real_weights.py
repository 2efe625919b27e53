"""Class 18: a weights file is read only from itself and only if it holds weights a network can have.

A Keras ``.h5`` whose kernel is HDF5 external storage (naming ``/etc/passwd``), an external link or a virtual
dataset is refused before anything is read; a dangling layer name or an integer dataset is a one-line error.
NaN or infinite values, negative BN variances and non-floating dtypes are refused on import (no file is
written) and again on load (``create_model(weights=...)``, ``train --init``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mobilecnn import create_model
from mobilecnn.cli import main
from mobilecnn.errors import CheckpointError
from mobilecnn.models.weights_file import model_metadata, save_weights
from mobilecnn.weights import import_weights
from mobilecnn.weights.sources import read_keras_h5

h5py = pytest.importorskip("h5py")


def _keras_file(path, kernel_maker) -> None:
    """A minimal Keras-2 layout file: one layer ``Conv1`` with weight ``Conv1/kernel:0`` made by ``kernel_maker``."""
    with h5py.File(str(path), "w") as f:
        f.attrs["layer_names"] = [b"Conv1"]
        group = f.create_group("Conv1")
        group.attrs["weight_names"] = [b"Conv1/kernel:0"]
        kernel_maker(f, group)


def test_a_plain_file_reads(tmp_path):
    path = tmp_path / "ok.h5"
    _keras_file(path, lambda f, g: g.create_dataset("Conv1/kernel:0", data=np.ones((3, 3, 3, 8), np.float32)))
    assert read_keras_h5(path)["Conv1"]["kernel"].shape == (3, 3, 3, 8)


def test_external_storage_naming_a_local_file_is_refused_before_reading(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 8)
    path = tmp_path / "external.h5"
    _keras_file(path, lambda f, g: g.create_dataset("Conv1/kernel:0", shape=(8, 8), dtype="f4",
                                                    external=[(str(secret), 0, 256)]))
    with pytest.raises(CheckpointError, match=r"external storage in .*secret.txt.*must be stored in the file"):
        read_keras_h5(path)


def test_an_external_link_and_a_virtual_dataset_are_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(str(other), "w") as f:
        f.create_dataset("k", data=np.ones((4, 4), np.float32))
    linked = tmp_path / "linked.h5"
    _keras_file(linked, lambda f, g: g.__setitem__("Conv1/kernel:0", h5py.ExternalLink(str(other), "k")))
    with pytest.raises(CheckpointError, match="link into another file"):
        read_keras_h5(linked)

    def virtual(f, g):
        layout = h5py.VirtualLayout(shape=(4, 4), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "k", shape=(4, 4))
        g.create_virtual_dataset("Conv1/kernel:0", layout)

    vds = tmp_path / "virtual.h5"
    _keras_file(vds, virtual)
    with pytest.raises(CheckpointError, match="virtual dataset"):
        read_keras_h5(vds)


def test_a_dangling_layer_name_and_an_integer_kernel_are_one_line_errors(tmp_path):
    dangling = tmp_path / "dangling.h5"
    with h5py.File(str(dangling), "w") as f:
        f.attrs["layer_names"] = [b"Conv1", b"Missing"]
        f.create_group("Conv1").attrs["weight_names"] = []
    with pytest.raises(CheckpointError, match="names 'Missing', which the file does not hold"):
        read_keras_h5(dangling)
    ints = tmp_path / "ints.h5"
    _keras_file(ints, lambda f, g: g.create_dataset("Conv1/kernel:0", data=np.ones((3, 3), np.int64)))
    with pytest.raises(CheckpointError, match="int64; weights are floating point"):
        read_keras_h5(ints)


def _torchvision_file(path, change) -> None:
    from torchvision.models import mobilenet_v2

    state = mobilenet_v2().state_dict()
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["features.0.0.weight"].view(-1)[7].fill_(float("nan")), "NaN or infinite"),
    (lambda s: s["classifier.1.bias"].fill_(float("inf")), "NaN or infinite"),
    (lambda s: s["features.0.1.running_var"].view(-1)[0].fill_(-1.0), "negative batch-norm variance"),
    (lambda s: s.__setitem__("classifier.1.bias", torch.zeros(1000, dtype=torch.int64)), "is int64"),
    (lambda s: s.__setitem__("classifier.1.bias", torch.zeros(1000, dtype=torch.complex64)), "is complex64"),
], ids=["nan", "inf", "negative-variance", "int64", "complex"])
def test_garbage_tensors_are_refused_on_import_and_nothing_is_written(tmp_path, change, message):
    src, out = tmp_path / "mobilenet_v2.pth", tmp_path / "out" / "w.safetensors"
    _torchvision_file(src, change)
    with pytest.raises(CheckpointError, match=message):
        import_weights(src, "torchvision", out)
    assert not out.parent.exists() or not any(out.parent.iterdir())
    assert main(["weights", "import", str(src), "--from", "torchvision", "--out", str(out)]) == 2


def test_garbage_in_a_safetensors_file_is_refused_on_load(tmp_path):
    model = create_model("mobilenet_v2_x0_35", num_classes=10, in_chans=1, small_input=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.1.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_weights(path, state)
    with pytest.raises(CheckpointError, match=r"nan.safetensors: tensor 'classifier.1.weight' holds NaN"):
        create_model("mobilenet_v2_x0_35", num_classes=10, in_chans=1, small_input=True, weights=path)
    raw = tmp_path / "raw.safetensors"  # written by another tool, no mobilecnn metadata
    save_file({k: v.contiguous() for k, v in state.items()}, str(raw))
    with pytest.raises(CheckpointError, match="holds NaN"):
        create_model("mobilenet_v2_x0_35", num_classes=10, in_chans=1, small_input=True, weights=raw)


def test_train_init_from_nan_weights_names_the_file_not_the_lr(tmp_path, folder_data, capsys):
    model = create_model("mobilenet_v1_x0_25", num_classes=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["features.0.conv.weight"].fill_(float("nan"))
    init = tmp_path / "nan.safetensors"
    save_weights(init, state, model_metadata(model))
    code = main(["train", "--model", "mobilenet_v1_x0_25", "--data", str(folder_data), "--out", str(tmp_path / "r"),
                 "--init", str(init), "--resolution", "32", "--max-steps", "1", "--workers", "0",
                 "--batch-size", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "nan.safetensors" in err and "NaN" in err and "--lr" not in err
