"""BN folding, export round trips in every format, verification, bad options, corrupt files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mobilecnn import create_model
from mobilecnn.deploy.export import ExportConfig, ExportImages, export_model
from mobilecnn.deploy.fold import DeployClassifier, avgpool_to_depthwise, deploy_form, fold_batchnorm
from mobilecnn.deploy.formats import FORMATS, load_runtime
from mobilecnn.device import available_cpus
from mobilecnn.errors import ExportVerificationError
from mobilecnn.errors import MissingBackendError

FAMILIES = ["shufflenet_v1_g3_x0_5", "mobilenet_v2_x0_35", "mobilenet_v1_x0_25"]
SUFFIX = {name: fmt.suffix for name, fmt in FORMATS.items()}
PACKAGE = {name: fmt.requires[0] if fmt.requires else "torch" for name, fmt in FORMATS.items()}


pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(name: str, seed: int = 0) -> nn.Module:
    """A 10-class grayscale small-input model with non-trivial BN statistics (so folding matters)."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_chans=1, small_input=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.1)
    return model.eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", FAMILIES)
def test_fold_batchnorm_is_equivalent(name):
    model = small_model(name)
    folded = fold_batchnorm(model)
    x = images(4)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert rel(out.numpy(), ref.numpy()) < 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original must be left untouched"
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    assert not folded.training


def test_fold_batchnorm_torchvision_blocks():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.shufflenet_v2_x0_5(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, 3, 64, 64)
        assert rel(fold_batchnorm(model)(x).numpy(), model(x).numpy()) < 1e-5


def test_deploy_form_head_and_avgpool_rewrites_keep_values():
    model = small_model("shufflenet_v1_g3_x0_5")
    net = deploy_form(model)
    assert isinstance(net, DeployClassifier)
    x = images(3)
    with torch.no_grad():
        ref = model(x).numpy()
        assert rel(net(x).numpy(), ref) < 1e-5
        assert avgpool_to_depthwise(net, x) == 3  # the three stride-2 units' shortcut pools
        assert not any(isinstance(m, nn.AvgPool2d) for m in net.modules())
        assert rel(net(x).numpy(), ref) < 1e-5


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", FAMILIES)
def test_export_round_trip(tmp_path, name, fmt):
    pytest.importorskip(PACKAGE[fmt])
    if fmt in ("onnx", "openvino"):
        pytest.importorskip("onnxscript")
    model = small_model(name)
    verify = images(5)
    path = tmp_path / f"{name}{SUFFIX[fmt]}"
    report = export_model(model, path, ExportImages(verify[:1], verify), ExportConfig(fmt, rtol=1e-4))
    assert report.path == path and path.is_file()
    assert report.format == fmt and report.precision != "int8"
    assert report.rel_diff <= 1e-4 and report.top1_agreement == 1.0
    assert report.file_bytes >= path.stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging files left behind"
    if fmt == "openvino":
        assert path.with_suffix(".bin").is_file()
    assert report.dynamic_batch == (not FORMATS[fmt].static_batch)
    runtime = load_runtime(path, threads=1)
    for batch in (1, 3):  # ExecuTorch: static batch 1, the runtime runs 3 images one by one
        x = images(batch, seed=7)
        with torch.no_grad():
            ref = model(x).numpy()
        out = runtime(x.numpy())
        assert out.shape == (batch, 10)
        assert rel(out, ref) < 1e-4
    assert any("BatchNorm folded" in n for n in report.notes)


def test_onnx_traces_the_shuffle_as_one_gather(tmp_path):
    # OpenVINO and onnxruntime run a Gather faster than reshape/transpose (ShuffleChannels in OpenVINO)
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = small_model("shufflenet_v1_g3_x0_5")
    verify = images(3)
    path = tmp_path / "s.onnx"
    export_model(model, path, ExportImages(verify[:1], verify), ExportConfig("onnx"))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Transpose" not in ops and ops.count("Gather") == 16  # one per unit


