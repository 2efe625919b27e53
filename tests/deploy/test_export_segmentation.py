"""Segmentation models through export: fp32 verified per pixel in every format, bf16/int8 judged by their mIoU
drop (DeepLab's one confusion matrix over the check set), check-mask validation, a segmentation run exported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobilecnn import create_model
from mobilecnn.data.segmentation_metrics import ConfusionMatrix
from mobilecnn.deploy.dense import MiouReport
from mobilecnn.deploy.export import ExportConfig, ExportImages, export_model
from mobilecnn.deploy.formats import FORMATS, load_runtime
from mobilecnn.deploy.verify import SEG_MIN_AGREEMENT
from mobilecnn.errors import DataError, ExportVerificationError, Int8AccuracyError

MODEL = "deeplabv3_mobilenet_v2_x0_35"
RES = 64
CLASSES = 11  # the scenes' background + 10 Fashion-MNIST classes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """A tiny Fashion-MNIST scenes dataset (Pascal VOC layout)."""
    from mobilecnn.data.scenes import ScenesConfig, generate_scenes

    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file() and not os.environ.get(
            "MOBILECNN_DATA_DIR"):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("scenes") / "voc"
    generate_scenes(ScenesConfig(task="segmentation", out=str(out), train_count=16, val_count=8, size=96))
    return out


@pytest.fixture(scope="module")
def data(scenes):
    from mobilecnn.data.segmentation_samples import segmentation_samples

    train, train_masks = segmentation_samples(scenes, RES, "train", 16)
    val, masks = segmentation_samples(scenes, RES, "val", 8)
    return train, val, masks, train_masks


def briefly_trained(train: torch.Tensor, masks: torch.Tensor, steps: int = 60) -> nn.Module:
    """A segmenter fitted for a second on 16 scenes, its BatchNorm statistics then taken from them (train-mode
    forwards): untrained, it gives one class to every pixel; this one gives several."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the tests' one_thread
    try:
        model = create_model(MODEL, num_classes=CLASSES).train()
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for step in range(steps):
            i = (4 * step) % len(train)
            loss = nn.functional.cross_entropy(model(train[i:i + 4]), masks[i:i + 4], ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            for i in range(0, len(train), 4):
                model(train[i:i + 4])
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def segmenter(data) -> nn.Module:
    model = briefly_trained(data[0], data[3])
    with torch.no_grad():
        assert len(model(data[1]).argmax(1).unique()) >= 3  # the per-pixel checks see several classes
    return model


def own_masks(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's own classes as masks, a border ignored: fp32 scores 100% mIoU, so any loss shows (a real
    int8 file too: a class of a few pixels that flips costs 1/K of the mIoU)."""
    with torch.no_grad():
        masks = model(images).argmax(1)
    masks[:, :2] = 255
    return masks


def installed(fmt: str) -> None:
    if not FORMATS[fmt].installed():
        pytest.skip(f"{fmt} is not installed here (mobilecnn.deploy.backends)")


def every_pixel_wrong(z: np.ndarray) -> np.ndarray:
    """Logits whose argmax is the next class at every pixel: mIoU 0."""
    return np.roll(z, 1, axis=1)


def wrap_runtime(monkeypatch, transform, only: int | None = None):
    """Make the runtime that verify loads return ``transform(logits)`` (for its first ``only`` loads)."""
    import mobilecnn.deploy.verify as verify_mod

    real, loads = verify_mod.load_runtime, []

    def load(path, threads=1, **kw):
        runtime = real(path, threads, **kw)
        loads.append(path)
        if only is not None and len(loads) > only:
            return runtime
        return lambda x: transform(runtime(x))

    monkeypatch.setattr(verify_mod, "load_runtime", load)
    return loads


def test_segmentation_samples(scenes, data):
    from mobilecnn.data.segmentation_samples import segmentation_samples

    train, val, masks, _ = data
    assert train.shape == (16, 3, RES, RES) and val.shape == (8, 3, RES, RES) and train.dtype == torch.float32
    assert masks.shape == (8, RES, RES) and masks.dtype == torch.int64
    values = set(masks.unique().tolist())
    assert values <= set(range(CLASSES)) | {255} and len(values - {0, 255}) >= 1
    some, some_masks = segmentation_samples(scenes, RES, "val", 3, seed=1)  # a seeded subset, the same each time
    assert torch.equal(some, segmentation_samples(scenes, RES, "val", 3, seed=1)[0])
    assert some_masks.shape == (3, RES, RES)
    assert abs(float(train.mean())) < 1.5  # normalised (ImageNet mean/std), not 0-255
    with pytest.raises(DataError, match="split") as info:
        segmentation_samples(scenes, RES, "test", 3)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "openvino",
                                 pytest.param("executorch", marks=pytest.mark.slow),
                                 pytest.param("litert", marks=pytest.mark.slow)])
def test_fp32_export_is_verified_per_pixel(tmp_path, segmenter, data, fmt):
    installed(fmt)
    _, val, _, _ = data
    path = tmp_path / f"m{FORMATS[fmt].suffix}"
    report = export_model(segmenter, path, ExportImages(val[:1], val[:4]), ExportConfig(fmt))
    assert path.is_file() and report.rel_diff <= 1e-4
    assert report.pixel_agreement is not None and report.pixel_agreement >= SEG_MIN_AGREEMENT
    assert report.top1_agreement == report.pixel_agreement
    d = report.to_dict()
    assert d["agreement_per"] == "pixel" and d["pixel_agreement"] == report.pixel_agreement
    out = load_runtime(path)(val[4:7].numpy())
    with torch.no_grad():
        ref = segmenter(val[4:7]).numpy()
    assert out.shape == (3, CLASSES, RES, RES)
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= SEG_MIN_AGREEMENT


def test_fp32_needs_the_pixel_agreement_besides_rtol(tmp_path, segmenter, data, monkeypatch):
    installed("onnx")
    _, val, _, _ = data

    def swap_some_pixels(z):  # the classes of a 1-pixel-wide column rotated: 1/64 of the pixels differ
        z = z.copy()
        z[:, :, :, 5] = np.roll(z[:, :, :, 5], 1, axis=1)
        return z

    wrap_runtime(monkeypatch, swap_some_pixels)
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportVerificationError, match=r"PyTorch's class on only 9\d\.\d+% of the pixels") as info:
        export_model(segmenter, path, ExportImages(val[:1], val[:4]), ExportConfig("onnx", rtol=100.0))
    assert "\n" not in str(info.value) and not path.exists()
    assert info.value.report.pixel_agreement < SEG_MIN_AGREEMENT


def test_int8_onnx_is_judged_by_its_miou_drop(tmp_path, segmenter, data):
    installed("onnx")
    train, val, masks, _ = data
    imgs = ExportImages(val[:1], val[:2], train, val, masks)
    report = export_model(segmenter, tmp_path / "q.onnx", imgs, ExportConfig("onnx", "int8", max_drop=100.0))
    acc = report.int8_report
    assert isinstance(acc, MiouReport) and acc.precision == "int8" and acc.images == 8
    assert acc.pixels == int((masks != 255).sum())
    # fp32's mIoU is DeepLab's: one confusion matrix over the whole check set
    matrix = ConfusionMatrix(CLASSES)
    with torch.no_grad():
        matrix.update(segmenter(val), masks)
    assert acc.fp32_miou == pytest.approx(100 * matrix.compute()["miou"])
    assert acc.drop == pytest.approx(acc.fp32_miou - acc.int8_miou)
    assert "mIoU" in str(acc) and any("int8 check: fp32 mIoU" in n for n in report.notes)
    assert report.attempts[0]["int8_miou"] == acc.int8_miou and "int8_top1" not in report.attempts[0]
    assert report.to_dict()["int8_report"]["metric"] == "mIoU"
    assert report.pixel_agreement is not None  # the int8 file's classes against PyTorch's, per pixel


def test_int8_fallback_then_refusal_name_miou(tmp_path, segmenter, data, monkeypatch):
    installed("onnx")
    train, val, _, _ = data
    masks = own_masks(segmenter, val)
    imgs = ExportImages(val[:1], val[:2], train, val, masks)
    wrap_runtime(monkeypatch, every_pixel_wrong, only=1)  # the first calibration loses everything, the next not
    report = export_model(segmenter, tmp_path / "a.onnx", imgs, ExportConfig("onnx", "int8", max_drop=99.0))
    assert [a["calibration"] for a in report.attempts] == ["percentile", "minmax"]
    assert report.attempts[0]["drop"] == 100 and report.calibration == "minmax"
    monkeypatch.undo()
    wrap_runtime(monkeypatch, every_pixel_wrong)
    path = tmp_path / "b.onnx"
    with pytest.raises(Int8AccuracyError, match=r"int8 refused: fp32 mIoU 100\.00%, int8 mIoU 0\.00% .*exceeds "
                                                r"max_drop 99 mIoU pt") as info:
        export_model(segmenter, path, imgs, ExportConfig("onnx", "int8", max_drop=99.0, int8_fallback=False))
    assert "\n" not in str(info.value) and not path.exists()
    assert isinstance(info.value.report, MiouReport) and info.value.report.drop == 100


def test_int8_float_layer_fallback_ranks_a_segmenter(tmp_path, segmenter, data, monkeypatch):
    import dataclasses

    installed("onnx")
    train, val, _, _ = data
    imgs = ExportImages(val[:1], val[:2], train[:8], val[:4], own_masks(segmenter, val[:4]))
    # one calibration method (keeps the test short); it fails, so the most sensitive layer is kept in float
    monkeypatch.setitem(FORMATS, "onnx", dataclasses.replace(FORMATS["onnx"], int8_calibrations=("percentile",)))
    wrap_runtime(monkeypatch, every_pixel_wrong, only=1)
    report = export_model(segmenter, tmp_path / "m.onnx", imgs, ExportConfig("onnx", "int8", max_drop=99.0))
    assert len(report.attempts) == 2 and len(report.float_layers) == 1
    assert any("kept in float" in n for n in report.notes)


def test_bf16_is_judged_by_miou(tmp_path, segmenter, data, monkeypatch):
    installed("openvino")
    from mobilecnn.deploy.backends import bf16_supported

    if not bf16_supported():
        pytest.skip("this CPU has no bf16 instructions")
    _, val, _, _ = data
    imgs = ExportImages(val[:1], val[:2], check=val, check_labels=own_masks(segmenter, val))
    report = export_model(segmenter, tmp_path / "a.xml", imgs, ExportConfig("openvino", "bf16", max_drop=100.0))
    assert isinstance(report.int8_report, MiouReport) and report.int8_report.precision == "bf16"
    assert any(n.startswith("bf16 check: fp32 mIoU") and "bf16 mIoU" in n for n in report.notes)
    wrap_runtime(monkeypatch, every_pixel_wrong)
    with pytest.raises(Int8AccuracyError, match=r"bf16 refused: .*bf16 mIoU 0\.00%.*exceeds max_drop 1 mIoU pt"):
        export_model(segmenter, tmp_path / "b.xml", imgs, ExportConfig("openvino", "bf16", max_drop=1.0))
    assert not (tmp_path / "b.xml").exists()


@pytest.mark.parametrize("masks, match", [
    (lambda m: m[:, 0, 0], r"must be masks \(N, H, W\)"),
    (lambda m: m[:3], "has 3 masks for 8 check images"),
    (lambda m: m[:, :32, :32], "masks are 32x32 but the check images 64x64"),
    (lambda m: m.float(), "integer class indices"),
    (lambda m: torch.full_like(m, 40), "hold class 40; the model has 11 classes"),
    (lambda m: torch.full_like(m, 255), "no labelled pixel"),
    (lambda m: m.tolist(), "must be a tensor of masks"),
])
def test_bad_check_masks_are_one_line_errors(tmp_path, segmenter, data, masks, match):
    installed("onnx")
    train, val, good, _ = data
    imgs = ExportImages(val[:1], val[:2], train[:4], val, masks(good))
    with pytest.raises(ValueError, match=match) as info:
        export_model(segmenter, tmp_path / "m.onnx", imgs, ExportConfig("onnx", "int8"))
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def make_run(root: Path, scenes: Path, model: nn.Module) -> Path:
    """A segmentation run directory as `mobilecnn train` lays it out (config.json + checkpoints/step-N/)."""
    from mobilecnn.data.segmentation import load_segmentation
    from mobilecnn.runs.checkpoints import save_training_checkpoint
    from mobilecnn.runs.rundir import write_config

    info = load_segmentation(scenes, batch_size=4, crop_size=RES, workers=0)[2]
    run = root / "run"
    run.mkdir()
    write_config(run, {"format": "mobilecnn-run/1", "model": MODEL, "data": info.to_dict(), "resolution": RES,
                       "model_kwargs": {"num_classes": CLASSES, "in_chans": 3, "small_input": False}})
    save_training_checkpoint(run, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                             progress={"epoch": 1, "step": 4, "step_in_epoch": 0},
                             metadata={"data": json.dumps(info.to_dict()), "model_kwargs": json.dumps({})})
    return run


def test_export_run_of_a_segmentation_run(tmp_path, scenes, data, segmenter):
    installed("onnx")
    from mobilecnn.data.scenes import SCENE_CLASSES
    from mobilecnn.deploy.run_export import export_run

    run = make_run(tmp_path, scenes, segmenter)
    result = export_run(run, "onnx")
    assert Path(result["path"]) == run / "export" / f"{MODEL}.onnx" and Path(result["path"]).is_file()
    assert result["pixel_agreement"] >= SEG_MIN_AGREEMENT
    sidecar = json.loads(Path(result["sidecar"]).read_text())
    assert sidecar["data"]["task"] == "segmentation" and sidecar["data"]["class_names"] == SCENE_CLASSES
    assert sidecar["preprocessing"]["resolution"] == RES and sidecar["report"]["agreement_per"] == "pixel"
    assert load_runtime(result["path"])(data[1][:2].numpy()).shape == (2, CLASSES, RES, RES)
    # int8 from the lone weights file, on the run's own data: calibration from train/, the mIoU check on val/
    weights = next((run / "checkpoints").glob("step-*")) / "model.safetensors"
    result = export_run(weights, "onnx", tmp_path / "q.onnx", precision="int8", calibration_count=32,
                        check_count=8, max_drop=100.0)
    acc = result["int8_report"]
    assert acc["metric"] == "mIoU" and acc["images"] == 8 and acc["pixels"] > 0
    assert json.loads(Path(result["sidecar"]).read_text())["precision"] == "int8"


@pytest.mark.slow
def test_format_auto_on_a_segmentation_run(tmp_path, scenes, segmenter):
    """The road of `export RUN --format auto` (one runtime: each candidate costs processes; the int8 row's mIoU
    fields are the next test's)."""
    from mobilecnn.deploy.run_export import export_run

    run = make_run(tmp_path, scenes, segmenter)
    result = export_run(run, "auto", tmp_path / "auto" / "m", candidates=["torchscript"], seconds=0.3,
                        calibration_count=32, check_count=8)
    (row,) = result["candidates"]
    assert row["status"] == "verified" and row["pixel_agreement"] >= SEG_MIN_AGREEMENT, row.get("why")
    assert result["kept"] == str(tmp_path / "auto" / "m.pt") and Path(result["kept"]).is_file()
    md = Path(result["table_md"]).read_text()
    assert "| mIoU (drop) |" in md and "max drop 0.5 mIoU pt" in md
    sidecar = json.loads(Path(result["sidecar"]).read_text())
    assert sidecar["data"]["task"] == "segmentation" and sidecar["report"]["agreement_per"] == "pixel"


def test_auto_rows_and_table_of_a_segmenter_say_miou(tmp_path, segmenter, data):
    installed("onnx")
    from mobilecnn.deploy.auto import _export_candidate, auto_markdown

    train, val, masks, _ = data
    row = _export_candidate(segmenter, tmp_path / "q.onnx", ExportImages(val[:1], val[:2], train[:8], val, masks),
                            ExportConfig("onnx", "int8", max_drop=100.0), {"model": MODEL})
    assert row["status"] == "verified" and "top1" not in row
    assert row["miou"] == pytest.approx(row["fp32_miou"] - row["drop"]) and "pixel_agreement" in row
    row.update(candidate="onnxruntime int8", format="onnx", runtime="onnxruntime", precision="int8", latency_ms=1.0,
               ratio_to_best=[1.0, 1.0, 1.0])
    md = auto_markdown({"model": MODEL, "batch": 1, "threads": 1, "max_drop": 0.5, "timing_rounds": 3,
                        "seconds": 1.0, "best": row, "kept": str(tmp_path / "m.onnx"), "candidates": [row]})
    assert "max drop 0.5 mIoU pt" in md and "| mIoU (drop) |" in md and f"| {row['miou']:.2f} (" in md
