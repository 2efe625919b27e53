"""Training Mobile DeepLabv3 on the run road: real scenes, mIoU, exact resume, --init, refusals, eval."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mobilecnn import create_model
from mobilecnn.cli import main
from mobilecnn.data.segmentation import load_segmentation
from mobilecnn.errors import CheckpointError, TrainError
from mobilecnn.evaluate import evaluate_run
from mobilecnn.models.weights_file import model_metadata, save_weights
from mobilecnn.runs.checkpoints import latest_checkpoint
from mobilecnn.runs.rundir import load_trained
from mobilecnn.train import TrainConfig, learning_rate, train
from mobilecnn.train.finetune import read_init
from mobilecnn.train.losses import SmoothedCrossEntropy
from mobilecnn.train.segment_eval import SegEvalOptions, evaluate_segmentation
from mobilecnn.train.tasks import SegmentationTask

SEG = "deeplabv3_mobilenet_v2_x0_35"


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(model=SEG, data=str(data), out=str(out), batch_size=8, epochs=1, threads=1, seed=0, workers=0)
    base.update(kw)
    return TrainConfig(**base)


def test_poly_schedule_and_ignored_pixels_in_the_loss():
    lrs = [learning_rate(s, 100, 1.0, "poly", 0, 10) for s in (0, 50, 99)]
    assert lrs[0] == 1.0 and abs(lrs[1] - 0.5 ** 0.9) < 1e-9 and lrs[2] < 0.02
    logits, target = torch.randn(2, 5, 6, 7), torch.randint(0, 5, (2, 6, 7))
    target[0, :3] = 255
    want = nn.CrossEntropyLoss(ignore_index=255)(logits, target)
    assert torch.allclose(SmoothedCrossEntropy(0.0, ignore_index=255)(logits, target), want, atol=1e-6)


def test_a_run_records_miou_config_and_curves(seg_run):
    records = [json.loads(line) for line in (seg_run / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert {"val_miou", "val_pixel_accuracy", "val_loss"} <= set(last) and "val_top1" not in last
    assert 0.0 <= last["val_miou"] <= 100.0 and 0.0 <= last["train_accuracy"] <= 100.0
    config = json.loads((seg_run / "config.json").read_text())
    assert config["data"]["task"] == "segmentation" and config["data"]["num_classes"] == 11
    assert config["settings"]["recipe"] == "fast_segmentation" and config["model_kwargs"]["num_classes"] == 11
    assert (seg_run / "curves.png").stat().st_size > 1000
    loaded = load_trained(seg_run)
    assert loaded.model.num_classes == 11 and loaded.data["class_names"][0] == "background"


def test_eval_writes_miou_and_figure_and_matches_the_library(seg_run, seg_scenes, tmp_path):
    result = evaluate_run(seg_run, out_dir=tmp_path / "ev", batch_size=4)
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["miou"] == result["miou"] and len(saved["per_class_iou"]) == 11
    assert (tmp_path / "ev" / "per_class_iou.png").stat().st_size > 1000
    # the same number from the library function on the same batches
    _, val, info = load_segmentation(seg_scenes, batch_size=4)
    direct = evaluate_segmentation(load_trained(seg_run).model, val, SegEvalOptions(info.num_classes))
    assert direct["miou"] == pytest.approx(result["miou"]) and direct["pixels"] == result["pixels"]
    assert result["pixels"] == 12 * 64 * 64 - _ignored(seg_scenes)
    mf = evaluate_run(seg_run, out_dir=tmp_path / "mf", batch_size=4, multi_scale=True)
    assert mf["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and mf["flip"] and mf["pixels"] == result["pixels"]
    assert main(["eval", str(seg_run), "--out", str(tmp_path / "cli")]) == 0


def _ignored(folder) -> int:
    import numpy as np
    from PIL import Image

    names = (folder / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    return sum(int((np.asarray(Image.open(folder / "SegmentationClass" / f"{n}.png")) == 255).sum()) for n in names)


def test_resume_ends_with_the_uninterrupted_weights(seg_scenes, tmp_path):
    whole = tmp_path / "whole"
    train(_cfg(seg_scenes, whole, epochs=2, checkpoint_every=4))
    part = tmp_path / "part"
    train(_cfg(seg_scenes, part, epochs=2, checkpoint_every=4, max_steps=5))
    train(_cfg(seg_scenes, part, epochs=2, checkpoint_every=4, resume=True))
    a, b = (load_file(str(latest_checkpoint(r) / "model.safetensors")) for r in (whole, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["val_miou"] == ref[-1]["val_miou"] and lines[-1]["train_loss"] == ref[-1]["train_loss"]


def test_init_from_a_classifier_fills_the_backbone_only(seg_scenes, tmp_path):
    classifier = create_model("mobilenet_v2_x0_35", num_classes=10).eval()
    path = tmp_path / "cls.safetensors"
    save_weights(path, classifier.state_dict(), model_metadata(classifier))
    _, _, info = load_segmentation(seg_scenes, batch_size=8)
    built = SegmentationTask().build(_cfg(seg_scenes, tmp_path / "r", init=str(path)), info, read_init(path))
    own = built.model.backbone.state_dict()
    source = classifier.state_dict()
    assert all(torch.equal(own[k], source[k]) for k in own)
    run = train(_cfg(seg_scenes, tmp_path / "r", init=str(path), max_steps=2))
    assert math.isfinite(run["val_loss"])
    # a segmenter's own weights: all of them, a new logits layer for another class count
    seg_file = latest_checkpoint(tmp_path / "r") / "model.safetensors"
    again = SegmentationTask().build(_cfg(seg_scenes, tmp_path / "r2", init=str(seg_file)), info, read_init(seg_file))
    assert torch.equal(again.model.state_dict()["head.project.conv.weight"],
                       load_file(str(seg_file))["head.project.conv.weight"])
    other = create_model("shufflenet_v1_g3_x0_5", num_classes=10)
    wrong = tmp_path / "other.safetensors"
    save_weights(wrong, other.state_dict(), model_metadata(other))
    with pytest.raises(TrainError, match="backbone"):
        SegmentationTask().build(_cfg(seg_scenes, tmp_path / "r3", init=str(wrong)), info, read_init(wrong))
    grey = create_model("mobilenet_v2_x0_35", num_classes=10, in_chans=1)
    grey_file = tmp_path / "grey.safetensors"
    save_weights(grey_file, grey.state_dict(), model_metadata(grey))
    with pytest.raises(CheckpointError, match="in_chans"):
        SegmentationTask().build(_cfg(seg_scenes, tmp_path / "r4", init=str(grey_file)), info, read_init(grey_file))


@pytest.mark.parametrize("kw, match", [
    (dict(recipe="fast"), "trains classification models"),
    (dict(output_stride=4), "--output-stride 4"),
    (dict(batch_size=1), "batch"),
])
def test_bad_segmentation_options_are_refused(seg_scenes, tmp_path, kw, match):
    with pytest.raises(TrainError, match=match):
        train(_cfg(seg_scenes, tmp_path / "r", **kw))
    assert not (tmp_path / "r").exists()


def test_segmenter_options_on_a_classifier_are_refused(tmp_path):
    with pytest.raises(TrainError, match="apply to segmentation models"):
        train(TrainConfig(model="mobilenet_v2_x0_35", out=str(tmp_path / "c"), aspp=True))


def test_cli_trains_a_segmenter_with_aspp_output_stride_8_and_amp(seg_scenes, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--model", SEG, "--data", str(seg_scenes), "--out", str(out), "--batch-size", "8",
                 "--max-steps", "2", "--threads", "1", "--workers", "0", "--aspp", "--output-stride", "8", "--amp"]) == 0
    assert "val mIoU" in capsys.readouterr().out
    model = load_trained(out).model
    assert model.aspp and model.output_stride == 8
    assert json.loads((out / "config.json").read_text())["settings"]["amp_dtype"] == "bfloat16"
