"""Int8 post-training quantization on a model actually trained on Fashion-MNIST.

The model (ShuffleNet v1 g=3 0.25x, small-input stem, 1 channel, 32 px) is trained once per session:
plain SGD, one thread, 300 steps of 64 images (~30 s here; 82.3% top-1 on the first 1000 test
images). ShuffleNet g=3 0.25x has grouped 1x1 convs with 20 output channels per group (stage 4's
compress conv, stage 2's expand), the shape OpenVINO int8 miscomputes (MEASURED.md).

Measured when this was written (1000 test images, 256 calibration images): onnxruntime int8 82.6%
(agreement 97.6%), ExecuTorch int8 82.7% (96.8%), OpenVINO int8 74.2% (83.8%) -> refused.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilecnn import create_model
from mobilecnn.deploy.export import ExportConfig, ExportImages, export_model
from mobilecnn.errors import Int8AccuracyError
from mobilecnn.deploy.quantize import Int8Report, evaluate_int8, openvino_int8_risky_convs

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel mean / std
MODEL = "shufflenet_v1_g3_x0_25"


pytestmark = pytest.mark.usefixtures("one_thread")


def read_idx(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images padded 28 -> 32 px (zeros = background) and normalised, and labels."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz") as fh:
        raw = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8).astype(np.int64)
    x = (np.pad(raw, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x[:, None].copy()), torch.from_numpy(labels)


@pytest.fixture(scope="session")
def trained():
    """(model, calibration images, check images, check labels); trained once per test session."""
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    x_train, y_train = read_idx("train")
    x_test, y_test = read_idx("test")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = create_model(MODEL, num_classes=10, in_chans=1, small_input=True)
        steps, lr = 300, 0.1
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
        gen = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(x_train), (64,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
    finally:
        torch.set_num_threads(saved)
    calib = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[:256]]
    return model, calib, x_test[:1000], y_test[:1000]


def torch_fn(model):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def test_model_is_trained(trained):
    model, _, x, y = trained
    report = evaluate_int8(torch_fn(model), torch_fn(model), x, y)
    assert report.fp32_top1 > 75.0  # measured 82.3
    assert report.drop == 0.0 and report.agreement == 100.0 and report.images == 1000


def test_evaluate_int8_arithmetic():
    labels = np.array([0, 1, 2, 3])
    fp32 = lambda x: np.eye(4, dtype=np.float32)[[0, 1, 2, 0]]  # 3/4 right
    int8 = lambda x: np.eye(4, dtype=np.float32)[[0, 1, 1, 1]][: len(x)]  # 2/4 right
    report = evaluate_int8(fp32, int8, np.zeros((4, 1, 2, 2), np.float32), labels)
    assert report == Int8Report(fp32_top1=75.0, int8_top1=50.0, drop=25.0, agreement=50.0, images=4)
    with pytest.raises(ValueError, match="labels"):
        evaluate_int8(fp32, int8, np.zeros((4, 1, 2, 2), np.float32), labels[:3])


def test_risky_conv_detection():
    assert openvino_int8_risky_convs(create_model(MODEL, num_classes=10, in_chans=1, small_input=True))
    assert not openvino_int8_risky_convs(create_model("mobilenet_v2_x0_35", num_classes=10))


@pytest.mark.parametrize("fmt, suffix, package, extra", [
    ("onnx", ".onnx", "onnxruntime", {}),
    ("executorch", ".pte", "executorch.extension.pybindings.portable_lib", {}),  # static batch: lowers faster
])
def test_int8_keeps_accuracy(tmp_path, trained, fmt, suffix, package, extra):
    pytest.importorskip(package)
    model, calib, x, y = trained
    path = tmp_path / f"m{suffix}"
    report = export_model(model, path, ExportImages(x[:1], x[:16], calib, x, y),
                          ExportConfig(fmt, "int8", max_drop=0.5, **extra))
    assert path.is_file() and report.precision == "int8"
    r = report.int8_report
    assert r.images == 1000 and r.drop <= 0.5 and r.agreement >= 95.0  # measured ~97%
    assert any("int8 check" in n for n in report.notes)


def test_openvino_int8_falls_back_instead_of_refusing(tmp_path, trained):
    """OpenVINO int8 of this ShuffleNet lost more than 0.5 point with the default calibration (it used to be
    refused). Now the other calibrations and then float layers are tried; the file is kept within max_drop
    and the report names the calibration and the layers kept in float -- or, if nothing works, the refusal
    lists every attempt and nothing is left behind."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    model, calib, x, y = trained
    path = tmp_path / "m.xml"
    try:
        report = export_model(model, path, ExportImages(x[:1], x[:16], calib, x, y), ExportConfig("openvino", "int8"))
    except Int8AccuracyError as exc:
        assert "attempt(s)" in str(exc) and "float" in str(exc)
        assert list(tmp_path.iterdir()) == []
        return
    assert report.int8_report.drop <= 0.5 and path.is_file()
    assert report.calibration and report.attempts and report.attempts[-1]["drop"] <= 0.5
    assert any("calibration" in n for n in report.notes)


def test_int8_sensitivity_ranks_every_layer(trained):
    from mobilecnn.deploy.fold import deploy_form
    from mobilecnn.deploy.quantize import int8_sensitivity

    model, calib, _, _ = trained
    net = deploy_form(model)
    ranked = int8_sensitivity(net, calib, images=16)
    convs = [n for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sorted(n for n, _ in ranked) == sorted(convs)
    assert ranked[0][1] >= ranked[-1][1] >= 0.0


def test_int8_refused_when_drop_exceeds_max(tmp_path, trained, monkeypatch):
    """A broken int8 runtime (logits rolled by one class) is refused and its file deleted."""
    pytest.importorskip("onnxruntime")
    import mobilecnn.deploy.verify as verify_mod

    real = verify_mod.load_runtime
    monkeypatch.setattr(verify_mod, "load_runtime",
                        lambda p, threads=1, **kw: (lambda a: np.roll(real(p, threads, **kw)(a), 1, axis=1)))
    model, calib, x, y = trained
    with pytest.raises(Int8AccuracyError, match="exceeds max_drop 0.5") as info:
        export_model(model, tmp_path / "m.onnx", ExportImages(x[:1], x[:16], calib[:64], x[:200], y[:200]),
                     ExportConfig("onnx", "int8", int8_fallback=False))
    assert info.value.report.drop > 50.0
    assert list(tmp_path.iterdir()) == []


def test_onnx_int8_calibrates_on_a_count_that_is_not_a_multiple_of_the_batch(tmp_path):
    """onnxruntime's histogram calibrators stack every batch's outputs: 39 images in batches of 32 once failed
    ('inhomogeneous shape'), as a detector's pixel-capped calibration set at 320 px did."""
    from mobilecnn import create_model
    from mobilecnn.deploy.quantize import quantize_onnx

    model = create_model("mobilenet_v1_x0_25", num_classes=10, small_input=True).eval()
    fp32 = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(fp32), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "n"}})
    for method in ("percentile", "entropy"):
        out = tmp_path / f"m_{method}.onnx"
        quantize_onnx(fp32, out, torch.randn(39, 3, 32, 32), batch_size=32, method=method)
        assert out.stat().st_size > 0
