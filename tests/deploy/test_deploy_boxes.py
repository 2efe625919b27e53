"""Detectors through export: the raw outputs (N, A, 4 + C) in the file, fp32 verified by its detections (same
classes, boxes paired at IoU >= 0.99), bf16/int8 judged by their COCO mAP drop, the sidecar's detection block,
a detection run exported on its own COCO folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobilecnn import create_model
from mobilecnn.deploy.boxes import (
    MIN_BOX_IOU,
    VERIFY_SCORE,
    BoxJudge,
    BoxTruth,
    MapReport,
    compare_detections,
    facts_anchors,
)
from mobilecnn.deploy.export import ExportConfig, ExportImages, export_model
from mobilecnn.deploy.formats import FORMATS, load_runtime
from mobilecnn.errors import DataError, ExportVerificationError, Int8AccuracyError, UsageError
from mobilecnn.models.ssd_boxes import PostProcess, detect

MODEL = "ssdlite_mobilenet_v2_x0_35"
RES = 128
CLASSES = 11  # background + the scenes' 10 Fashion-MNIST classes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """A tiny Fashion-MNIST scenes dataset in the COCO layout."""
    from mobilecnn.data.scenes import ScenesConfig, generate_scenes

    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file() and not os.environ.get(
            "MOBILECNN_DATA_DIR"):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("scenes") / "coco"
    generate_scenes(ScenesConfig(task="detection", out=str(out), train_count=16, val_count=8, size=96))
    return out


@pytest.fixture(scope="module")
def data(scenes):
    """(train images, val images, the val BoxTruth, the DetDataInfo) at RES."""
    from mobilecnn.data.detection import DetOptions, load_detection

    train, val, info = load_detection(scenes, DetOptions(batch_size=4, eval_batch_size=8, resolution=RES, workers=0,
                                                         photometric=False, zoom_out=False, iou_crop=False, flip=False))
    x_train = torch.cat([x for x, _ in train.batches(0)])
    x_val = torch.cat([x for x, _ in val.batches(0)])
    truth = BoxTruth(info.val_annotations, tuple(val.image_ids), tuple(val.image_sizes), tuple(info.category_ids))
    return x_train, x_val, truth, info


def confident(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """An untrained detector with BN statistics from ``images`` and its class logits spread (x8), so that many
    anchors score above 0.3: the verification then compares real detections, not an empty list."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(images)
        for head in model.class_head:
            head.conv.weight.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="module")
def detector(data) -> nn.Module:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the tests' one_thread
    try:
        return confident(create_model(MODEL, num_classes=CLASSES), data[0])
    finally:
        torch.set_num_threads(threads)


def own_truth(model: nn.Module, images: torch.Tensor, anchors: torch.Tensor) -> BoxTruth:
    """The model's own detections scoring >= 0.5 as COCO ground truth: fp32 scores 100% mAP, so any loss shows."""
    with torch.no_grad():
        dets = detect(model(images), anchors, PostProcess(score_threshold=0.5))
    images_, anns = [], []
    for i, det in enumerate(dets, start=1):
        images_.append({"id": i, "width": 200, "height": 100, "file_name": f"{i}.png"})
        for (x1, y1, x2, y2), label in zip((det.boxes * torch.tensor([200, 100, 200, 100])).tolist(),
                                           det.labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": label, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    assert len(anns) >= 10
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, CLASSES)]
    return BoxTruth({"images": images_, "annotations": anns, "categories": cats}, tuple(range(1, len(dets) + 1)),
                    ((200, 100),) * len(dets), tuple(range(1, CLASSES)))


def wrap_runtime(monkeypatch, transform, only: int | None = None):
    """Make the runtime that verify loads return ``transform(raw)`` (for its first ``only`` loads)."""
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


def anchors_moved(z: np.ndarray) -> np.ndarray:
    """Raw outputs given to the wrong anchors: every box lands elsewhere."""
    return np.roll(z, 7, axis=1)


def installed(fmt: str) -> None:
    if not FORMATS[fmt].installed():
        pytest.skip(f"{fmt} is not installed here (mobilecnn.deploy.backends)")


