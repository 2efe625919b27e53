"""Proof of no train/serve skew: the same image files through ``predict`` on an exported fp32 ONNX file and
through ``eval`` on the run give the same top-1 and the same logits (1e-4 relative), for every kind of
file a user might have."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from mobilecnn.cli import main
from mobilecnn.deploy.run_export import export_run
from mobilecnn.deploy.predict import load_predictor, preprocess_image
from mobilecnn.evaluate import evaluate_run
from mobilecnn.train import TrainConfig, train

pytest.importorskip("onnxruntime")


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
    rng = np.random.default_rng(seed)
    img = photos[seed % len(photos)]
    top, left = rng.integers(0, 100, 2)
    return Image.fromarray(img[top:top + 300, left:left + 300]).resize(size)


def _write_all_kinds(folder, seed: int) -> None:
    """One file of each awkward kind: 16-bit, palette + alpha, CMYK, EXIF-rotated, grayscale, odd-sized, RGBA."""
    folder.mkdir(parents=True, exist_ok=True)
    base = _photo(seed, (48, 40))
    gray16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257 + seed).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "sixteen_bit.png")
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    palette.save(folder / "palette_alpha.png", transparency=0)
    base.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    base.save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    base.convert("L").save(folder / "grayscale.png")
    _photo(seed + 1, (37, 61)).save(folder / "odd_sized.png")
    rgba = base.convert("RGBA")
    alpha = np.full((40, 48), 255, np.uint8)
    alpha[:, :10] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("skew")
    for split, seeds in (("train", (0, 10)), ("val", (20, 30))):
        for cls, seed in zip(("a", "b"), seeds):
            _write_all_kinds(root / "data" / split / cls, seed)
    run = root / "run"
    train(TrainConfig(model="mobilenet_v1_x0_25", data=str(root / "data"), out=str(run), resolution=32, batch_size=4,
                      epochs=1, max_steps=2, threads=1, workers=0, ema=0.0))
    return root, run


@pytest.mark.slow
def test_predict_on_exported_onnx_sees_what_eval_sees(folder_run, one_thread):
    root, run = folder_run
    evaluated = evaluate_run(run, out_dir=root / "eval", return_logits=True, workers=0)
    exported = export_run(run, "onnx", root / "export" / "m.onnx")
    predictor = load_predictor(exported["path"])
    files = evaluated["files"]
    assert len(files) == 14
    served = np.stack([predictor.logits(preprocess_image(f, predictor)[None])[0] for f in files])
    reference = evaluated["logits"].numpy()
    scale = np.abs(reference).max()
    assert np.abs(served - reference).max() / scale < 1e-4
    assert (served.argmax(1) == reference.argmax(1)).all()
    top1 = 100.0 * float((served.argmax(1) == evaluated["labels"].numpy()).mean())
    assert top1 == pytest.approx(evaluated["top1"])


@pytest.mark.slow
def test_predict_cli_on_run_and_on_onnx_agree(folder_run, capsys):
    root, run = folder_run
    export_run(run, "onnx", root / "export2" / "m.onnx")
    assert main(["predict", str(root / "data" / "val"), "--model", str(run), "--topk", "1"]) == 0
    from_run = capsys.readouterr().out.splitlines()
    assert main(["predict", str(root / "data" / "val"), "--model", str(root / "export2" / "m.onnx"), "--topk", "1"]) == 0
    from_onnx = capsys.readouterr().out.splitlines()
    labels = lambda lines: [line.rsplit(" ", 2)[-2] for line in lines]  # noqa: E731  "path: label 97.1%"
    assert len(from_run) == 14 and labels(from_run) == labels(from_onnx)


@pytest.mark.slow
def test_predict_on_exported_tflite_sees_what_eval_sees(folder_run, one_thread):
    """The LiteRT road end to end: a run exported with --format litert, its sidecar facts inside the .tflite,
    and predict on the file giving eval's logits."""
    pytest.importorskip("litert_torch")
    from mobilecnn.deploy.litert import read_litert_metadata

    root, run = folder_run
    evaluated = evaluate_run(run, out_dir=root / "eval_litert", return_logits=True, workers=0)
    exported = export_run(run, "litert", root / "export" / "m.tflite")
    inside = read_litert_metadata(exported["path"])
    assert inside["preprocessing"] == exported_sidecar_preprocessing(exported)
    assert inside["data"]["class_names"] == ["a", "b"]
    predictor = load_predictor(exported["path"])
    served = np.stack([predictor.logits(preprocess_image(f, predictor)[None])[0] for f in evaluated["files"]])
    reference = evaluated["logits"].numpy()
    assert np.abs(served - reference).max() / np.abs(reference).max() < 1e-4
    assert (served.argmax(1) == reference.argmax(1)).all()


def exported_sidecar_preprocessing(exported: dict) -> dict:
    import json

    return json.loads(open(exported["sidecar"]).read())["preprocessing"]
