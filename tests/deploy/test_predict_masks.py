"""predict with a segmentation model: masks, overlays and class shares of real photos (scikit-image)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mobilecnn import create_model
from mobilecnn.cli import main
from mobilecnn.data.images import Preprocessing, load_image
from mobilecnn.data.scenes_compose import voc_palette
from mobilecnn.deploy.predict import Predictor, load_predictor, predict_files
from mobilecnn.deploy.predict_masks import predict_masks, upsampled_argmax
from mobilecnn.errors import UsageError
from mobilecnn.models.weights_file import model_metadata, save_weights
from mobilecnn.plots import plot_per_class_iou, save_overlay_png

skimage_data = pytest.importorskip("skimage.data")

MODEL = "deeplabv3_mobilenet_v2_x0_35"
CLASSES = ["background", "Trouser", "Bag", "Sneaker"]
PRE = Preprocessing(64, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATA = {"name": "folders:/nowhere", "task": "segmentation", "num_classes": 4, "class_names": CLASSES,
        "in_chans": 3, "crop_size": 64, "preprocessing": PRE.to_dict()}


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three photos of different sizes and formats."""
    d = tmp_path_factory.mktemp("seg_photos")
    Image.fromarray(skimage_data.astronaut()).resize((96, 96)).save(d / "astronaut.jpg", quality=90)
    Image.fromarray(skimage_data.coffee()).resize((150, 100)).save(d / "coffee.png")
    Image.fromarray(skimage_data.chelsea()).resize((61, 97)).save(d / "chelsea.png")
    return d


@pytest.fixture(scope="module")
def seg_model():
    """An untrained DeepLabv3 whose BN statistics come from the photos (random weights with default BN
    statistics saturate ReLU6 and predict one class everywhere)."""
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=len(CLASSES))
    photos = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea()]
    x = torch.stack([PRE(_chw(p)) for p in photos])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.cat([x, x.flip(-1)]))
    return model.eval()


@pytest.fixture(scope="module")
def weights(seg_model, tmp_path_factory):
    """The model as `mobilecnn train` saves it: safetensors with the model and dataset description."""
    path = tmp_path_factory.mktemp("seg_weights") / "model.safetensors"
    return save_weights(path, seg_model.state_dict(), {**model_metadata(seg_model), "data": json.dumps(DATA)})


def _direct_mask(model, path) -> np.ndarray:
    image = load_image(path, 3)
    with torch.no_grad():
        logits = model(PRE(image)[None])
    return F.interpolate(logits, size=tuple(image.shape[1:]), mode="bilinear",
                         align_corners=False)[0].argmax(0).numpy()


def test_masks_are_the_upsampled_argmax_of_the_model(seg_model, weights, photos, tmp_path):
    predictor = load_predictor(weights, device="cpu")
    assert predictor.task == "segmentation" and predictor.class_names == CLASSES
    out = tmp_path / "deep" / "out"  # created
    results = predict_masks([photos], predictor, out, batch_size=1)
    assert [r.error for r in results] == [None] * 3
    seen = set()
    for r in results:
        src = Image.open(r.path)
        with Image.open(r.mask) as mask:
            assert mask.mode == "P" and mask.size == src.size == r.size
            assert mask.getpalette()[:12] == voc_palette()[:12]
            values = np.asarray(mask)
        assert values.max() < len(CLASSES)
        assert np.array_equal(values, _direct_mask(seg_model, r.path)), r.path
        seen |= set(np.unique(values).tolist())
        assert abs(sum(s for _, s in r.shares) - 1.0) < 1e-9
        assert [s for _, s in r.shares] == sorted((s for _, s in r.shares), reverse=True)
        assert all(s > 0 for _, s in r.shares) and {n for n, _ in r.shares} <= set(CLASSES)
        counts = np.bincount(values.ravel(), minlength=4) / values.size
        assert dict(r.shares) == {CLASSES[c]: counts[c] for c in range(4) if counts[c] > 0}
    assert len(seen) >= 2  # the photos are not all one class
    # batches of several images give the same masks
    again = predict_masks([photos], predictor, tmp_path / "batched", batch_size=4)
    for a, b in zip(results, again):
        assert np.array_equal(np.asarray(Image.open(a.mask)), np.asarray(Image.open(b.mask)))