def test_fp32_onnx_holds_the_raw_outputs_and_gives_pytorchs_detections(tmp_path, detector, data):
    installed("onnx")
    _, val, _, info = data
    path = tmp_path / "d.onnx"
    sidecar = {"model": MODEL, "data": info.to_dict()}
    report = export_model(detector, path, ExportImages(val[:1], val[:4]), ExportConfig("onnx"), sidecar=sidecar)
    boxes = report.box_agreement
    assert report.rel_diff <= 1e-4 and boxes is not None and boxes["images_differing"] == 0
    assert boxes["reference"] >= 10 and boxes["matched"] >= boxes["reference"] and report.top1_agreement == 1.0
    assert boxes["lowest_iou"] >= MIN_BOX_IOU and boxes["score_threshold"] == VERIFY_SCORE
    assert report.to_dict()["agreement_per"] == "detection" and "pixel_agreement" not in report.to_dict()
    raw = load_runtime(path)(val[4:7].numpy())
    assert raw.shape == (3, detector.num_anchors(RES, RES), 4 + CLASSES)  # the raw head outputs, no NMS inside
    # the sidecar rebuilds the anchors without the model
    side = json.loads(Path(str(path) + ".mobilecnn.json").read_text())
    facts = side["detection"]
    assert facts["task"] == "detection" and facts["input_size"] == [RES, RES]
    assert facts["class_names"] == info.class_names and facts["category_ids"] == info.category_ids
    assert facts["post"] == {"score_threshold": 1e-8, "nms_iou": 0.6, "per_class": 100, "max_detections": 100}
    assert torch.equal(facts_anchors(facts, "sidecar"), detector.anchors(RES, RES))
    with torch.no_grad():
        ref = detector(val[4:7]).numpy()
    match = compare_detections(ref, raw, BoxJudge(detector.anchors(RES, RES)))
    assert match.images_differing == 0 and match.reference > 0


def test_a_file_with_moved_boxes_fails_verification(tmp_path, detector, data, monkeypatch):
    installed("onnx")
    _, val, _, _ = data
    wrap_runtime(monkeypatch, anchors_moved)
    path = tmp_path / "d.onnx"
    # rtol out of the way: the detections alone refuse it
    with pytest.raises(ExportVerificationError, match=r"detections differ from PyTorch's on 4 of 4 verification "
                                                      r"images: \d+ of PyTorch's \d+ and \d+ of the file's \d+ "
                                                      r"detections scoring >= 0\.3 have no partner of the same "
                                                      r"class with IoU >= 0\.99; the file was deleted") as info:
        export_model(detector, path, ExportImages(val[:1], val[:4]), ExportConfig("onnx", rtol=100.0))
    assert "\n" not in str(info.value) and not path.exists() and list(tmp_path.iterdir()) == []
    assert info.value.report.box_agreement["unmatched_reference"] > 0


def test_pairing_tolerates_the_score_border_and_nothing_else():
    """A detection scoring 0.301 in PyTorch and 0.299 in the file is paired; a lost one is not."""
    anchors = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])

    def raw(p: float) -> np.ndarray:  # anchor 0: class 1 at probability p; anchor 1: background
        z = np.zeros((1, 2, 7), np.float32)
        z[0, 0, 4:] = [0.0, np.log(p / (1 - p)), -30.0]
        z[0, 1, 4:] = [10.0, -30.0, -30.0]
        return z

    judge = BoxJudge(anchors)
    m = compare_detections(raw(0.301), raw(0.299), judge)
    assert m.images_differing == 0 and (m.reference, m.file, m.matched) == (1, 0, 1) and m.lowest_iou == 1.0
    m = compare_detections(raw(0.301), raw(0.2), judge)  # lost
    assert m.images_differing == 1 and m.unmatched_reference == 1 and m.agreement == 0.0
    shifted = raw(0.301)
    shifted[0, 0, 0] = 0.5  # the box moved by 5% of the anchor's width: IoU ~0.9
    m = compare_detections(raw(0.301), shifted, judge)
    assert m.images_differing == 1 and m.unmatched_file == 1