def test_executorch_dynamic_batch(tmp_path):
    pytest.importorskip(PACKAGE["executorch"])
    model = small_model("mobilenet_v1_x0_25")
    verify = images(4)
    path = tmp_path / "m.pte"
    report = export_model(model, path, ExportImages(verify[:2], verify), ExportConfig("executorch", max_batch=8))
    assert report.dynamic_batch and report.static_batch is None
    runtime = load_runtime(path)
    for batch in (1, 3, 8, 11):
        x = images(batch, seed=batch)
        with torch.no_grad():
            assert rel(runtime(x.numpy()), model(x).numpy()) < 1e-4


def test_executorch_static_batch_is_reported(tmp_path):
    pytest.importorskip(PACKAGE["executorch"])
    model = small_model("mobilenet_v1_x0_25")
    report = export_model(model, tmp_path / "m.pte", ExportImages(images(2), images(3)), ExportConfig("executorch"))
    assert not report.dynamic_batch and report.static_batch == 2
    assert any("static batch 2" in n for n in report.notes)


def test_verification_failure_deletes_file(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import mobilecnn.deploy.verify as verify_mod

    real = verify_mod.load_runtime

    def wrong(path, threads=1, **kw):
        rt = real(path, threads)
        return lambda x: rt(x) + 0.5  # a runtime that returns wrong logits

    monkeypatch.setattr(verify_mod, "load_runtime", wrong)
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportVerificationError, match="disagrees with PyTorch") as info:
        export_model(small_model("mobilenet_v1_x0_25"), path, ExportImages(images(1), images(4)), ExportConfig("onnx"))
    assert info.value.report.rel_diff > 1e-4
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def bf16_runtime(monkeypatch):
    """Make the bf16 OpenVINO file's runtime return ``transform(logits)``: rounding or a real loss."""
    pytest.importorskip("openvino")
    import mobilecnn.deploy.verify as verify_mod
    from mobilecnn.deploy.backends import bf16_supported

    if not bf16_supported():
        pytest.skip("this CPU has no bf16 instructions")
    real = verify_mod.load_runtime

    def use(transform):
        monkeypatch.setattr(verify_mod, "load_runtime",
                            lambda p, threads=1, **kw: (lambda x: transform(real(p, threads, **kw)(x))))
    return use


def test_bf16_is_judged_by_its_top1_drop_not_by_its_logits(tmp_path, bf16_runtime):
    from mobilecnn.deploy.verify import BF16_RTOL
    from mobilecnn.errors import Int8AccuracyError

    model = small_model("mobilenet_v1_x0_25")
    check = images(40, seed=5)
    with torch.no_grad():
        labels = model(check).argmax(1)
    imgs = ExportImages(images(1), images(4), check=check, check_labels=labels)
    config = ExportConfig("openvino", "bf16")
    bf16_runtime(lambda z: 1.5 * z)  # logits far from PyTorch's, every top-1 the same
    report = export_model(model, tmp_path / "a.xml", imgs, config)
    assert report.rel_diff > BF16_RTOL and report.int8_report.drop == 0
    with pytest.raises(ExportVerificationError, match="rtol"):  # no labelled check: the logits must agree
        export_model(model, tmp_path / "b.xml", imgs, ExportConfig("openvino", "bf16", check_accuracy=False))
    bf16_runtime(lambda z: -z)  # top-1 lost
    with pytest.raises(Int8AccuracyError, match="bf16 refused"):
        export_model(model, tmp_path / "c.xml", imgs, config)
    assert not (tmp_path / "b.xml").exists() and not (tmp_path / "c.xml").exists()


