"""Training SSDLite on the run road: real scenes (COCO layout), COCO mAP, exact resume, --init, refusals, eval."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from mobilecnn import create_model
from mobilecnn.cli import main
from mobilecnn.data.detection import load_detection
from mobilecnn.errors import TrainError
from mobilecnn.evaluate import evaluate_run
from mobilecnn.models.weights_file import model_metadata, save_weights
from mobilecnn.runs.checkpoints import latest_checkpoint
from mobilecnn.runs.rundir import load_trained
from mobilecnn.train import TrainConfig, train
from mobilecnn.train.detect_eval import evaluate_detection
from mobilecnn.train.finetune import read_init
from mobilecnn.train.tasks import DetectionTask

DET = "ssdlite_mobilenet_v2_x0_35"


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(model=DET, data=str(data), out=str(out), batch_size=8, epochs=1, threads=1, seed=0, workers=0,
                resolution=64)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def det_run(tmp_path_factory, det_scenes):
    out = tmp_path_factory.mktemp("runs") / "det"
    train(_cfg(det_scenes, out))
    return out


def test_a_run_records_map_config_and_curves(det_run):
    records = [json.loads(line) for line in (det_run / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert {"val_mAP", "val_AP50", "val_loss"} <= set(last) and "val_top1" not in last
    assert 0.0 <= last["val_mAP"] <= 100.0 and 0.0 <= last["train_accuracy"] <= 100.0
    assert math.isfinite(last["train_loss"]) and math.isfinite(last["val_loss"])
    config = json.loads((det_run / "config.json").read_text())
    assert config["data"]["task"] == "detection" and config["data"]["num_classes"] == 11
    assert config["settings"]["recipe"] == "fast_detection" and config["resolution"] == 64
    assert (det_run / "curves.png").stat().st_size > 1000
    loaded = load_trained(det_run)
    assert loaded.model.num_classes == 11 and loaded.data["class_names"][0] == "background"


def test_eval_writes_map_detections_and_figure_and_matches_the_library(det_run, det_scenes, tmp_path):
    result = evaluate_run(det_run, out_dir=tmp_path / "ev", batch_size=4)
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["mAP"] == result["mAP"] and len(saved["per_class_ap"]) == 10 and saved["images"] == 12
    detections = json.loads((tmp_path / "ev" / "detections.json").read_text())
    assert detections and set(detections[0]) == {"image_id", "category_id", "bbox", "score"}
    assert all(0 <= d["bbox"][0] and d["bbox"][0] + d["bbox"][2] <= 64.01 for d in detections)  # original pixels
    assert (tmp_path / "ev" / "per_class_ap.png").stat().st_size > 1000
    _, val, info = load_detection(det_scenes, batch_size=4, resolution=64)
    direct = evaluate_detection(load_trained(det_run).model, val, info)
    assert direct["mAP"] == pytest.approx(result["mAP"]) and len(direct["results"]) == len(detections)
    assert main(["eval", str(det_run), "--out", str(tmp_path / "cli")]) == 0


def test_resume_ends_with_the_uninterrupted_weights(det_scenes, tmp_path):
    whole = tmp_path / "whole"
    train(_cfg(det_scenes, whole, epochs=2, checkpoint_every=4))
    part = tmp_path / "part"
    train(_cfg(det_scenes, part, epochs=2, checkpoint_every=4, max_steps=5))
    train(_cfg(det_scenes, part, epochs=2, checkpoint_every=4, resume=True))
    a, b = (load_file(str(latest_checkpoint(r) / "model.safetensors")) for r in (whole, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["val_mAP"] == ref[-1]["val_mAP"] and lines[-1]["train_loss"] == ref[-1]["train_loss"]


def test_init_from_a_classifier_fills_the_backbone_only(det_scenes, det_run, tmp_path):
    classifier = create_model("mobilenet_v2_x0_35", num_classes=10).eval()
    path = tmp_path / "cls.safetensors"
    save_weights(path, classifier.state_dict(), model_metadata(classifier))
    _, _, info = load_detection(det_scenes, batch_size=8, resolution=64)
    built = DetectionTask().build(_cfg(det_scenes, tmp_path / "r", init=str(path)), info, read_init(path))
    own = built.model.backbone.state_dict()
    source = classifier.state_dict()
    assert own and all(torch.equal(own[k], source[k]) for k in own)
    # a detector's own weights: all of them
    det_file = latest_checkpoint(det_run) / "model.safetensors"
    again = DetectionTask().build(_cfg(det_scenes, tmp_path / "r2", init=str(det_file)), info, read_init(det_file))
    saved = load_file(str(det_file))
    assert all(torch.equal(v, saved[k]) for k, v in again.model.state_dict().items() if k in saved)
    other = create_model("shufflenet_v1_g3_x0_5", num_classes=10)
    wrong = tmp_path / "other.safetensors"
    save_weights(wrong, other.state_dict(), model_metadata(other))
    with pytest.raises(TrainError, match="backbone"):
        DetectionTask().build(_cfg(det_scenes, tmp_path / "r3", init=str(wrong)), info, read_init(wrong))


@pytest.mark.parametrize("kw, match", [
    (dict(recipe="fast"), "trains classification models"),
    (dict(recipe="deeplab"), "trains segmentation models"),
    (dict(aspp=True), "apply to segmentation models"),
    (dict(batch_size=1), "batch"),
])
def test_bad_detection_options_are_refused(det_scenes, tmp_path, kw, match):
    with pytest.raises(TrainError, match=match):
        train(_cfg(det_scenes, tmp_path / "r", **kw))
    assert not (tmp_path / "r").exists()


def test_cli_trains_a_detector_and_prints_map(det_scenes, tmp_path, capsys):
    code = main(["train", "--model", DET, "--data", str(det_scenes), "--out", str(tmp_path / "c"), "--epochs", "1",
                 "--batch-size", "8", "--resolution", "64", "--threads", "1", "--workers", "0", "--max-steps", "2"])
    assert code == 0 and "val mAP" in capsys.readouterr().out