def test_an_nms_tie_is_not_a_difference():
    """Two overlapping anchors of one class at equal scores: NMS keeps one in PyTorch, the other in the file."""
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2]])

    def raw(p0: float, p1: float) -> np.ndarray:
        z = np.zeros((1, 2, 6), np.float32)
        z[0, :, 5] = [np.log(p0 / (1 - p0)), np.log(p1 / (1 - p1))]
        return z

    judge = BoxJudge(anchors)
    m = compare_detections(raw(0.9001, 0.9), raw(0.9, 0.9001), judge)
    assert (m.nms_ties, m.images_differing, m.matched) == (2, 0, 0)
    # PyTorch keeps anchor 1, the file anchor 0 because its anchor 1 scores 0.2: a difference, not a tie
    m = compare_detections(raw(0.9, 0.9001), raw(0.9, 0.2), judge)
    assert m.images_differing == 1 and (m.unmatched_reference, m.unmatched_file, m.nms_ties) == (1, 0, 1)


def test_int8_onnx_is_judged_by_its_map_drop(tmp_path, detector, data):
    """int8 on the scenes' own val annotations: both mAPs through collect_detections + coco_map on the same
    images (~9 s on 2 shared cores)."""
    installed("onnx")
    from mobilecnn.train.detect_eval import coco_map, collect_detections

    train, val, truth, info = data
    report = export_model(detector, tmp_path / "q.onnx", ExportImages(val[:1], val[:2], train, val, truth),
                          ExportConfig("onnx", "int8", max_drop=100.0))
    acc = report.int8_report
    assert isinstance(acc, MapReport) and acc.precision == "int8" and acc.images == len(val)
    assert acc.drop == pytest.approx(acc.fp32_map - acc.int8_map) and 0 <= acc.agreement <= 100
    anchors = detector.anchors(RES, RES)

    class Held:
        image_ids, image_sizes = list(truth.image_ids), list(truth.sizes)

        def batches(self, epoch):
            yield val, None

    with torch.no_grad():
        results, ids = collect_detections(lambda x, y: detector(x), Held(), anchors, info.category_ids, PostProcess())
    assert acc.fp32_map == pytest.approx(coco_map(info.val_annotations, results, ids)["mAP"])
    assert any(n.startswith("int8 check: fp32 mAP") for n in report.notes)
    assert report.attempts[0]["int8_map"] == acc.int8_map and report.to_dict()["int8_report"]["metric"] == "mAP"
    assert report.box_agreement is not None  # reported for int8, not gated


def test_int8_refusal_names_the_map_drop(tmp_path, detector, data, monkeypatch):
    installed("onnx")
    train, val, _, _ = data
    truth = own_truth(detector, val, detector.anchors(RES, RES))
    wrap_runtime(monkeypatch, anchors_moved)
    path = tmp_path / "q.onnx"
    with pytest.raises(Int8AccuracyError, match=r"int8 refused: fp32 mAP \d+\.\d\d%, int8 mAP \d+\.\d\d% .*exceeds "
                                                r"max_drop 5 mAP pt after 1 attempt") as info:
        export_model(detector, path, ExportImages(val[:1], val[:2], train[:8], val, truth),
                     ExportConfig("onnx", "int8", max_drop=5.0, int8_fallback=False))
    assert "\n" not in str(info.value) and not path.exists()
    assert isinstance(info.value.report, MapReport) and info.value.report.drop > 5


def test_check_set_of_a_detector_is_validated(tmp_path, detector, data):
    train, val, truth, _ = data
    for labels, match in [(torch.zeros(len(val), dtype=torch.long), "must be a BoxTruth"),
                          (BoxTruth(truth.annotations, truth.image_ids[:2], truth.sizes[:2], truth.category_ids),
                           "2 image ids and 2 sizes for 8 check images"),
                          (BoxTruth(truth.annotations, truth.image_ids, truth.sizes, (1, 2)), "names 2 categories"),
                          (BoxTruth(str(tmp_path / "none.json"), truth.image_ids, truth.sizes, truth.category_ids),
                           "COCO instances file")]:
        with pytest.raises(ValueError, match=match) as info:
            export_model(detector, tmp_path / "m.onnx", ExportImages(val[:1], val[:2], train[:4], val, labels),
                         ExportConfig("onnx", "int8"))
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="mAP points, with a BoxTruth, for a detector"):
        export_model(detector, tmp_path / "m.onnx", ExportImages(val[:1], val[:2], train[:4]),
                     ExportConfig("onnx", "int8"))
    assert list(tmp_path.iterdir()) == []


