"""predict with a detector: boxes drawn on each photo at its own size, COCO results in its original pixels."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mobilecnn import create_model
from mobilecnn.cli import main
from mobilecnn.data.images import Preprocessing, load_image
from mobilecnn.deploy.predict import Predictor, load_predictor, predict_files
from mobilecnn.deploy.predict_boxes import RESULTS_FILE, predict_boxes
from mobilecnn.deploy.predict_masks import predict_masks
from mobilecnn.errors import UsageError
from mobilecnn.models.ssd_boxes import PostProcess, detect, to_pixels
from mobilecnn.models.weights_file import model_metadata, save_weights

skimage_data = pytest.importorskip("skimage.data")

MODEL = "ssdlite_mobilenet_v2_x0_35"
CLASSES = ["background", "Trouser", "Bag", "Sneaker"]
CATEGORIES = [3, 7, 9]  # COCO ids of labels 1..3: not the labels themselves
PRE = Preprocessing(128, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATA = {"name": "coco:/nowhere", "layout": "coco", "task": "detection", "num_classes": 4, "class_names": CLASSES,
        "category_ids": CATEGORIES, "in_chans": 3, "resolution": 128, "preprocessing": PRE.to_dict()}


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three photos of different sizes and formats."""
    d = tmp_path_factory.mktemp("det_photos")
    Image.fromarray(skimage_data.astronaut()).resize((96, 96)).save(d / "astronaut.jpg", quality=90)
    Image.fromarray(skimage_data.coffee()).resize((150, 100)).save(d / "coffee.png")
    Image.fromarray(skimage_data.chelsea()).resize((61, 97)).save(d / "chelsea.png")
    return d


@pytest.fixture(scope="module")
def det_model():
    """An untrained SSDLite whose BN statistics come from the photos, its class logits scaled down (x0.3): with
    these statistics they saturate (every score ~1.0), and a threshold would filter nothing."""
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=len(CLASSES))
    x = torch.stack([PRE(_chw(p)) for p in (skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea())])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.cat([x, x.flip(-1)]))
        for head in model.class_head:
            head.conv.weight.mul_(0.3)
    return model.eval()


@pytest.fixture(scope="module")
def weights(det_model, tmp_path_factory):
    """The model as `mobilecnn train` saves it: safetensors with the model and dataset description."""
    path = tmp_path_factory.mktemp("det_weights") / "model.safetensors"
    return save_weights(path, det_model.state_dict(), {**model_metadata(det_model), "data": json.dumps(DATA)})


def _direct(model, path, threshold=0.3):
    """The detections of ``path`` computed by hand: warp, model, detect, scale to the image."""
    image = load_image(path, 3)
    with torch.no_grad():
        raw = model(PRE(image)[None])
    det = detect(raw, model.anchors(128, 128), PostProcess(score_threshold=threshold))[0]
    return to_pixels(det, image.shape[2], image.shape[1]), (image.shape[2], image.shape[1])


def test_boxes_are_the_models_detections_in_original_pixels(det_model, weights, photos, tmp_path):
    predictor = load_predictor(weights, device="cpu")
    assert predictor.task == "detection" and predictor.detection["category_ids"] == CATEGORIES
    out = tmp_path / "deep" / "out"  # created
    results = predict_boxes([photos], predictor, out)
    assert [r.path.rsplit("/", 1)[1] for r in results] == ["astronaut.jpg", "chelsea.png", "coffee.png"]
    records = json.loads((out / RESULTS_FILE).read_text())
    assert sorted(p.name for p in out.iterdir()) == ["astronaut_boxes.png", "chelsea_boxes.png", "coffee_boxes.png",
                                                     RESULTS_FILE]
    total = 0
    for number, r in enumerate(results, start=1):
        px, size = _direct(det_model, r.path)
        assert r.error is None and r.size == size and r.image_id == number
        with Image.open(r.boxes) as drawn:
            assert drawn.size == size and drawn.mode == "RGB"
        mine = [rec for rec in records if rec["image_id"] == number]
        assert len(mine) == len(r.detections) == len(px) and all(rec["file_name"] == r.path for rec in mine)
        for rec, (label, score, box), b, s, c in zip(mine, r.detections, px.boxes.tolist(), px.scores.tolist(),
                                                     px.labels.tolist()):
            assert rec["category_id"] == CATEGORIES[c - 1] and label == CLASSES[c] and score == pytest.approx(s)
            assert rec["bbox"] == pytest.approx([b[0], b[1], b[2] - b[0], b[3] - b[1]], abs=0.011)
            assert box == pytest.approx(b, abs=0.006) and 0 <= b[0] <= b[2] <= size[0] and 0 <= b[1] <= b[3] <= size[1]
            assert s >= 0.3
        total += len(mine)
    assert total > 0  # the drawing and the pixel scaling were exercised
    # a drawn image is the photo with boxes on it
    original = load_image(photos / "coffee.png", 3).permute(1, 2, 0).numpy()
    drawn = np.asarray(Image.open(out / "coffee_boxes.png"))
    assert drawn.shape == original.shape and (results[2].detections == [] or not np.array_equal(drawn, original))


