"""predict: real photos from scikit-image, any size and mode, corrupt files, directories."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilecnn.cli import main
from mobilecnn.deploy.predict import load_predictor, predict_files, preprocess_image
from mobilecnn.errors import CheckpointError

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.astronaut()).save(d / "astronaut.jpg", quality=90)
    Image.fromarray(skimage_data.coffee()).save(d / "coffee.png")
    Image.fromarray(skimage_data.chelsea()).convert("RGBA").save(d / "chelsea_rgba.png")
    Image.fromarray(skimage_data.rocket()).convert("P").save(d / "rocket_palette.png")
    Image.fromarray(skimage_data.camera()).save(d / "camera_gray.png")
    arr16 = (skimage_data.camera().astype(np.uint16) * 257)
    Image.fromarray(arr16).save(d / "camera_16bit.png")
    Image.fromarray(skimage_data.astronaut()).resize((7, 300)).save(d / "thin.bmp")
    return d


def test_predict_real_photos_any_mode(tiny_run, photos):
    predictor = load_predictor(tiny_run)
    assert predictor.preprocessing.in_chans == 1 and predictor.preprocessing.resolution == 32
    results = predict_files([photos], predictor, topk=3)
    assert len(results) == 7 and all(r.error is None for r in results)
    for r in results:
        assert len(r.top) == 3
        probs = [p for _, p in r.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert all(label in predictor.class_names for label, _ in r.top)


def test_preprocess_matches_training_layout(tiny_run, photos):
    predictor = load_predictor(tiny_run)
    arr = preprocess_image(photos / "astronaut.jpg", predictor)
    assert arr.shape == (1, 32, 32) and arr.dtype == np.float32


def test_corrupt_files_are_named_and_others_still_classified(tiny_run, photos, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    code = main(["predict", str(photos / "coffee.png"), str(bad), str(empty), str(text), str(tmp_path / "missing.jpg"),
                 "--model", str(tiny_run), "--topk", "2", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    out = json.loads(captured.out)["predictions"]
    assert out[0]["error"] is None and len(out[0]["top"]) == 2
    for name in ("broken.jpg", "empty.png", "notes.png", "missing.jpg"):
        assert name in captured.err
    assert sum(1 for r in out if r["error"]) == 4


def test_predict_cli_text_and_bad_options(tiny_run, photos, capsys, tmp_path):
    assert main(["predict", str(photos / "coffee.png"), "--model", str(tiny_run), "--topk", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(photos / "coffee.png")) and "%" in line
    assert main(["predict", str(photos / "coffee.png"), "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(photos / "coffee.png"), "--model", str(tiny_run), "--topk", "0"]) == 2
    assert "--topk" in capsys.readouterr().err
    (tmp_path / "empty_dir").mkdir()
    assert main(["predict", str(tmp_path / "empty_dir"), "--model", str(tiny_run)]) == 2
    assert "no image files" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "executorch", "litert"])
def test_a_sidecar_for_another_input_size_is_refused_before_running(tiny_run, photos, tmp_path, capsys, fmt):
    """The file's own input shape is compared with the sidecar's preprocessing when the file is loaded, so a
    sidecar from another export is one line naming both, not a runtime's InvalidArgument traceback."""

    from mobilecnn.deploy.formats import FORMATS
    from mobilecnn.deploy.run_export import export_run

    fmt_entry = FORMATS[fmt]
    if not fmt_entry.installed():
        pytest.skip(f"{fmt} is not installed")
    result = export_run(tiny_run, fmt, tmp_path / f"m{fmt_entry.suffix}")
    sidecar = Path(result["sidecar"])
    info = json.loads(sidecar.read_text())
    info["preprocessing"]["resolution"] = 40  # the run was trained at 32
    sidecar.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"prepares 1x40x40 inputs but m\.\w+ takes 1x32x32: the sidecar "
                                              "belongs to another file"):
        load_predictor(result["path"])
    assert main(["predict", str(photos / "coffee.png"), "--model", result["path"]]) == 2
    assert "Traceback" not in capsys.readouterr().err