def test_overlay_keeps_the_image_size_and_background_pixels(weights, photos, tmp_path):
    results = predict_masks([photos / "coffee.png"], load_predictor(weights), tmp_path)
    r = results[0]
    with Image.open(r.overlay) as overlay:
        overlay = overlay.convert("RGB")
    w, h = r.size
    assert overlay.width > w and overlay.height >= h  # the legend is beside the image
    picture = np.asarray(overlay)[:h, :w]
    original = load_image(photos / "coffee.png", 3).permute(1, 2, 0).numpy()
    mask = np.asarray(Image.open(r.mask))
    assert np.array_equal(picture[mask == 0], original[mask == 0])  # background: not blended
    if (mask != 0).any():
        assert not np.array_equal(picture[mask != 0], original[mask != 0])
    # nothing but the two files in the output folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coffee_mask.png", "coffee_overlay.png"]


def test_bad_file_is_named_and_the_others_still_go_through(weights, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    results = predict_masks([photos / "chelsea.png", bad, tmp_path / "missing.png", photos / "coffee.png"],
                            load_predictor(weights), out)
    assert [r.error is None for r in results] == [True, False, False, True]
    for r in results[1:3]:
        assert "\n" not in r.error and r.error.startswith(r.path)
    assert sorted(p.name for p in out.iterdir()) == ["chelsea_mask.png", "chelsea_overlay.png",
                                                     "coffee_mask.png", "coffee_overlay.png"]


def test_same_stem_inputs_do_not_overwrite_each_other(weights, photos, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.open(photos / "chelsea.png").save(tmp_path / "a" / "cat.png")
    Image.open(photos / "coffee.png").save(tmp_path / "b" / "cat.jpg")
    Image.open(photos / "coffee.png").save(tmp_path / "b" / "CAT.bmp")
    out = tmp_path / "out"
    results = predict_masks([tmp_path / "a", tmp_path / "b" / "cat.jpg", tmp_path / "b" / "CAT.bmp"],
                            load_predictor(weights), out)
    masks = [r.mask for r in results]
    assert [p.rsplit("/", 1)[1] for p in masks] == ["cat_mask.png", "cat-2_mask.png", "CAT-3_mask.png"]
    assert results[0].note is None and "cat-2_mask.png" in results[1].note
    assert Image.open(masks[0]).size == (61, 97) and Image.open(masks[1]).size == (150, 100)


def test_outputs_never_replace_an_input(weights, photos, tmp_path):
    Image.open(photos / "chelsea.png").save(tmp_path / "x.png")
    Image.open(photos / "coffee.png").save(tmp_path / "x_mask.png")  # where x's mask would go
    before = (tmp_path / "x_mask.png").read_bytes()
    results = predict_masks([tmp_path / "x.png", tmp_path / "x_mask.png"], load_predictor(weights), tmp_path)
    assert (tmp_path / "x_mask.png").read_bytes() == before
    assert results[0].mask.endswith("x-2_mask.png") and results[1].error is None


def test_task_checks(weights, photos, tmp_path):
    with pytest.raises(UsageError, match="segmentation"):
        predict_files([photos / "coffee.png"], load_predictor(weights))
    classifier = Predictor(lambda x: np.zeros((len(x), 3), np.float32), ["a", "b", "c"], PRE, "a classifier")
    with pytest.raises(UsageError, match="not a segmentation model"):
        predict_masks([photos / "coffee.png"], classifier, tmp_path)
    with pytest.raises(UsageError, match="is a file"):
        predict_masks([photos / "coffee.png"], load_predictor(weights), photos / "coffee.png")


def test_cli_prints_shares_and_writes_into_out(weights, photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "preds"
    code = main(["predict", str(photos / "coffee.png"), str(photos / "astronaut.jpg"), "--model", str(weights),
                 "--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith(f"{photos / 'coffee.png'}: ") and "%" in lines[0]
    assert lines[0].endswith(f"-> {out / 'coffee_mask.png'}, {out / 'coffee_overlay.png'}")
    assert (out / "astronaut_mask.png").is_file() and (out / "astronaut_overlay.png").is_file()
    # --json carries the shares; a bad file is an error line and exit 1; default folder ./predictions
    bad = tmp_path / "evil\x1b[2Jname.png"
    bad.write_text("no image")
    monkeypatch.chdir(tmp_path)
    code = main(["predict", str(photos / "chelsea.png"), str(bad), "--model", str(weights), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    report = json.loads(captured.out)
    assert report["task"] == "segmentation" and report["out"] == "predictions"
    first, second = report["predictions"]
    assert abs(sum(s["share"] for s in first["shares"]) - 1) < 1e-9 and first["error"] is None
    assert second["error"] and "\x1b" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert (tmp_path / "predictions" / "chelsea_mask.png").is_file()


def test_classifier_output_unchanged_by_out(tiny_run, photos, tmp_path, capsys):
    assert main(["predict", str(photos / "coffee.png"), "--model", str(tiny_run), "--topk", "2"]) == 0
    plain = capsys.readouterr()
    assert main(["predict", str(photos / "coffee.png"), "--model", str(tiny_run), "--topk", "2",
                 "--out", str(tmp_path / "x")]) == 0
    with_out = capsys.readouterr()
    assert with_out.out == plain.out and "--out is for segmentation" in with_out.err
    assert not (tmp_path / "x").exists()


def test_strips_give_the_same_argmax_as_one_interpolation():
    torch.manual_seed(1)
    for k, h_in, w_in, h, w in [(4, 16, 16, 301, 499), (21, 33, 17, 64, 40), (3, 1, 1, 5, 7)]:
        logits = torch.randn(k, h_in, w_in)
        full = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)
        strips = upsampled_argmax(logits, (h, w), budget=1000)
        assert strips.dtype == np.uint8 and np.array_equal(strips, full.numpy())


def test_overlay_and_iou_plots(tmp_path):
    image = skimage_data.coffee()[:64, :80]
    mask = np.zeros((64, 80), np.uint8)
    mask[10:30, 20:50] = 2
    mask[40:, :] = 1
    path = save_overlay_png(image, mask, voc_palette(), ["bg", "cup", "saucer"], tmp_path / "o.png", alpha=1.0)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert rgb.shape[1] > 80 and rgb.shape[0] >= 64
    assert tuple(rgb[15, 25]) == tuple(voc_palette()[6:9]) and np.array_equal(rgb[0, 0], image[0, 0])
    with pytest.raises(ValueError, match="palette"):
        save_overlay_png(image, mask, [0] * 10, ["bg"], tmp_path / "bad.png")
    png = plot_per_class_iou([0.5, None, 0.91], ["bg", "cup", "saucer\nx"], tmp_path / "iou.png", "per-class IoU")
    assert Image.open(png).size[0] > 100 and not list(tmp_path.glob(".*.tmp"))


def test_exported_onnx_file_predicts_the_same_masks(seg_model, photos, tmp_path):
    pytest.importorskip("onnxruntime")
    from mobilecnn.deploy.export import ExportConfig, ExportImages, export_model

    verify = torch.stack([PRE(load_image(p, 3)) for p in sorted(photos.iterdir())])
    sidecar = {"model": MODEL, "weights": "model", "source": "test", "format": "onnx", "data": DATA,
               "preprocessing": PRE.to_dict()}
    path = tmp_path / "m.onnx"
    export_model(seg_model, path, ExportImages(verify[:1], verify), ExportConfig("onnx"), sidecar=sidecar)
    predictor = load_predictor(path)
    assert predictor.task == "segmentation" and predictor.class_names == CLASSES
    results = predict_masks([photos], predictor, tmp_path / "out")
    for r in results:
        mask = np.asarray(Image.open(r.mask))
        assert (mask == _direct_mask(seg_model, r.path)).mean() > 0.999
