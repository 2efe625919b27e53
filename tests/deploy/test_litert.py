"""LiteRT (.tflite): fp32 parity, int8 on real images, metadata, bad files, the zero-padded max pool.

Needs the ``litert`` extra (litert-torch, ai-edge-litert, ai-edge-quantizer); skipped without it.
Each conversion takes a few seconds, so files are written once per module and shared.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

from mobilecnn import create_model  # noqa: E402
from mobilecnn.deploy.fold import avgpool_to_depthwise, deploy_form  # noqa: E402
from mobilecnn.deploy.litert import (  # noqa: E402
    LITERT_INT8_CALIBRATIONS,
    LiteRTRuntime,
    read_litert_metadata,
    write_litert,
    zero_pad_maxpool,
)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel mean / std
BLOB = {"model": "mobilenet_v2_x0_35", "labels": ["T-shirt", "Trouser", "Pullover", "Kleid"],
        "preprocessing": {"size": 32, "mean": [MEAN], "std": [STD]}, "note": "ünïcode ✓"}

pytestmark = pytest.mark.usefixtures("one_thread")


def randomized(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """A zoo model with trained-looking BN (the zoo zero-inits residual BNs, which int8 cannot range)."""
    torch.manual_seed(seed)
    model = create_model(name, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model.eval()


def images(n: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def mv2(tmp_path_factory):
    """(model, fp32 .tflite with metadata) of a 10-class grayscale 32 px MobileNetV2 0.35."""
    model = randomized("mobilenet_v2_x0_35", num_classes=10, in_chans=1, small_input=True)
    path = tmp_path_factory.mktemp("litert") / "mv2.tflite"
    notes = write_litert(deploy_form(model), images(1), path, metadata=BLOB)
    assert "XNNPACK: 1 partition(s)" in notes
    return model, path


def test_fp32_matches_pytorch(mv2):
    model, path = mv2
    runtime = LiteRTRuntime(path, 1)
    assert (runtime.backend, runtime.static_batch, runtime.int8) == ("litert", 1, False)
    assert runtime.partitions == 1 and runtime.undelegated == []
    for batch in (1, 3):  # static batch 1: three images run one by one
        x = images(batch, seed=7)
        with torch.no_grad():
            ref = model(x).numpy()
        out = runtime(x.numpy())
        assert out.shape == (batch, 10) and out.dtype == np.float32
        assert rel(out, ref) < 1e-4


def test_shufflenet_zero_padded_max_pool_is_one_partition(tmp_path):
    model = randomized("shufflenet_v1_g3_x0_5", num_classes=10, in_chans=1)  # stem max pool: 64 px
    net = deploy_form(model)
    assert zero_pad_maxpool(net) == 1
    path = tmp_path / "shufflenet.tflite"
    notes = write_litert(net, images(1, 64), path)
    runtime = LiteRTRuntime(path, 1, trusted=True)
    assert runtime.partitions == 1 and runtime.undelegated == [], notes  # with -inf padding: PADV2 outside
    x = images(2, 64, seed=3)
    with torch.no_grad():
        ref = model(x).numpy()
    assert rel(runtime(x.numpy()), ref) < 1e-4


def test_zero_pad_maxpool_keeps_outputs():
    net = deploy_form(randomized("shufflenet_v1_g3_x0_5", num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        stem_out = net.features[0](x)
        pooled = net.features[1](stem_out)
        assert zero_pad_maxpool(net) == 1 and zero_pad_maxpool(net) == 0
        assert isinstance(net.features[1][0], nn.ZeroPad2d)
        assert torch.equal(net.features[1](stem_out), pooled)
        assert torch.allclose(net(x), ref, rtol=0, atol=0)
    # not after a ReLU (the input may be negative), or ceil_mode: left alone
    for seq in (nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(3, 2, 1)),
                nn.Sequential(nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
                nn.Sequential(nn.ReLU(), nn.MaxPool2d(2, 2))):
        assert zero_pad_maxpool(seq) == 0


def test_metadata_round_trip_keeps_the_file_standard(mv2):
    _, path = mv2
    assert read_litert_metadata(path) == BLOB
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    assert b"min_runtime_version" in entries and b"mobilecnn" in entries
    version = model.Buffers(entries[b"min_runtime_version"]).DataAsNumpy().tobytes().rstrip(b"\0")
    assert version[:2].isdigit() or version[:1].isdigit()
    base = np.frombuffer(data, np.uint8).ctypes.data
    for i in range(model.BuffersLength()):  # weights stay 16-byte aligned (the schema's force_align)
        if model.Buffers(i).DataLength():
            assert (model.Buffers(i).DataAsNumpy().ctypes.data - base) % 16 == 0


@pytest.fixture(scope="module")
def trained():
    """ShuffleNet v1 g=3 0.25x (small input, 32 px) after 60 SGD steps on Fashion-MNIST (~6 s), with
    64 training images for calibration and 300 test images and labels."""
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")

    def read(prefix: str, count: int) -> tuple[torch.Tensor, np.ndarray]:
        with gzip.open(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz") as fh:
            raw = np.frombuffer(fh.read(16 + count * 784), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz") as fh:
            labels = np.frombuffer(fh.read(8 + count), np.uint8, offset=8).astype(np.int64)
        x = (np.pad(raw, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(x[:, None].copy()), labels

    steps, batch = 60, 64
    x_train, y_train = read("train", steps * batch + 64)
    x_test, y_test = read("t10k", 300)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = create_model("shufflenet_v1_g3_x0_25", num_classes=10, in_chans=1, small_input=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.15)
        model.train()
        labels = torch.from_numpy(y_train)
        for step in range(steps):
            idx = slice(batch * step, batch * step + batch)
            loss = nn.functional.cross_entropy(model(x_train[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(saved)
    return model.eval(), x_train[steps * batch:], x_test, y_test


def test_int8_on_real_images(tmp_path, trained):
    model, calib, x, y = trained
    net = deploy_form(model)
    avgpool_to_depthwise(net, x[:1])  # XNNPACK's int8 average pool refused the zero-padded pools
    path = tmp_path / "int8.tflite"
    notes = write_litert(net, x[:1], path, calibration=calib, metadata={"int8": True})
    assert any("int8: ai-edge-quantizer" in n for n in notes)
    assert "LiteRT: int8 input, int8 output" in notes and "XNNPACK: 1 partition(s)" in notes
    assert read_litert_metadata(path) == {"int8": True}
    runtime = LiteRTRuntime(path, 1)
    assert runtime.int8 and runtime.partitions == 1
    out = runtime(x.numpy())
    assert out.dtype == np.float32 and out.shape == (300, 10)
    with torch.no_grad():
        ref = model(x).numpy()
    fp32_top1, int8_top1 = (ref.argmax(1) == y).mean(), (out.argmax(1) == y).mean()
    assert fp32_top1 > 0.6  # the model learned something (measured 0.69), so agreement means something
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9  # measured 0.95 (int8 top-1 0.70)
    assert int8_top1 >= fp32_top1 - 0.05


def test_int8_exclude_and_options(tmp_path, mv2):
    model, _ = mv2
    net = deploy_form(model)
    path = tmp_path / "q.tflite"
    with pytest.raises(ValueError, match="calibration"):
        write_litert(net, images(1), path, calibration=images(4), method="entropy")
    with pytest.raises(ValueError, match="features.99"):
        write_litert(net, images(1), path, calibration=images(4), exclude=("features.99",))
    with pytest.raises(ValueError, match="int8 only"):
        write_litert(net, images(1), path, exclude=("fc",))
    notes = write_litert(net, images(1), path, calibration=images(8, seed=5), method=LITERT_INT8_CALIBRATIONS[-1],
                         exclude=("features.1", "fc"))
    assert "int8: module 'features.1' kept in float (2 of 2 ops with float outputs)" in notes
    assert "int8: module 'fc' kept in float (1 of 1 ops with float outputs)" in notes
    x = images(2, seed=9)
    out = LiteRTRuntime(path, 1, trusted=True)(x.numpy())
    with torch.no_grad():
        assert rel(out, model(x).numpy()) < 0.2
    assert read_litert_metadata(path) is None


def _crafted(src: Path, target: Path) -> Path:
    """A well-formed flatbuffer whose first activation points at a weight buffer: segfaults LiteRT 2.3."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(src.read_bytes()))
    graph = model.subgraphs[0]
    biggest = max(range(len(model.buffers)), key=lambda i: 0 if model.buffers[i].data is None
                  else len(model.buffers[i].data))
    graph.tensors[graph.operators[0].outputs[0]].buffer = biggest
    target.write_bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return target