def make_run(root: Path, scenes: Path, model: nn.Module, name: str | None = None) -> Path:
    """A detection run directory as `mobilecnn train` lays it out (config.json + checkpoints/step-N/); ``name``:
    another dataset name recorded."""
    from mobilecnn.data.detection import DetOptions, load_detection
    from mobilecnn.runs.checkpoints import save_training_checkpoint
    from mobilecnn.runs.rundir import write_config

    described = load_detection(scenes, DetOptions(batch_size=4, resolution=RES, workers=0))[2].to_dict()
    if name is not None:
        described["name"] = name
    run = root / "run"
    run.mkdir()
    write_config(run, {"format": "mobilecnn-run/1", "model": MODEL, "data": described, "resolution": RES,
                       "model_kwargs": {"num_classes": CLASSES, "in_chans": 3, "small_input": False}})
    save_training_checkpoint(run, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                             progress={"epoch": 1, "step": 4, "step_in_epoch": 0},
                             metadata={"data": json.dumps(described), "model_kwargs": json.dumps({})})
    return run


def test_export_run_of_a_detection_run_then_predict_from_the_file(tmp_path, scenes, data, detector):
    installed("onnx")
    from mobilecnn.deploy.predict import load_predictor
    from mobilecnn.deploy.predict_boxes import predict_boxes
    from mobilecnn.deploy.run_export import export_run

    run = make_run(tmp_path, scenes, detector)
    result = export_run(run, "onnx")
    assert Path(result["path"]) == run / "export" / f"{MODEL}.onnx" and result["box_agreement"]["images"] == 8
    sidecar = json.loads(Path(result["sidecar"]).read_text())
    assert sidecar["data"]["task"] == "detection" and sidecar["detection"]["category_ids"] == data[3].category_ids
    assert sidecar["report"]["agreement_per"] == "detection"
    # predict: the file (anchors from the sidecar) and the run (PyTorch) give the same boxes
    images = sorted((scenes / "val").iterdir())[:3]
    from_file = predict_boxes(images, load_predictor(result["path"]), tmp_path / "f", score_threshold=0.5)
    from_run = predict_boxes(images, load_predictor(run, device="cpu"), tmp_path / "r", score_threshold=0.5)
    assert sum(len(r.detections) for r in from_file) > 0
    for a, b in zip(from_file, from_run):
        assert [d[0] for d in a.detections] == [d[0] for d in b.detections]
        assert np.allclose([d[2] for d in a.detections], [d[2] for d in b.detections], atol=0.05)


def test_export_run_needs_the_runs_coco_folder(tmp_path, scenes, detector):
    from mobilecnn.deploy.run_export import export_run

    run = make_run(tmp_path, scenes, detector, name="somewhere")
    weights = next((run / "checkpoints").glob("step-*")) / "model.safetensors"
    with pytest.raises(UsageError, match=r"names no COCO folder \('somewhere'\); pass --data-dir") as info:
        export_run(run, "onnx")
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"pass --data-dir or --calibration-data a COCO-layout folder") as info:
        export_run(weights, "onnx", tmp_path / "x.onnx", data_dir=str(tmp_path / "nowhere"))
    assert "\n" not in str(info.value) and not (tmp_path / "x.onnx").exists()


def test_auto_rows_and_table_of_a_detector_say_map():
    from mobilecnn.deploy.auto import auto_markdown

    row = {"candidate": "onnxruntime int8", "format": "onnx", "runtime": "onnxruntime", "precision": "int8",
           "status": "verified", "latency_ms": 1.0, "ratio_to_best": [1.0, 1.0, 1.0], "map": 20.5, "fp32_map": 21.0,
           "drop": 0.5, "box_agreement": 0.97}
    md = auto_markdown({"model": MODEL, "batch": 1, "threads": 1, "max_drop": 0.5, "timing_rounds": 3,
                        "seconds": 1.0, "best": row, "kept": "m.onnx", "candidates": [row]})
    assert "max drop 0.5 mAP pt" in md and "| mAP (drop) |" in md and "| 20.50 (+0.50) |" in md