def test_score_threshold_filters_and_is_validated(weights, photos, tmp_path):
    predictor = load_predictor(weights)
    low = predict_boxes([photos / "coffee.png"], predictor, tmp_path / "a", score_threshold=0.0)[0]
    high = predict_boxes([photos / "coffee.png"], predictor, tmp_path / "b", score_threshold=0.6)[0]
    assert len(high.detections) < len(low.detections) and all(s >= 0.6 for _, s, _ in high.detections)
    for bad in (1.0, -0.1, float("nan"), "0.5", True):
        with pytest.raises(UsageError, match=r"--score-threshold") as info:
            predict_boxes([photos / "coffee.png"], predictor, tmp_path / "c", score_threshold=bad)
        assert "\n" not in str(info.value)


def test_bad_file_and_same_stems(weights, photos, tmp_path):
    (tmp_path / "a").mkdir()
    Image.open(photos / "chelsea.png").save(tmp_path / "a" / "coffee.png")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    results = predict_boxes([photos / "coffee.png", bad, tmp_path / "missing.png", tmp_path / "a" / "coffee.png"],
                            load_predictor(weights), out, batch_size=1)
    assert [r.error is None for r in results] == [True, False, False, True]
    for r in results[1:3]:
        assert "\n" not in r.error and r.error.startswith(r.path)
    assert results[3].boxes.endswith("coffee-2_boxes.png") and "coffee-2_boxes.png" in results[3].note
    assert Image.open(results[3].boxes).size == (61, 97)
    records = json.loads((out / RESULTS_FILE).read_text())
    assert {rec["image_id"] for rec in records} <= {1, 4}  # ids are the inputs' positions, the bad ones skipped
    assert sorted(p.name for p in out.iterdir()) == ["coffee-2_boxes.png", "coffee_boxes.png", RESULTS_FILE]


def test_task_checks(weights, photos, tmp_path):
    detector = load_predictor(weights)
    with pytest.raises(UsageError, match="detection model: its predictions are boxes"):
        predict_files([photos / "coffee.png"], detector)
    with pytest.raises(UsageError, match="not a segmentation model: its predictions are boxes"):
        predict_masks([photos / "coffee.png"], detector, tmp_path)
    classifier = Predictor(lambda x: np.zeros((len(x), 3), np.float32), ["a", "b", "c"], PRE, "a classifier")
    with pytest.raises(UsageError, match="not a detector: its predictions are labels"):
        predict_boxes([photos / "coffee.png"], classifier, tmp_path)


def test_cli_prints_detections_and_writes_the_results(weights, photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "preds"
    code = main(["predict", str(photos / "coffee.png"), "--model", str(weights), "--out", str(out),
                 "--score-threshold", "0.5"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[0].startswith(f"{photos / 'coffee.png'}: ") and "scoring >= 0.5" in lines[0]
    assert lines[0].endswith(f"-> {out / 'coffee_boxes.png'}") and lines[-1].endswith(str(out / RESULTS_FILE))
    count = int(lines[0].split(": ")[1].split()[0])
    assert len(lines) == count + 2 and all(line.startswith("  ") and "[" in line for line in lines[1:-1])
    # --json; a bad file is an error line and exit 1; default folder ./predictions
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil\x1b[2Jname.png"
    bad.write_text("no image")
    code = main(["predict", str(photos / "chelsea.png"), str(bad), "--model", str(weights), "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 1 and report["task"] == "detection" and report["score_threshold"] == 0.3
    assert report["results"] == "predictions/detections.json" and (tmp_path / report["results"]).is_file()
    assert report["predictions"][1]["error"] and "\x1b" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["1", "-0.5", "nan", "abc"])
def test_cli_refuses_a_bad_threshold(weights, photos, tmp_path, capsys, value):
    code = main(["predict", str(photos / "coffee.png"), "--model", str(weights), "--out", str(tmp_path),
                 "--score-threshold", value])
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error" in line]  # argparse's usage lines, then one error
    assert code == 2 and len(errors) == 1 and "--score-threshold" in errors[0]
    assert list(tmp_path.iterdir()) == []