def test_bad_files_are_value_errors(tmp_path, mv2):
    _, good = mv2
    data = good.read_bytes()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[: len(data) // 2])
    header_only = tmp_path / "header_only.tflite"
    header_only.write_bytes(data[:64])
    text = tmp_path / "text.tflite"
    text.write_text(json.dumps({"not": "a model"}) * 10)
    onnx_like = tmp_path / "model.tflite"
    onnx_like.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(200))
    for bad in (truncated, header_only, text, onnx_like):
        with pytest.raises(ValueError, match=bad.name):
            LiteRTRuntime(bad, 1)
        with pytest.raises(ValueError, match=bad.name):
            read_litert_metadata(bad)
    crafted = _crafted(good, tmp_path / "crafted.tflite")
    with pytest.raises(ValueError, match="crafted.tflite.*signal"):
        LiteRTRuntime(crafted, 1)


def test_a_detectors_heads_and_blocks_can_be_kept_in_float(tmp_path):
    """litert-torch names ops by the modules that called them: the SSD heads are called containers, so
    ``class_head.0`` and ``box_head.0`` are told apart; a backbone module whose name clashes with one inside a
    block walked by hand is left int8 with a note instead of matching the other's ops."""
    net = deploy_form(randomized("ssdlite_mobilenet_v2_x0_35", num_classes=11))
    x = torch.randn(1, 3, 64, 64)
    notes = write_litert(net, x, tmp_path / "det.tflite", calibration=torch.randn(8, 3, 64, 64),
                         exclude=("class_head.0", "box_head.0.conv", "extras.3", "backbone.features.1",
                                  "backbone.features.0"))
    assert "int8: module 'class_head.0' kept in float (2 of 2 ops with float outputs)" in notes
    assert "int8: module 'box_head.0.conv' kept in float (1 of 1 ops with float outputs)" in notes
    assert "int8: module 'extras.3' kept in float (3 of 3 ops with float outputs)" in notes
    assert "int8: module 'backbone.features.1' kept in float (2 of 2 ops with float outputs)" in notes
    assert any(n.startswith("int8: module 'backbone.features.0' cannot be kept in float in LiteRT: its ops' names "
                            "are also those of 'backbone.features.14.block.0'") for n in notes)
    with torch.no_grad():
        ref = net(x).numpy()
    assert LiteRTRuntime(tmp_path / "det.tflite", 1, trusted=True)(x.numpy()).shape == ref.shape