def test_failed_export_keeps_previous_file(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import mobilecnn.deploy.verify as verify_mod

    path = tmp_path / "m.onnx"
    model = small_model("mobilenet_v1_x0_25")
    export_model(model, path, ExportImages(images(1), images(2)), ExportConfig("onnx"))
    before = path.read_bytes()
    real = verify_mod.load_runtime
    monkeypatch.setattr(verify_mod, "load_runtime", lambda p, threads=1, **kw: (lambda x: real(p, threads)(x) * 2))
    with pytest.raises(ExportVerificationError):
        export_model(small_model("mobilenet_v1_x0_25", seed=3), path, ExportImages(images(1), images(2)),
                     ExportConfig("onnx"))
    assert path.read_bytes() == before


@pytest.mark.parametrize("kwargs, match", [
    ({"fmt": "coreml"}, "accepted: onnx, torchscript, openvino, executorch, litert"),
    ({"fmt": "onnx", "suffix": ".pt"}, "must end in .onnx"),
    ({"fmt": "onnx", "precision": "int8"}, "needs calibration"),
    ({"fmt": "torchscript", "precision": "int8", "calibration": True},
     "int8 export is available for onnx, openvino, executorch"),
    ({"fmt": "onnx", "precision": "int8", "calibration": True}, "labelled check set"),
    ({"fmt": "onnx", "calibration": True}, "the precision is not int8"),
    ({"fmt": "onnx", "max_batch": 4}, "static-batch formats only"),
    ({"fmt": "onnx", "verify_images": torch.randn(2, 3, 32, 32)}, "verify_images has images of shape"),
    ({"fmt": "onnx", "threads": 10_000}, "CPU"),
])
def test_bad_options(tmp_path, kwargs, match):
    kwargs = dict(kwargs)
    fmt = kwargs.pop("fmt")
    suffix = kwargs.pop("suffix", SUFFIX.get(fmt, ".bin"))
    calibration = images(64) if kwargs.pop("calibration", None) is True else None
    imgs = ExportImages(images(1), kwargs.pop("verify_images", images(2)), calibration)
    with pytest.raises(ValueError, match=match):
        export_model(small_model("mobilenet_v1_x0_25"), tmp_path / f"m{suffix}", imgs, ExportConfig(fmt, **kwargs))
    assert list(tmp_path.iterdir()) == []


def test_missing_backend_error_names_extra():
    err = MissingBackendError("x needs y; install the deployment extras: pip install 'mobilecnn[deploy]'")
    assert isinstance(err, ImportError)
    from mobilecnn.deploy.backends import require_backend

    with pytest.raises(MissingBackendError, match=r"pip install 'mobilecnn\[deploy\]'"):
        require_backend("mobilecnn_no_such_backend", "testing")


@pytest.mark.parametrize("suffix", [".onnx", ".pt", ".xml", ".pte"])
def test_corrupt_file_is_a_value_error(tmp_path, suffix):
    fmt = {v: k for k, v in SUFFIX.items()}[suffix]
    pytest.importorskip(PACKAGE[fmt])
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"\x00not a model\xff" * 64)
    if suffix == ".xml":
        garbage.with_suffix(".bin").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="garbage"):
        load_runtime(garbage)


@pytest.mark.parametrize("fmt", ["onnx", "executorch", "torchscript"])
def test_truncated_export_is_a_value_error(tmp_path, fmt):
    pytest.importorskip(PACKAGE[fmt])
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    path = tmp_path / f"m{SUFFIX[fmt]}"
    export_model(small_model("mobilenet_v1_x0_25"), path, ExportImages(images(1), images(2)), ExportConfig(fmt))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="m" + SUFFIX[fmt]):
        load_runtime(path)


def test_load_runtime_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="accepted: .onnx"):
        load_runtime(tmp_path / "model.tf")
    with pytest.raises(FileNotFoundError):
        load_runtime(tmp_path / "missing.onnx")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match="threads"):
        load_runtime(tmp_path / "m.onnx", threads=available_cpus() + 1)
    with pytest.raises(ValueError, match="threads"):
        load_runtime(tmp_path / "m.onnx", threads=0)
